"""The Python API (`import alexnet_deploy as ad`): what the CLI commands call, for notebooks and
training scripts. Each function returns a typed result (Manifest, ValidationReport,
BenchmarkReport: `.to_json()`, `.to_dict()`) and raises UserError for anything the caller got
wrong (CheckFailed when an artifact fails export's own check).

    manifest = ad.export(model, "exports/m", formats=["onnx", "openvino"], card={"classes": [...]})
    report = ad.validate("exports/m", data="data/val")
    judged = ad.compare_outputs("exports/m", "inputs.npy", "outputs.npy")  # logits computed elsewhere
    bench = ad.benchmark("exports/m", batch_sizes=[1, 8])

A module that is not a registered architecture is the user's own: in the process that exported
it, validate and benchmark rebuild it from the object; elsewhere pass `model_def="file.py:Net"`
(which imports and runs that file) as the CLI's --model-def.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def export(model: Any, out: str | os.PathLike, formats: Sequence[str] | None = None, *,
           card: Any = None, max_batch: int = 64, model_def: str | None = None,
           model_args: dict[str, Any] | None = None, show: bool = False, **options: Any):
    """Export an nn.Module object or a weights path (as `alexnet-deploy export`) into `out`.
    `card`: a ModelCard or a dict in manifest.json's `card` form, missing fields defaulted.
    `options`: export_all's (opset, calib_data, calib_images, device, force, arch, classes,
    image_size, weight_compression). Returns the written Manifest."""
    from alexnet_deploy.exporters import export_all

    if model_def is not None:
        options["arch"] = _register(model_def, model_args)
    return export_all(model, out, formats=list(formats) if formats is not None else None, card=card,
                      max_batch=max_batch, show=show, **options)


def validate(export_dir: str | os.PathLike, data: str | os.PathLike | None = None, *,
             model_def: str | None = None, model_args: dict[str, Any] | None = None, **options: Any):
    """Validate every artifact of `export_dir` against torch eager (as `alexnet-deploy validate`,
    without printing or writing). `options`: images, batch_sizes, backends, atol, rtol,
    min_agreement, max_accuracy_drop, fail_fast. Returns the ValidationReport (`.passed`)."""
    from alexnet_deploy.validate.run import validate as run

    if model_def is not None:
        _register(model_def, model_args)
    return run(export_dir, data_dir=data, **options)


def benchmark(export_dir: str | os.PathLike, batch_sizes: Sequence[int] | None = None, *,
              model_def: str | None = None, model_args: dict[str, Any] | None = None, **options: Any):
    """Time the artifacts of `export_dir` (as `alexnet-deploy benchmark`, without printing or
    writing). `options`: backends, warmup_s, duration_s, min_duration_s, min_calls, images, scenarios,
    latency_ms, concurrency, streams, threads, device.
    Returns the BenchmarkReport."""
    from alexnet_deploy.bench.harness import DEFAULT_BATCH_SIZES
    from alexnet_deploy.bench.harness import benchmark as run

    if model_def is not None:
        _register(model_def, model_args)
    return run(export_dir, batch_sizes=list(batch_sizes or DEFAULT_BATCH_SIZES), **options)


def _register(spec: str, args: dict[str, Any] | None) -> str:
    from alexnet_deploy.models.user import register_model_def

    return register_model_def(spec, args)
