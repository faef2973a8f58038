"""ONNX Runtime runners: `onnxruntime-cpu` runs any exported ONNX (fp32, fp16, int8 QDQ) on the CPU
provider; `onnxruntime-cuda` (CUDAExecutionProvider) and `onnxruntime-tensorrt`
(TensorrtExecutionProvider, falling back to CUDA for what TensorRT cannot take) need the
onnxruntime-gpu build, which installs the same `onnxruntime` module as the CPU build (never both in
one environment). Each checks the session's declared input against the card at activation."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np

from alexnet_deploy.backends.onnx import graph_ops, with_outputs
from alexnet_deploy.backends.onnxruntime.util import (
    ort_cpu_unavailable_reason,
    ort_provider_unavailable_reason,
    ort_trt_cache_dir,
)
from alexnet_deploy.errors import UserError
from alexnet_deploy.files import sha256_file
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.runtimes import LayerOp, Runner

ORT_TRT_WORKSPACE_BYTES = 1 << 30


class OrtCpuRunner(Runner):
    name = "onnxruntime-cpu"
    formats = ("onnx",)
    layer_taps = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ort_cpu_unavailable_reason()

    def providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def activate_impl(self) -> None:
        self._session = self.session(str(self.path))
        self.check_session(self._session)
        inp = self._session.get_inputs()[0]
        self.check_declared_input(inp.shape)
        self._input = inp.name
        # our fp16 ONNX keeps float32 I/O; a half-precision graph from elsewhere may not
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def session(self, model: str | bytes) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return ort.InferenceSession(model, sess_options=opts, providers=self.providers())

    def layer_ops(self) -> list[LayerOp]:
        import onnx

        return graph_ops(onnx.load(str(self.path)))

    def infer_layers_impl(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        import onnx

        names = [op.key for op in ops]
        session = self.session(with_outputs(onnx.load(str(self.path)), names).SerializeToString())
        feed = session.get_inputs()[0]
        dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
        return session.run(names, {feed.name: batch.astype(dtype, copy=False)})

    def check_session(self, session: Any) -> None:
        """A hook for the GPU runners: the providers the session really enabled."""

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch.astype(self._dtype, copy=False)})[0]

    def deactivate_impl(self) -> None:
        self._session = None


def cuda_options(precision: str) -> dict[str, Any]:
    # TF32 (on by default on Ampere and newer) rounds matmul inputs to 10 mantissa bits, which
    # an fp32 artifact must not do if it is to match eager within fp32 tolerances
    return {"device_id": 0, "use_tf32": int(precision != "fp32")}


class OrtGpuRunner(OrtCpuRunner):
    """The CPU runner's session on a GPU execution provider (inference and release are the
    CPU runner's); subclasses name the provider chain. Host arrays only: onnxruntime copies them
    to the device inside run(), so benchmark latencies include the transfers."""

    device = "cuda"
    provider: ClassVar[str]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ort_provider_unavailable_reason(cls.provider)

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21; a library feature, not a runner's
            # CUDA / cuDNN from the nvidia-* wheels torch already depends on, when present; if
            # they are not, the provider check below says what is missing
            with contextlib.suppress(OSError, ImportError):
                ort.preload_dlls()
        super().activate_impl()

    def check_session(self, session: Any) -> None:
        import onnxruntime as ort

        active = session.get_providers()
        if self.provider not in active:
            raise UserError(f"{self.name}: onnxruntime could not enable {self.provider} for "
                            f"{self.shown} and fell back to {', '.join(active)}; check that the "
                            f"CUDA, cuDNN (and TensorRT) libraries match onnxruntime-gpu {ort.__version__}")


class OrtCudaRunner(OrtGpuRunner):
    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    def providers(self) -> list[Any]:
        return [(self.provider, cuda_options(self.precision)), "CPUExecutionProvider"]


class OrtTensorRTRunner(OrtGpuRunner):
    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"

    def __init__(self, *args: Any, sha256: str | None = None, **kwargs: Any) -> None:
        """`sha256`: the file's hash, which keys the engine cache (hashed from the file when not given)."""
        super().__init__(*args, **kwargs)
        self.sha256 = sha256

    @classmethod
    def options_from(cls, manifest: Manifest, artifact: Artifact) -> dict[str, Any]:
        return {**super().options_from(manifest, artifact), "sha256": artifact.sha256 or None}

    def trt_options(self) -> dict[str, Any]:
        sha = self.sha256 or sha256_file(self.path)
        cache = ort_trt_cache_dir(sha, self.precision)
        cache.mkdir(parents=True, exist_ok=True)
        return {
            "device_id": 0,
            "trt_max_workspace_size": ORT_TRT_WORKSPACE_BYTES,
            "trt_fp16_enable": self.precision == "fp16",
            # Q/DQ graphs are explicitly quantized: TensorRT needs int8 enabled, no calibration table
            "trt_int8_enable": self.precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
        }

    def providers(self) -> list[Any]:
        return [(self.provider, self.trt_options()), ("CUDAExecutionProvider", cuda_options(self.precision)),
                "CPUExecutionProvider"]
