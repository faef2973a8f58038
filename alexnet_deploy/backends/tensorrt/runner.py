"""The `tensorrt` runner: a serialized engine executed with torch CUDA tensors as its I/O buffers
(no pycuda), on a torch CUDA stream, through the name-based tensor API of TensorRT 10 and 11.

Before it deserializes anything it checks the engine's sidecar (TensorRT version, GPU
architecture); after, the engine's declared input shape against the card."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.backends.tensorrt.util import Sidecar, gpu_info, sidecar_path, tensorrt_unavailable_reason
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.runtimes import Runner

_TORCH_DTYPES = ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8")


class TensorRTRunner(Runner):
    name = "tensorrt"
    formats = ("tensorrt",)
    max_in_flight = 1  # one execution context; concurrent requests need one context each
    device = "cuda"
    device_tensors = True  # the engine reads and writes torch CUDA tensors

    def __init__(self, *args: Any, sidecar: str | os.PathLike | None = None, **kwargs: Any) -> None:
        """`sidecar`: the engine's ENGINE.json (default: beside the engine)."""
        super().__init__(*args, **kwargs)
        self.sidecar = Path(sidecar) if sidecar is not None else Path(f"{self.path}.json")

    @classmethod
    def options_from(cls, manifest: Manifest, artifact: Artifact) -> dict[str, Any]:
        assert manifest.root is not None, "manifest was not read from a folder"
        return {**super().options_from(manifest, artifact),
                "sidecar": sidecar_path(manifest.root, artifact.path, artifact.extra)}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    def activate_impl(self) -> None:
        import tensorrt as trt

        Sidecar.read(self.sidecar, self.shown).check_built_here(self.shown, str(trt.__version__), gpu_info())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {self.shown} (see its messages "
                            f"above); re-export it on this machine")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.shown}: expected one input and one output tensor, "
                            f"got inputs {inputs} and outputs {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        self.check_declared_input(list(self._engine.get_tensor_shape(self._input)))  # -1: dynamic
        self._dtypes = {n: self._torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        self._context = self._engine.create_execution_context()
        self._stream = None  # a torch CUDA stream for host calls, made on the first one

    @staticmethod
    def _torch_dtype(trt: Any, dtype: Any) -> Any:
        import torch

        name = np.dtype(trt.nptype(dtype)).name
        if name not in _TORCH_DTYPES:
            raise UserError(f"unsupported TensorRT I/O type {dtype}")
        return getattr(torch, name)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to("cuda")
            # .cpu() waits for this stream, so the engine's buffers outlive the execution
            return self.infer_device_impl(x).float().cpu().numpy()

    def infer_device_impl(self, x: Any) -> Any:
        import torch

        x = x.to(self._dtypes[self._input]).contiguous()
        ctx = self._context
        if not ctx.set_input_shape(self._input, tuple(x.shape)):
            raise UserError(f"{self.name}: the engine rejects input shape {tuple(x.shape)}")
        out = torch.empty(tuple(ctx.get_tensor_shape(self._output)), dtype=self._dtypes[self._output],
                          device=x.device)
        ctx.set_tensor_address(self._input, x.data_ptr())
        ctx.set_tensor_address(self._output, out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT failed to enqueue the engine")
        return out

    def deactivate_impl(self) -> None:
        # the context needs the engine and the engine the runtime: release in that order
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
