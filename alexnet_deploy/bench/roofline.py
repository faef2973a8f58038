"""The machine's limits and the model's cost: what a perfect implementation could not beat.

The compute bound on a CPU is the ISA's theoretical peak (cores x clock x operations per cycle of
the widest unit that computes the precision: FP32 FMA, AVX512-BF16 / AMX-BF16, VNNI / AMX-INT8),
which no load can lower; the fastest matmul measured in the run is reported beside it as what is
achievable. Memory read bandwidth has no such datasheet figure in a VM, so it is measured before and
after the runners and the higher kept. The model's side is computed from the network itself
(multiply-adds and weight bytes per layer group at the artifact's input size).

    floor_ms = sum over layer groups g (convolutions, fully connected) of
               max(2 * MACs_g * batch / peak_ops[precision],  weight_bytes_g / read_bandwidth)
    efficiency = floor_ms / measured p50

The convolutions are compute-bound and the fully connected layers memory-bound at small batches,
which is why the two terms are taken per group rather than for the whole network. The weights are
re-read on every call, so their read rate is measured on an array of their size: from memory when
they exceed the last-level cache, from the cache when they fit (a DRAM rate would then give a
"floor" the runtime beats). `read_gbps` itself is over an array twice the last-level cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alexnet_deploy.machine import cpu_clock_ghz, cpu_flags, cpu_has_bf16, last_level_cache_bytes

FORMULA = ("floor_ms = sum over layer groups (conv, fc) of max(2*MACs*batch / the highest rate that may "
           "compute the artifact's precision: on a CPU the ISA's theoretical peak (isa_peak), else or when "
           "higher the fastest measured matmul (fp32: fp32 or TF32; fp16: fp16 or fp32), weight bytes "
           "at that precision / the better of two read-bandwidth measurements (before and after the "
           "runners) over an array the size of all the model's weights); efficiency = floor_ms / p50, "
           f"above {1.05:.2f} reported as 'floor wrong'")
FLOOR_WRONG = 1.05  # efficiency above this: the floor is not a floor (noise allowed for)
# Operations (a multiply-add is 2) per core per cycle of the widest unit each precision can use,
# counting two vector pipes: the most any of these cores issue, so the peak is an upper bound. The
# first flag the CPU has wins; a precision without a native unit is computed in fp32.
ISA_OPS_PER_CYCLE = {
    "fp32": (("avx512f", 64), ("fma", 32), ("asimd", 32), ("avx", 16)),
    "bf16": (("amx_bf16", 1024), ("avx512_bf16", 128)),
    "fp16": (("amx_fp16", 1024), ("avx512_fp16", 128)),
    "int8": (("amx_int8", 2048), ("avx512_vnni", 256), ("avx512bw", 256), ("avx_vnni", 128), ("avx2", 128),
             ("ssse3", 64)),
}
SCALAR_OPS_PER_CYCLE = 8
# int4w / int4w-a8 store the Linears' weights in 4 bits and the convolutions' in 8: every weight is
# counted at 4 bits, so the floor stays a lower bound (the convolutions hold 4 % of AlexNet's weights
# and are compute-bound).
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int8w": 1, "int4w": 0.5, "int4w-a8": 0.5}
# The rates that may bound each precision's arithmetic; the floor takes the fastest one measured,
# so it stays a lower bound: fp32 on CUDA may run as TF32 (cuDNN's and TensorRT's default for
# convolutions), an fp16 graph on a CPU may be computed in fp32. fp32 is the last resort.
# Weight-compressed graphs compute in whatever the runtime chooses: float at the f32 / bf16 hints,
# int8 where OpenVINO quantizes the compressed Linears' inputs on the fly; the fastest bounds them.
_ANY_UNIT = ("gops_int8", "gflops_bf16", "gflops_fp32")
PEAK_KEYS = {"fp32": ("gflops_fp32", "gflops_tf32"), "fp16": ("gflops_fp16", "gflops_fp32"),
             "bf16": ("gflops_bf16",), "int8": ("gops_int8",),
             "int8w": _ANY_UNIT, "int4w": _ANY_UNIT, "int4w-a8": _ANY_UNIT}
# The ISA_OPS_PER_CYCLE row whose theoretical peak bounds a precision (int8's units are the fastest)
ISA_ROW = {"int8w": "int8", "int4w": "int8", "int4w-a8": "int8"}


# ---------------------------------------------------------------------------------------------
# The model's cost
# ---------------------------------------------------------------------------------------------
@dataclass
class LayerGroup:
    macs: int = 0  # multiply-adds per image
    params: int = 0


@dataclass
class ModelCost:
    groups: dict[str, LayerGroup] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(g.macs for g in self.groups.values())

    @property
    def params(self) -> int:
        return sum(g.params for g in self.groups.values())


def model_cost(arch: str, num_classes: int, image_size: int) -> ModelCost:
    """Multiply-adds and parameters of one image through the model itself, on the meta device (no
    memory), counted by torch's FlopCounterMode: `conv` is every convolution and its parameters;
    `fc` every other matrix product (fully connected layers, attention) and every other parameter
    (norms, embeddings: read once per batch like the weights of a fully connected layer)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from alexnet_deploy.models import build_model

    with torch.device("meta"):
        # .to: a user's module object given to the Python API is copied, on the device it was on
        model = build_model(arch, num_classes).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    conv_macs = flops.get("aten.convolution", 0) // 2
    conv_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)
                      for p in m.parameters(recurse=False))
    total_params = sum(p.numel() for p in model.parameters())
    return ModelCost({"conv": LayerGroup(conv_macs, conv_params),
                      "fc": LayerGroup(counter.get_total_flops() // 2 - conv_macs, total_params - conv_params)})


def isa_peaks(flags: set[str], cores: int, clock_ghz: float) -> dict[str, dict[str, Any]]:
    """Theoretical GOP/s per precision: cores x clock x ISA_OPS_PER_CYCLE, with its basis."""
    fp32_unit, fp32_ops = next(((f, n) for f, n in ISA_OPS_PER_CYCLE["fp32"] if f in flags),
                               ("scalar", SCALAR_OPS_PER_CYCLE))
    out = {}
    for precision, units in ISA_OPS_PER_CYCLE.items():
        unit, ops = next(((f, n) for f, n in units if f in flags), (None, 0))
        if ops < fp32_ops:  # no faster unit of its own: computed in fp32
            unit, ops = (fp32_unit if precision == "fp32" else f"{fp32_unit}, in fp32"), fp32_ops
        out[precision] = {"gops": round(cores * clock_ghz * ops, 1), "unit": unit, "ops_per_cycle": ops,
                          "cores": cores, "clock_ghz": clock_ghz}
    return out


def compute_peak(precision: str, roofline: dict) -> tuple[float, str]:
    """The highest rate (GOP/s) that may compute `precision`, and what it is."""
    measured = [k for k in PEAK_KEYS.get(precision, ()) if roofline.get(k)] or ["gflops_fp32"]
    key = max(measured, key=lambda k: roofline.get(k, 0.0))
    best, name = roofline.get(key, 0.0), f"{key}={roofline.get(key, 0.0):.0f} (measured)"
    row = ISA_ROW.get(precision, precision)
    isa = roofline.get("isa_peak", {}).get(row)
    if isa and isa["gops"] >= best:
        best, name = isa["gops"], f"isa_peak {row}={isa['gops']:.0f} ({isa['unit']})"
    return best, name


def floor_ms(cost: ModelCost, batch: int, precision: str, roofline: dict) -> tuple[float, str]:
    """The floor time and a one-line statement of what it was computed from."""
    rate, name = compute_peak(precision, roofline)
    peak = rate * 1e9
    bandwidth_gbps = roofline.get("read_gbps_weights", {}).get(precision, roofline["read_gbps"])
    bandwidth = bandwidth_gbps * 1e9
    width = BYTES_PER_WEIGHT.get(precision, 4)
    total, bounds = 0.0, []
    for group, g in cost.groups.items():  # `name` stays the compute peak's, for the basis
        compute = 2 * g.macs * batch / peak
        memory = g.params * width / bandwidth
        total += max(compute, memory)
        bounds.append(f"{group} {'compute' if compute >= memory else 'memory'}-bound")
    basis = f"{name}, weights read at {bandwidth_gbps:.1f} GB/s; {', '.join(bounds)}"
    return total * 1e3, basis


# ---------------------------------------------------------------------------------------------
# The machine's limits
# ---------------------------------------------------------------------------------------------
def _best_seconds(fn: Callable[[], object], reps: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up: first-touch allocation, kernel selection
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


# A slow kernel (torch's reference int8 or fp16 GEMM on a CPU without VNNI / fp16 FMA) takes
# about 20 s for one 2048^3 product on two cores; a fast one, milliseconds. Sizes grow from the
# smallest until one product takes at least this long (or n reaches the caller's size), so both
# kinds are measured near their peak and none costs more than about a second.
MATMUL_MIN_S = 0.05
MATMUL_START_N = 256


def _matmul_rate(dtype, n: int, device: str, reps: int, sync) -> tuple[float, int] | None:
    """Best-of-reps ops/s of a square matmul in `dtype` (GFLOP/s, or GOP/s for int8) and the size
    measured (at most `n`); None if unsupported."""
    import torch

    def seconds_at(size: int, reps: int) -> float:
        if dtype == torch.int8:
            a = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=device)
            b = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=device)
            op = torch._int_mm  # int8 x int8 -> int32; the only int8 GEMM torch exposes
        else:
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            op = torch.mm
        return _best_seconds(lambda: op(a, b), reps, sync)

    try:
        size = min(MATMUL_START_N, n)
        seconds = seconds_at(size, 1)
        while size < n and seconds < MATMUL_MIN_S:
            size = min(2 * size, n)
            seconds = seconds_at(size, 1)
        seconds = min(seconds, seconds_at(size, reps))
    except (RuntimeError, NotImplementedError):
        return None
    return 2 * size**3 / seconds / 1e9, size


def _read_gbps(nbytes: int, device: str, reps: int, sync) -> float:
    """Best read rate over a float32 array of `nbytes`: a sum, and a matrix-vector product (the
    access pattern of the fully connected layers at batch 1), whichever the machine streams faster."""
    import torch

    cols = 4096
    x = torch.ones(max(nbytes // 4 // cols, 1), cols, dtype=torch.float32, device=device)
    v = torch.ones(cols, dtype=torch.float32, device=device)
    seconds = min(_best_seconds(lambda: x.sum(), reps, sync),
                  _best_seconds(lambda: torch.mv(x, v), reps, sync))
    return x.numel() * 4 / seconds / 1e9


# The machine's peak rates and DRAM bandwidth, measured once per process and thread count: the
# floor takes the ISA peak where it is higher, and a later call could only measure them again as
# busy or quiet as the first, so one measurement (with its time) serves every run in the process.
_CPU_RATES: dict[int, dict] = {}


def measure_cpu(threads: int, weight_bytes: dict[str, int]) -> dict:
    """Peak matmul rates (fp32, fp16, bf16 where the CPU has it, int8) and the read bandwidth over
    twice the last-level cache (once per process: _CPU_RATES), and the read rate over each
    precision's `weight_bytes` (every run: the floor's memory term)."""
    import copy

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if threads not in _CPU_RATES:
            _CPU_RATES[threads] = _cpu_rates(threads)
        out = copy.deepcopy(_CPU_RATES[threads])
        out["read_gbps_weights"] = {p: _read_gbps(b, "cpu", 5, lambda: None) for p, b in weight_bytes.items()}
    finally:
        torch.set_num_threads(previous)
    return {k: v for k, v in out.items() if v is not None}


def _cpu_rates(threads: int) -> dict:
    import psutil
    import torch

    n = 2048 if threads <= 4 else 4096
    out = {"device": "cpu", "threads": threads, "rates_measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rates = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
    if cpu_has_bf16():
        rates["bf16"] = torch.bfloat16
    _put_rates(out, rates, n, "cpu", 3, lambda: None)
    # Larger than the last-level cache so the sum streams from memory, within free RAM.
    llc = last_level_cache_bytes() or (64 << 20)
    nbytes = int(min(max(2 * llc, 512 << 20), 2 << 30, psutil.virtual_memory().available // 4))
    out["read_bytes"] = nbytes
    out["read_gbps"] = _read_gbps(nbytes, "cpu", 3, lambda: None)
    out.update(_isa_section(threads, out.get("gflops_fp32")))
    return out


def _isa_section(threads: int, measured_fp32: float | None) -> dict[str, Any]:
    """isa_peak per precision at the stated clock, or at the clock the measured fp32 rate implies
    when that is higher (a turbo the OS does not state): a measured rate never exceeds it."""
    import psutil

    flags = cpu_flags()
    cores = max(1, min(threads, psutil.cpu_count(logical=False) or threads))
    clock, source = cpu_clock_ghz()
    fp32_ops = next((n for f, n in ISA_OPS_PER_CYCLE["fp32"] if f in flags), SCALAR_OPS_PER_CYCLE)
    implied = measured_fp32 / (cores * fp32_ops) if measured_fp32 else None
    if implied and (clock is None or implied > clock):
        clock, source = round(implied, 3), "implied by the measured fp32 matmul rate"
    if clock is None:
        return {"isa_note": "no clock stated and no fp32 rate measured: compute floors use measured rates"}
    return {"isa_peak": isa_peaks(flags, cores, clock), "clock_ghz": clock, "clock_source": source}


def remeasure_bandwidth(roofline: dict, weight_bytes: dict[str, int]) -> None:
    """Measure the weights' read rate again after the runners and keep the higher of the two, so a
    busy moment at the start does not raise every memory-bound floor."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(roofline.get("threads", previous))
    try:
        again = {p: _read_gbps(b, "cpu", 5, lambda: None) for p, b in weight_bytes.items()}
    finally:
        torch.set_num_threads(previous)
    before = roofline.get("read_gbps_weights", {})
    roofline["read_gbps_weights_runs"] = {p: [before.get(p), again[p]] for p in again}
    roofline["read_gbps_weights"] = {p: max(v for v in pair if v) for p, pair in
                                     roofline["read_gbps_weights_runs"].items()}


def _put_rates(out: dict, dtypes: dict, n: int, device: str, reps: int, sync) -> None:
    """out["gflops_<p>"] (out["gops_int8"]) per precision and out["matmul_n"][p], the size each was
    measured at; precisions the device cannot multiply are left out."""
    sizes = out.setdefault("matmul_n", {})
    for precision, dtype in dtypes.items():
        measured = _matmul_rate(dtype, n, device, reps, sync)
        if measured is not None:
            key = "gops_int8" if precision == "int8" else f"gflops_{precision}"
            out[key], sizes[precision] = measured


def measure_cuda(weight_bytes: dict[str, int]) -> dict:
    """The same on the current CUDA device, plus the TF32 rate (fp32 matmuls with TF32 allowed)."""
    import torch

    sync = torch.cuda.synchronize
    n = 8192
    out = {"device": "cuda", "gpu": torch.cuda.get_device_name()}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        _put_rates(out, {"tf32": torch.float32}, n, "cuda", 5, sync)
        torch.backends.cuda.matmul.allow_tf32 = False
        _put_rates(out, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                         "int8": torch.int8}, n, "cuda", 5, sync)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    out["read_bytes"] = 2 << 30
    out["read_gbps"] = _read_gbps(2 << 30, "cuda", 5, sync)
    out["read_gbps_weights"] = {p: _read_gbps(b, "cuda", 10, sync) for p, b in weight_bytes.items()}
    torch.cuda.empty_cache()
    return {k: v for k, v in out.items() if v is not None}


def weight_bytes(cost: ModelCost, precisions) -> dict[str, int]:
    return {p: int(cost.params * BYTES_PER_WEIGHT.get(p, 4)) for p in sorted(set(precisions))}


def measure(threads: int, cuda: bool, weight_bytes: dict[str, int]) -> dict:
    """The roofline of the run: the CPU's figures at the top level, the GPU's under "cuda"."""
    roofline = measure_cpu(threads, weight_bytes)
    roofline["int8_note"] = ("int8 rate from torch._int_mm" if "gops_int8" in roofline
                             else "int8 rate not measurable here (torch._int_mm unsupported); int8 "
                                  "floors use the fp32 rate")
    if cuda:
        roofline["cuda"] = measure_cuda(weight_bytes)
    roofline["formula"] = FORMULA
    return roofline
