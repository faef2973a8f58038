"""The machine a command runs on: CPU model and features, caches, GPU, library versions.

Read by the benchmark (its machine section and floors), training (bf16 autocast) and the runners
that depend on CPU features; nothing here imports torch at module level."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import platform
import time
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# The core clock, measured: a VM states its TSC rate, not the boost the cores run at
# ---------------------------------------------------------------------------------------------
ADDS_PER_ITERATION = 64
CLOCK_ITERATIONS = 100_000  # 6.4 M cycles: 1-3 ms a try at 2-6 GHz, long against the call's overhead
CLOCK_TRIES = 20


@dataclass
class CoreClock:
    """The clock the roofline's ISA peaks use: measured where possible, else the stated one."""

    clock_ghz: float | None
    clock_source: str  # "measured: dependent-add chain, best of N" or "stated (...)"
    stated_ghz: float | None
    stated_source: str
    fallback_reason: str | None = None  # why the clock is the stated one


def _add_chain_code(iterations: int) -> bytes:
    """x86-64 System V: uint64 f(void) running `iterations` x 64 dependent `add rdx, rsi`, returning
    rdx (= 64 x iterations, checked: proof that the loop ran as written). A register-register add
    has one cycle of latency on every x86 core and none folds or eliminates it, so the chain takes
    one cycle per add; dec/jnz run on other ports beside it."""
    head = (b"\x31\xd2"  # xor edx, edx
            b"\xbe\x01\x00\x00\x00"  # mov esi, 1
            + b"\xb9" + iterations.to_bytes(4, "little"))  # mov ecx, iterations
    body = b"\x48\x01\xf2" * ADDS_PER_ITERATION + b"\xff\xc9"  # add rdx, rsi (x64); dec ecx
    back = -(len(body) + 6)  # jnz rel32 back to the body's first add
    return head + body + b"\x0f\x85" + back.to_bytes(4, "little", signed=True) + b"\x48\x89\xd0\xc3"  # mov rax, rdx; ret


def _executable_page(code: bytes) -> tuple[mmap.mmap, int]:
    """`code` in an anonymous page, written while writable and then made read + execute (never
    both writable and executable, which hardened kernels refuse); the map and the code's address."""
    page = mmap.mmap(-1, mmap.PAGESIZE * (1 + len(code) // mmap.PAGESIZE),
                     flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page.write(code)
    view = ctypes.c_char.from_buffer(page)
    address = ctypes.addressof(view)
    del view  # the map can be closed only once no ctypes object points into it
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(ctypes.c_void_p(address), len(page), mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        page.close()
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect(read+exec) refused: {os.strerror(err)}")
    return page, address


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _best_chain_seconds(chain, tries: int) -> float:
    """The shortest of `tries` runs of the chain, spread over the CPUs this process may use (cores
    of one machine may boost differently): preemption only lengthens a run, so the best one is
    the core's own speed, whatever the load."""
    cpus = _cpus()
    best = float("inf")
    try:
        for i in range(tries):
            if len(cpus) > 1:
                os.sched_setaffinity(0, {cpus[i % len(cpus)]})
            t0 = time.perf_counter()
            chain()
            best = min(best, time.perf_counter() - t0)
    finally:
        if len(cpus) > 1:
            os.sched_setaffinity(0, cpus)
    return best


def _measured_clock_ghz(tries: int) -> float:
    """Dependent adds per second on one thread: the single-core boost, the fastest any core runs,
    so a peak computed from it is never below what several busy cores achieve."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.name != "posix":
        raise OSError(f"the dependent-add chain is x86-64 code; this is {platform.machine()}")
    page, address = _executable_page(_add_chain_code(CLOCK_ITERATIONS))
    try:
        chain = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
        if chain() != ADDS_PER_ITERATION * CLOCK_ITERATIONS:  # also the warm-up
            raise OSError("the dependent-add chain returned a wrong sum")
        seconds = _best_chain_seconds(chain, tries)
    finally:
        page.close()
    return ADDS_PER_ITERATION * CLOCK_ITERATIONS / seconds / 1e9


def core_clock(tries: int = CLOCK_TRIES) -> CoreClock:
    """The measured core clock, or the stated one with the reason it could not be measured
    (another ISA, a kernel or SELinux policy refusing executable memory)."""
    stated, stated_source = cpu_clock_ghz()
    try:
        measured = _measured_clock_ghz(tries)
    except (OSError, ValueError, AttributeError) as e:  # AttributeError: no mmap flags on this OS
        return CoreClock(stated, f"stated ({stated_source})", stated, stated_source,
                         f"not measured: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
    return CoreClock(round(measured, 3), f"measured: dependent-add chain, best of {tries}", stated, stated_source)


def last_level_cache_bytes() -> int | None:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = []
    for idx in sorted(base.glob("index*")):
        try:
            sizes.append(_size_bytes((idx / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def cache_bytes_total() -> int | None:
    """Every data cache the CPUs this process may run on have, each counted once (an L3 that
    several CPUs share, once): what can hold weights between two calls. The L2s and L1s count too,
    as AMD's L3 is a victim cache that does not duplicate them."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    seen: dict[tuple[str, str, str], int] = {}
    for idx in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        cpu = int(idx.parent.parent.name.removeprefix("cpu"))
        try:
            kind, level = (idx / "type").read_text().strip(), (idx / "level").read_text().strip()
            shared = (idx / "shared_cpu_list").read_text().strip()
            size = _size_bytes((idx / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and (cpus is None or cpu in cpus):
            seen[(level, kind, shared)] = size
    return sum(seen.values()) or None


def _size_bytes(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


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
