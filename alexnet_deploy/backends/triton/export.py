"""A Triton Inference Server model repository: DIR/triton/<model>/config.pbtxt + 1/model.<ext>
for every ONNX, TorchScript and TensorRT artifact of this export.

Configs are built as Triton's own ModelConfig protobuf (tritonclient ships the schema) and written
in protobuf text format, so a field Triton does not know cannot be written at all; names, dims and
data types are read from the artifact itself (the ONNX graph, the TensorRT sidecar), not assumed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.files import fsync_dir, fsync_file, write_text
from alexnet_deploy.manifest import Artifact

SUBDIR = "triton"
LABELS = "labels.txt"
MAX_QUEUE_DELAY_US = 100  # how long the dynamic batcher may hold a request to fill a batch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: list[int]  # without the batch dimension


@dataclass(frozen=True)
class Backend:
    """How Triton serves one artifact format."""

    platform: str
    filename: str  # Triton's default model file name for the platform
    signature: Callable[[ExportContext, Artifact], tuple[TensorSpec, TensorSpec]]


def _onnx_signature(ctx: ExportContext, art: Artifact) -> tuple[TensorSpec, TensorSpec]:
    import onnx

    graph = onnx.load(str(ctx.out / art.path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims[1:])

    return spec(inputs[0]), spec(graph.output[0])


def _tensorrt_signature(ctx: ExportContext, art: Artifact) -> tuple[TensorSpec, TensorSpec]:
    io = art.extra.get("io", {})  # recorded from the built network by the tensorrt exporter
    specs = {mode: [TensorSpec(n, d["dtype"], list(d["shape"][1:])) for n, d in io.items()
                    if d["mode"] == mode] for mode in ("input", "output")}
    if len(specs["input"]) != 1 or len(specs["output"]) != 1:
        raise UserError(f"{art.path}: its manifest entry does not describe one input and one output")
    return specs["input"][0], specs["output"][0]


def _torchscript_signature(ctx: ExportContext, art: Artifact) -> tuple[TensorSpec, TensorSpec]:
    # TorchScript keeps no tensor names: Triton's PyTorch backend binds <name>__<index> by position.
    dtype = "float16" if art.precision == "fp16" else "float32"
    return (TensorSpec("INPUT__0", dtype, list(ctx.card.input.shape)),
            TensorSpec("OUTPUT__0", dtype, [ctx.card.num_classes]))


BACKENDS: dict[str, Backend] = {
    "onnx": Backend("onnxruntime_onnx", "model.onnx", _onnx_signature),
    "torchscript": Backend("pytorch_libtorch", "model.pt", _torchscript_signature),
    "tensorrt": Backend("tensorrt_plan", "model.plan", _tensorrt_signature),
}

_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
                 "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32",
                 "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}


def triton_unavailable_reason() -> str | None:
    """The configs are built with tritonclient's protobuf schema (its grpc part needs grpcio)."""
    if not all(importlib.util.find_spec(m) is not None for m in ("tritonclient", "grpc")):
        return "tritonclient is not installed (pip install 'alexnet-deploy[triton]')"
    return None


def model_name(stem: str, art: Artifact) -> str:
    return f"{stem}_{art.format}_{art.precision}".replace("-", "_")


def build_config(name: str, art: Artifact, backend: Backend, inp: TensorSpec, out: TensorSpec) -> Any:
    """The ModelConfig protobuf for one model directory."""
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = pb.ModelConfig(name=name, platform=backend.platform, max_batch_size=art.batch.max)
    for target, spec in ((cfg.input, inp), (cfg.output, out)):
        t = target.add(name=spec.name, data_type=pb.DataType.Value(_triton_type(spec.dtype)))
        t.dims.extend(spec.dims)
    cfg.output[0].label_filename = LABELS
    cfg.dynamic_batching.preferred_batch_size.extend(sorted({max(1, art.batch.max // 2), art.batch.max}))
    cfg.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    gpu = art.device == "cuda"
    cfg.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_GPU if gpu
                           else pb.ModelInstanceGroup.KIND_CPU)
    return cfg


def _triton_type(dtype: str) -> str:
    if dtype not in _TRITON_TYPES:
        raise UserError(f"Triton has no data type for {dtype!r}")
    return _TRITON_TYPES[dtype]


def parse_config(text: str) -> Any:
    """Read a config.pbtxt back through the schema (raises on any unknown field or bad value)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    return text_format.Parse(text, pb.ModelConfig())


def publish_model_dir(final: Path, texts: dict[str, str], files: dict[str, Path]) -> None:
    """Write one model directory beside its final place (texts written, files hard-linked or
    copied), then rename it into place in one step: a server never sees half of it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        for rel, text in texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        for rel, src in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, tmp / rel)
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)  # the contents are on disk before the rename makes them visible
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_fp32_onnx(ctx: ExportContext) -> str | None:
    return next((a.path for a in ctx.artifacts if a.format == "onnx" and a.precision == "fp32"), None)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no second copy of a 240 MB model when the file system allows it
    except OSError:
        shutil.copy2(src, dst)


class TritonExporter(Exporter):
    name = "triton"
    requires = ("onnx",)
    after = ("torchscript", "tensorrt", "openvino")  # included when exported in the same run

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        return triton_unavailable_reason()

    def export(self, ctx: ExportContext) -> list[Artifact]:
        sources = [a for a in ctx.artifacts if a.format in BACKENDS]
        artifacts = [self._model(ctx, art) for art in sources]
        artifacts += self._python_models(ctx)
        self._write_readme(ctx, [a.extra["model"] for a in artifacts])
        return artifacts

    def _python_models(self, ctx: ExportContext) -> list[Artifact]:
        """The models Triton's Python backend serves on a CPU machine, and the image ensemble
        around the fp32 ONNX one (see python_repository)."""
        from google.protobuf import text_format

        from alexnet_deploy.backends.triton.python_repository import (
            PYTHON_RUNTIMES,
            image_ensemble,
            runner_model,
        )

        def text_of(cfg: Any) -> str:
            text = text_format.MessageToString(cfg)
            parse_config(text)
            return text

        runnable = [a for a in ctx.artifacts if a.format in PYTHON_RUNTIMES and a.device == "cpu"]
        models = [runner_model(ctx, art, publish_model_dir, text_of) for art in runnable]
        target = next((m for m in models if m.extra["source"] == _first_fp32_onnx(ctx)), None)
        return models + (image_ensemble(ctx, target, publish_model_dir, text_of) if target else [])

    def _model(self, ctx: ExportContext, art: Artifact) -> Artifact:
        from google.protobuf import text_format

        started = time.perf_counter()
        backend = BACKENDS[art.format]
        name = model_name(ctx.card.file_stem, art)
        inp, out = backend.signature(ctx, art)
        text = text_format.MessageToString(build_config(name, art, backend, inp, out))
        parse_config(text)  # the schema check happens before anything is published
        final = ctx.out / SUBDIR / name
        publish_model_dir(final, {"config.pbtxt": text, LABELS: "\n".join(ctx.card.classes) + "\n"},
                          {f"1/{backend.filename}": ctx.out / art.path})
        return ctx.artifact(final, "triton", art.precision, started, device=art.device,
                            input_name=inp.name, output_name=out.name,
                            extra={"model": name, "platform": backend.platform,
                                   "source": art.path, "source_sha256": art.sha256})

    def _write_readme(self, ctx: ExportContext, models: list[str]) -> None:
        repo = ctx.out / SUBDIR
        listing = "\n".join(f"- `{m}`" for m in models)
        chw = list(ctx.card.input.shape)
        onnx_model = next((m for m in models if "_onnx_fp32" in m), models[0] if models else "MODEL")
        write_text(repo / "README.md", README.format(
            listing=listing, model=onnx_model, shape=chw, mean=ctx.card.input.mean,
            std=ctx.card.input.std, resize=ctx.card.input.resize, crop=ctx.card.input.crop))


README = """\
# Triton model repository

Written by `alexnet-deploy export --formats triton`: one production model per exported ONNX,
TorchScript and TensorRT artifact (`config.pbtxt`, `labels.txt`, `1/model.*`), the `*_python_*`
models that run the ONNX / OpenVINO files in Triton's Python backend, and the `*_image` ensemble
(encoded image bytes in, logits and top-K labels out). On this machine: `alexnet-deploy serve ..`.

{listing}

## Serve

Mount this folder into a Triton Inference Server container of a release whose ONNX Runtime,
PyTorch and TensorRT backends match the versions that exported these files (TensorRT plans only
load on the same TensorRT version and GPU architecture; see `../tensorrt/*.json`):

    docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
        -v "$PWD":/models <tritonserver image> tritonserver --model-repository=/models

CPU-only machines: leave out `--gpus all` and delete the models whose config says `KIND_GPU`.
Check readiness with `curl localhost:8000/v2/health/ready`.

## Query

Inputs are float32 NCHW batches of shape (N, {shape}) preprocessed like the training data: resize
the short side to {resize}, centre-crop {crop}, scale to 0..1, normalise with mean {mean} and std
{std}. `alexnet-deploy preprocess IMAGE --card .. --out x.npy` writes exactly that. Then, with
`pip install 'tritonclient[http]'`:

```python
import numpy as np
import tritonclient.http as httpclient

x = np.load("x.npy")
client = httpclient.InferenceClient("localhost:8000")
meta = client.get_model_metadata("{model}")
inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), meta["inputs"][0]["datatype"])
inp.set_data_from_numpy(x.astype(np.float16 if meta["inputs"][0]["datatype"] == "FP16" else np.float32))
top = httpclient.InferRequestedOutput(meta["outputs"][0]["name"], class_count=5)
print(client.infer("{model}", [inp], outputs=[top]).as_numpy(meta["outputs"][0]["name"]))
```

`class_count` makes Triton return "score:index:label" strings using `labels.txt`.
"""
