"""`onnxruntime-cpu`: any exported ONNX (fp32, fp16, int8 QDQ) on ONNX Runtime's CPU provider."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from alexnet_deploy.runtimes.base import Runner, register_runner


@functools.cache
def ort_cpu_unavailable_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'alexnet-deploy[cpu]')"
    import onnxruntime as ort

    if "CPUExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CPUExecutionProvider"
    return None


@register_runner
class OrtCpuRunner(Runner):
    name = "onnxruntime-cpu"
    formats = ("onnx",)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ort_cpu_unavailable_reason()

    def activate_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(str(self.manifest.path_of(self.artifact)),
                                             sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self.check_declared_input(inp.shape)
        self._input = inp.name
        # our fp16 ONNX keeps float32 I/O; a half-precision graph from elsewhere may not
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch.astype(self._dtype, copy=False)})[0]

    def deactivate_impl(self) -> None:
        self._session = None
