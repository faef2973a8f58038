"""The machine a command runs on: CPU model and features, caches, GPU, library versions.

Read by the benchmark (its machine section and floors), training (bf16 autocast) and the runners
that depend on CPU features; nothing here imports torch at module level."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve")

def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated, slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_clock_ghz() -> tuple[float | None, str]:
    """The highest clock the OS states for this CPU, and where it came from: cpufreq's maximum
    (turbo included) where the kernel exposes it, else the model name's rated "@ 2.10GHz" or the
    current "cpu MHz" (a VM often shows only these), whichever is higher."""
    found: dict[str, float] = {}
    for f in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"):
        with contextlib.suppress(OSError, ValueError):
            found["cpufreq max"] = max(found.get("cpufreq max", 0.0), int(f.read_text()) / 1e6)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                with contextlib.suppress(ValueError):
                    found["cpu MHz"] = max(found.get("cpu MHz", 0.0), float(value) / 1e3)
            elif key.strip() == "model name" and "GHz" in value:
                with contextlib.suppress(ValueError):
                    found["rated"] = float(value.rsplit("@", 1)[-1].strip().removesuffix("GHz"))
    except OSError:
        pass
    if not found:
        return None, "not stated"
    source = max(found, key=found.get)
    return round(found[source], 3), source


def last_level_cache_bytes() -> int | None:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = []
    for idx in sorted(base.glob("index*")):
        try:
            text = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * mult)
    return max(sizes) if sizes else None


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    import psutil

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    llc = last_level_cache_bytes()
    return {
        "cpu": model,
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "isa": [f for f in ISA_FLAGS if f in cpu_flags()],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "llc_mb": round(llc / 2**20, 1) if llc else None,
        "gpu": _gpu_name(),
        "os": platform.platform(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_slug(machine: dict[str, Any]) -> str:
    """A file-name-safe machine name: the CPU model and core count (and the GPU when there is one)."""
    import re

    words = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", " ", machine.get("cpu", "cpu").lower())
    parts = [w for w in re.split(r"[^a-z0-9]+", words) if w][:4]
    name = "-".join(parts + [f"{machine.get('cores_logical', 0)}c"])
    if machine.get("gpu"):
        name += "-" + "-".join(re.split(r"[^a-z0-9]+", machine["gpu"].lower())[-2:]).strip("-")
    return name


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device, else the reason every CUDA runner and exporter reports."""
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


def library_versions() -> dict[str, str]:
    """Versions of every library that can change an artifact's numbers; absent ones are omitted."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "alexnet_deploy": _own_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "openvino", "nncf", "tensorrt", "numpy", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def _own_version() -> str:
    from alexnet_deploy import __version__

    return __version__
