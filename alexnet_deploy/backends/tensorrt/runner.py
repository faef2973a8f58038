"""The `tensorrt` runner: a serialized engine executed with torch CUDA tensors as its I/O buffers
(no pycuda), on a torch CUDA stream, through the name-based tensor API of TensorRT 10 and 11."""

from __future__ import annotations

from typing import Any

import numpy as np

from alexnet_deploy.backends.tensorrt.util import Sidecar, gpu_info, sidecar_path, tensorrt_unavailable_reason
from alexnet_deploy.errors import UserError
from alexnet_deploy.runtimes import Runner

_TORCH_DTYPES = ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8")


class TensorRTRunner(Runner):
    name = "tensorrt"
    formats = ("tensorrt",)
    device = "cuda"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    def activate_impl(self) -> None:
        import tensorrt as trt
        import torch

        path = self.manifest.path_of(self.artifact)
        side = sidecar_path(self.manifest.root, self.artifact.path, self.artifact.extra)
        Sidecar.read(side, self.artifact.path).check_built_here(self.artifact.path, str(trt.__version__),
                                                                gpu_info())

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {self.artifact.path} (see its messages "
                            f"above); re-export it on this machine")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.artifact.path}: expected one input and one output tensor, "
                            f"got inputs {inputs} and outputs {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        self._dtypes = {n: self._torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        self._stream = torch.cuda.Stream()

    @staticmethod
    def _torch_dtype(trt: Any, dtype: Any) -> Any:
        import torch

        name = np.dtype(trt.nptype(dtype)).name
        if name not in _TORCH_DTYPES:
            raise UserError(f"unsupported TensorRT I/O type {dtype}")
        return getattr(torch, name)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to("cuda")
            # .cpu() waits for this stream, so the engine's buffers outlive the execution
            return self.infer_cuda(x).float().cpu().numpy()

    def infer_cuda(self, x: Any) -> Any:
        """Run a batch that is already on the GPU, on the current torch stream (the benchmark
        times this apart from the host-device copies). Returns the output as a CUDA tensor."""
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
        for attr in ("_context", "_engine", "_runtime"):
            if hasattr(self, attr):
                delattr(self, attr)
