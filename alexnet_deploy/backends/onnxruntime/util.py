"""What the ONNX Runtime runners share: which execution providers this install has, and why not."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from alexnet_deploy.machine import cuda_unavailable_reason


@functools.cache
def ort_cpu_unavailable_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'alexnet-deploy[cpu]')"
    import onnxruntime as ort

    if "CPUExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CPUExecutionProvider"
    return None


def ort_provider_unavailable_reason(provider: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    no_cuda = cuda_unavailable_reason()  # the root cause on a CPU-only machine: report it first
    if no_cuda:
        return no_cuda
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu in place "
                f"of onnxruntime)")
    return None


def ort_trt_cache_dir(sha256: str, precision: str) -> Path:
    """Where the TensorRT EP keeps engines it built, one folder per artifact and precision, so
    the second session on the same file loads in seconds instead of rebuilding."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "alexnet-deploy" / "ort-tensorrt" / f"{precision}-{sha256[:16]}"
