"""Small stand-ins shared by the GPU-backend tests (TensorRT, ONNX Runtime's GPU runners, Triton):
a tiny but valid ONNX model with the real input / output names and types, an export context made
of them, the facts of a stand-in GPU and its CUDA streams, and a driver for requests in flight. A test module imports these from here, never from
another test module."""

from __future__ import annotations

import contextlib
import itertools
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import torch
from helpers import TEST_IMAGE_SIZE
from onnx import TensorProto, helper

from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.manifest import Artifact, Manifest, hash_artifact
from alexnet_deploy.models import InputSpec, ModelCard

CARD = ModelCard(num_classes=10, input=InputSpec.for_size(TEST_IMAGE_SIZE))
GPU = {"name": "Stand-in GPU", "compute_capability": "9.0", "cuda": "12.8"}
MAX_BATCH = 8


def tiny_onnx(path: Path, elem: int = TensorProto.FLOAT, qdq: bool = False, zero_point: int = 0) -> None:
    """images (N, 3, 64, 64) -> logits (N, 10): small, valid, with the real I/O names and types."""
    feat = 3 * TEST_IMAGE_SIZE * TEST_IMAGE_SIZE
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    nodes, inits, src = [], [], "images"
    if qdq:
        inits += [helper.make_tensor("s", elem, [], [0.05]), helper.make_tensor("z", TensorProto.INT8, [], [zero_point])]
        nodes += [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        src = "dq"
    w = np.random.default_rng(0).standard_normal((feat, 10)).astype(np_type)
    inits.append(helper.make_tensor("w", elem, w.shape, w.tobytes(), raw=True))
    nodes += [helper.make_node("Flatten", [src], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", elem, ["N", 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", elem, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def onnx_context(out: Path, precisions=("fp32", "fp16", "int8")) -> ExportContext:
    """An export context whose earlier artifacts are tiny ONNX files, one per precision."""
    kinds = {"fp32": {}, "fp16": {"elem": TensorProto.FLOAT16}, "int8": {"qdq": True}}
    arts = []
    for p in precisions:
        path = out / f"alexnet_{p}.onnx"
        tiny_onnx(path, **kinds[p])
        sha, size = hash_artifact(path)
        arts.append(Artifact("onnx", p, "cpu", path.name, sha, size, batch={"min": 1, "max": MAX_BATCH}))
    return ExportContext(model=torch.nn.Identity(), card=CARD, out=out, max_batch=MAX_BATCH, artifacts=arts)


def tiny_onnx_export(folder: Path, precision: str = "fp32") -> tuple[Manifest, Artifact]:
    """An export folder holding one tiny ONNX file, and its manifest entry."""
    path = folder / f"alexnet_{precision}.onnx"
    tiny_onnx(path)
    sha, size = hash_artifact(path)
    art = Artifact("onnx", precision, "cpu", path.name, sha, size, batch={"min": 1, "max": MAX_BATCH})
    manifest = Manifest(card=CARD, weights={}, artifacts=[art])
    manifest.root = folder
    return manifest, art


class CudaStreams:
    """Stand-ins for torch's CUDA stream API on a machine without CUDA: Stream() hands out handles
    from 1, stream(s) makes s current for the calling thread, current_stream() answers it (0: the
    default stream)."""

    def __init__(self):
        self.handles, self.local = itertools.count(1), threading.local()

    def install(self, monkeypatch) -> CudaStreams:
        for name in ("Stream", "stream", "current_stream"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self

    def Stream(self, device=None):  # noqa: N802 (torch's name)
        return SimpleNamespace(cuda_stream=next(self.handles))

    @contextlib.contextmanager
    def stream(self, s):
        before = getattr(self.local, "s", None)
        self.local.s = s
        try:
            yield
        finally:
            self.local.s = before

    def current_stream(self, device=None):
        return getattr(self.local, "s", None) or SimpleNamespace(cuda_stream=0)


def answers_in_flight(flight, requests: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Each request's logits by its index, the requests submitted to `flight` (a runner's
    in_flight(n): at most n run at once), all waited for; the flight is closed after."""
    got: dict[int, np.ndarray] = {}
    try:
        for i, x in enumerate(requests):
            flight.submit(x, lambda out, ms, i=i: got.__setitem__(i, out))
        flight.drain()
    finally:
        flight.close()
    return got
