"""The `tensorrt` runner: a serialized engine executed with torch CUDA tensors as its I/O buffers
(no pycuda), on a torch CUDA stream, through the name-based tensor API of TensorRT 10 and 11.

Before it deserializes anything it checks the engine's sidecar (TensorRT version, GPU
architecture); after, the engine's declared input shape against the card. `validate --layers`
reads a tapped twin of the engine (see layers.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.backends.onnx import graph_ops
from alexnet_deploy.backends.tensorrt.export import BuildSettings
from alexnet_deploy.backends.tensorrt.layers import CAVEAT, build_settings, build_tapped, readable
from alexnet_deploy.backends.tensorrt.util import Sidecar, gpu_info, sidecar_path, tensorrt_unavailable_reason
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.runtimes import LayerOp, Runner

_TORCH_DTYPES = ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8")


@dataclass(frozen=True)
class EngineIO:
    """An engine's tensors as the runner binds them: one input, its outputs, each one's torch dtype."""

    input: str
    outputs: tuple[str, ...]
    dtypes: dict[str, Any]


def engine_tensors(trt: Any, engine: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """(inputs, outputs, torch dtype of each) of a deserialized engine."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, [n for n in names if n not in inputs], {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    name = np.dtype(trt.nptype(dtype)).name
    if name not in _TORCH_DTYPES:
        raise UserError(f"unsupported TensorRT I/O type {dtype}")
    return getattr(torch, name)


class TensorRTRunner(Runner):
    name = "tensorrt"
    formats = ("tensorrt",)
    device = "cuda"
    cuda_streams = True  # `benchmark --concurrency N`: N streams, each with its own context (stream_calls)
    device_tensors = True  # the engine reads and writes torch CUDA tensors
    layer_taps = True
    # what the layer figures are of, for the report's layers note (not the shipped engine's fusions)
    layers_caveat = CAVEAT

    def __init__(self, *args: Any, sidecar: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, **kwargs: Any) -> None:
        """`sidecar`: the engine's ENGINE.json (default: beside the engine); `root`: the export
        folder, which holds the ONNX the sidecar says the engine was built from (validate --layers)."""
        super().__init__(*args, **kwargs)
        self.sidecar = Path(sidecar) if sidecar is not None else Path(f"{self.path}.json")
        self.root = Path(root) if root is not None else None
        self._settings: BuildSettings | None = None
        self._tapped: tuple[list[str], Any, Any, EngineIO] | None = None  # keys, runtime, engine, io

    @classmethod
    def options_from(cls, manifest: Manifest, artifact: Artifact) -> dict[str, Any]:
        assert manifest.root is not None, "manifest was not read from a folder"
        return {**super().options_from(manifest, artifact), "root": manifest.root,
                "sidecar": sidecar_path(manifest.root, artifact.path, artifact.extra)}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    def activate_impl(self) -> None:
        import tensorrt as trt

        Sidecar.read(self.sidecar, self.shown).check_built_here(self.shown, str(trt.__version__), gpu_info())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._deserialize(self.path.read_bytes())
        inputs, outputs, dtypes = engine_tensors(trt, self._engine)
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.shown}: expected one input and one output tensor, "
                            f"got inputs {inputs} and outputs {outputs}")
        self._io = EngineIO(inputs[0], tuple(outputs), dtypes)
        self.check_declared_input(list(self._engine.get_tensor_shape(self._io.input)))  # -1: dynamic
        self._context = self._engine.create_execution_context()
        self._stream = None  # a torch CUDA stream for host calls, made on the first one

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to(self.device)
            # .cpu() waits for this stream, so the engine's buffers outlive the execution
            return self.infer_device_impl(x).float().cpu().numpy()

    def infer_device_impl(self, x: Any) -> Any:
        return self._first_output(self._context, x)

    def _first_output(self, ctx: Any, x: Any) -> Any:
        return self._execute(ctx, self._io, x)[self._io.outputs[0]]

    def _deserialize(self, plan: Any) -> Any:
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UserError(f"TensorRT could not deserialize {self.shown} (see its messages "
                            f"above); re-export it on this machine")
        return engine

    def stream_calls(self, n: int) -> tuple[list[Any], Any]:
        """One execution context per stream, each of its own engine: an engine's optimization
        profile (the dynamic batch) serves one context at a time, so concurrent contexts need an
        engine each, as trtexec --streams makes them. The first stream uses the runner's own; the
        others' are copies of it, serialized from memory (not the file, which may have changed)."""
        plan = self._engine.serialize() if n > 1 else None
        spares = [self._deserialize(plan) for _ in range(n - 1)]
        contexts = [self._context] + [engine.create_execution_context() for engine in spares]
        calls = [partial(self._checked_on_device, impl=partial(self._first_output, ctx)) for ctx in contexts]

        def release() -> None:  # what holds a context first, then the contexts, then their engines
            calls.clear()
            contexts.clear()
            spares.clear()

        return calls, release

    def _execute(self, ctx: Any, io: EngineIO, x: Any) -> dict[str, Any]:
        """Every output of one execution on `x`, enqueued on torch's current stream of x's device."""
        import torch

        x = x.to(io.dtypes[io.input]).contiguous()
        if not ctx.set_input_shape(io.input, tuple(x.shape)):
            raise UserError(f"{self.name}: the engine rejects input shape {tuple(x.shape)}")
        out = {n: torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=io.dtypes[n], device=x.device)
               for n in io.outputs}
        ctx.set_tensor_address(io.input, x.data_ptr())
        for name, tensor in out.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT failed to enqueue the engine")
        return out

    # -- validate --layers: a tapped twin built from the engine's source ONNX (layers.py) ----------
    def layer_ops(self) -> list[LayerOp]:
        """The source ONNX's operations whose tensors a tapped engine can output; the others
        (absent from TensorRT's parsed network or refused as outputs) leave their modules "fused"."""
        import onnx
        import tensorrt as trt

        s = self.build_settings()
        ops = graph_ops(onnx.load(str(self.root / s.source_onnx)))
        keys = readable(trt, self.root, s, [op.key for op in ops if op.module])
        return [op for op in ops if op.key in keys]

    def infer_layers_impl(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        import torch

        engine, io = self._tapped_engine([op.key for op in ops])
        context = engine.create_execution_context()
        out = self._execute(context, io, torch.from_numpy(batch).to(self.device))
        return [out[op.key].float().cpu().numpy() for op in ops]  # .cpu() waits for the engine

    def build_settings(self) -> BuildSettings:
        """How the engine was built (its sidecar), checked once: the twin must be built by the
        TensorRT and for the GPU that built the engine, or it tests something else."""
        if self._settings is None:
            import tensorrt as trt

            side = Sidecar.read(self.sidecar, self.shown)
            side.check_built_here(self.shown, str(trt.__version__), gpu_info())
            self._settings = build_settings(self.root, side, self.shown)
        return self._settings

    def _tapped_engine(self, keys: list[str]) -> tuple[Any, EngineIO]:
        # infer_layers runs a slice in chunks of the batch range: one build per slice, not per chunk
        if self._tapped is None or self._tapped[0] != keys:
            import tensorrt as trt

            self._tapped = None  # free the previous slice's engine before building the next
            plan = build_tapped(trt, self.root, self.build_settings(), keys)
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise CheckFailed(f"TensorRT could not deserialize the tapped twin of {self.shown}")
            inputs, outputs, dtypes = engine_tensors(trt, engine)
            self._tapped = (keys, runtime, engine, EngineIO(inputs[0], tuple(outputs), dtypes))
        return self._tapped[2], self._tapped[3]

    def deactivate_impl(self) -> None:
        # the context needs the engine and the engine the runtime: release in that order
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
        self._tapped = None
