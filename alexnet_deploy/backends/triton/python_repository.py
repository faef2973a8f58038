"""The part of the Triton repository that serves on a CPU machine with only Triton's Python backend
(the `tritonserver` of the nvidia-pytriton wheel): `<stem>_python_<runtime>_<precision>` models that
run the exported ONNX / OpenVINO files with alexnet-deploy's own runners, and the `<stem>_image`
ensemble (encoded image bytes -> card preprocessing -> the fp32 model -> logits and top-K labels).
The `python_` in their names keeps them apart from the production models beside them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.manifest import Artifact

PYTHON_MODELS = "alexnet_deploy.backends.triton.python_models"
CARD = "card.json"
TOP_K = 5
IMAGE_INPUT = "image"  # the ensemble's input: encoded image bytes, one per row


@dataclass(frozen=True)
class PythonRuntime:
    """How one exported format is served through the Python backend."""

    runner: str  # alexnet-deploy runner registry name
    runtime: str  # in the model name


PYTHON_RUNTIMES: dict[str, PythonRuntime] = {
    "onnx": PythonRuntime("onnxruntime-cpu", "onnxruntime"),
    "openvino": PythonRuntime("openvino", "openvino"),
}


def python_model_name(stem: str, art: Artifact) -> str:
    return f"{stem}_python_{PYTHON_RUNTIMES[art.format].runtime}_{art.precision}".replace("-", "_")


def _source(name: str) -> str:
    return resources.files(PYTHON_MODELS).joinpath(name).read_text(encoding="utf-8")


def _python_config(name: str, max_batch: int, params: dict[str, str], inputs: list[tuple[str, str, list[int]]],
                   outputs: list[tuple[str, str, list[int]]], batching: bool = True) -> Any:
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    for target, specs in ((cfg.input, inputs), (cfg.output, outputs)):
        for tensor, dtype, dims in specs:
            t = target.add(name=tensor, data_type=pb.DataType.Value(dtype))
            t.dims.extend(dims)
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    if batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = 2000
    cfg.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    return cfg


def _files_of(ctx: ExportContext, art: Artifact) -> dict[str, Path]:
    """The model file (and an IR's weights) under 1/ with its own name."""
    src = ctx.out / art.path
    files = {f"1/{src.name}": src}
    if src.suffix == ".xml":
        files[f"1/{src.with_suffix('.bin').name}"] = src.with_suffix(".bin")
    return files


def runner_model(ctx: ExportContext, art: Artifact, publish, text_of) -> Artifact:
    """A Python-backend model running `art` with alexnet-deploy's runner."""
    started = time.perf_counter()
    name = python_model_name(ctx.card.file_stem, art)
    chw = list(ctx.card.input.shape)
    params = {"runner": PYTHON_RUNTIMES[art.format].runner, "file": Path(art.path).name,
              "precision": art.precision, "max_batch": str(art.batch.max), "input": "images", "output": "logits"}
    cfg = _python_config(name, art.batch.max, params, [("images", "TYPE_FP32", chw)],
                         [("logits", "TYPE_FP32", [ctx.card.num_classes])])
    final = ctx.out / "triton" / name
    publish(final, {"config.pbtxt": text_of(cfg), "1/model.py": _source("runner_model.py"),
                    CARD: ctx.card.to_json()}, _files_of(ctx, art))
    return ctx.artifact(final, "triton", art.precision, started, device="cpu", input_name="images",
                        output_name="logits", extra={"model": name, "platform": "python",
                                                     "runner": params["runner"], "source": art.path,
                                                     "source_sha256": art.sha256})


def image_ensemble(ctx: ExportContext, target: Artifact, publish, text_of) -> list[Artifact]:
    """The preprocess and postprocess steps and the `<stem>_image` ensemble around `target`."""
    from tritonclient.grpc import model_config_pb2 as pb

    started = time.perf_counter()
    stem, card, batch = ctx.card.file_stem, ctx.card, target.batch.max
    chw, k = list(card.input.shape), min(TOP_K, card.num_classes)
    pre, post, ens = f"{stem}_preprocess", f"{stem}_postprocess", f"{stem}_image"
    tops = [("top_classes", "TYPE_INT64", [k]), ("top_labels", "TYPE_STRING", [k]), ("top_scores", "TYPE_FP32", [k])]
    steps = {
        pre: (_python_config(pre, batch, {"input": IMAGE_INPUT, "output": "images"},
                             [(IMAGE_INPUT, "TYPE_STRING", [1])], [("images", "TYPE_FP32", chw)]),
              "preprocess_model.py"),
        post: (_python_config(post, batch, {"input": "logits", "top_k": str(k)},
                              [("logits", "TYPE_FP32", [card.num_classes])], tops), "postprocess_model.py"),
    }
    for name, (cfg, source) in steps.items():
        publish(ctx.out / "triton" / name, {"config.pbtxt": text_of(cfg), "1/model.py": _source(source),
                                            CARD: card.to_json()}, {})
    cfg = pb.ModelConfig(name=ens, platform="ensemble", max_batch_size=batch)
    cfg.input.add(name=IMAGE_INPUT, data_type=pb.TYPE_STRING, dims=[1])
    cfg.output.add(name="logits", data_type=pb.TYPE_FP32, dims=[card.num_classes])
    for tensor, dtype, dims in tops:
        cfg.output.add(name=tensor, data_type=pb.DataType.Value(dtype), dims=dims)
    model = target.extra["model"]
    for step, inputs, outputs in ((pre, {IMAGE_INPUT: IMAGE_INPUT}, {"images": "images"}),
                                  (model, {"images": "images"}, {"logits": "logits"}),
                                  (post, {"logits": "logits"}, {t[0]: t[0] for t in tops})):
        s = cfg.ensemble_scheduling.step.add(model_name=step, model_version=-1)
        s.input_map.update(inputs)
        s.output_map.update(outputs)
    final = ctx.out / "triton" / ens
    # Triton wants a version folder even for an ensemble, which has no model file
    publish(final, {"config.pbtxt": text_of(cfg), "1/README": "an ensemble: its steps are its models\n"}, {})
    return [ctx.artifact(final, "triton", "fp32", started, device="cpu", input_name=IMAGE_INPUT,
                         output_name="logits", extra={"model": ens, "platform": "ensemble", "steps": [pre, model, post]})]
