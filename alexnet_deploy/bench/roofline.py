"""The machine's limits and the model's cost: what a perfect implementation could not beat.

Every figure the floor takes is an upper bound on the machine, so that no load and no cache effect
lets a result beat it; the rates a real kernel reaches are reported beside them as "achievable".

Compute: the ISA's theoretical peak (cores x clock x operations per cycle of the widest unit that
computes the precision: FP32 FMA, AVX512-BF16 / AMX-BF16, VNNI / AMX-INT8), at the fastest of the
measured single-core clock (machine.core_clock: a dependent-add chain), the stated clock and the
clock the measured fp32 matmul implies. The fastest matmul measured in the run is the achievable rate.

Memory: a call reads every weight. Between calls at most the caches' capacity C of them can stay
cached, so at least max(W - C, 0) bytes come from DRAM:

    memory_time = max(W - C, 0) / dram_read_rate + min(W, C) / cache_read_rate

with dram_read_rate the best read rate over an array far beyond the caches and cache_read_rate the
best over one that fits the last-level cache (half of it). Each is the higher of a measurement on all
the run's threads and the threads x the one-thread rate (a core reads no faster alone than in
company, and on a loaded machine one thread finds a free core where all of them do not), the best of
several methods (sum, matrix-vector product) and tries, measured before and after the runners.

    floor_ms = sum over layer groups g (convolutions, fully connected) of
               max(2 * MACs_g * batch / peak_ops[precision],  memory_time_g)
    efficiency = floor_ms / measured p50

The convolutions are compute-bound and the fully connected layers memory-bound at small batches,
which is why the two terms are taken per group. The cached bytes are placed in the groups where they
shorten the floor most (place_cache), so whichever weights a runtime keeps cached, its time is not
below the floor. The model's side is computed from the network itself (multiply-adds and weight
bytes per layer group at the artifact's input size).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from alexnet_deploy.machine import (
    cache_bytes_total,
    core_clock,
    cpu_flags,
    cpu_has_bf16,
    last_level_cache_bytes,
)

FLOOR_WRONG = 1.05  # efficiency above this: the floor is not a floor (noise allowed for)
FORMULA = ("floor_ms = sum over layer groups (conv, fc) of max(compute, memory); compute = 2*MACs*batch / "
           "the highest rate that may compute the artifact's precision: on a CPU the ISA's theoretical peak "
           "(isa_peak: cores x the fastest of the measured single-core clock, the stated clock and the clock "
           "the fp32 matmul implies x ops per cycle), else or when higher the fastest measured matmul (fp32: "
           "fp32 or TF32; fp16: fp16 or fp32); memory = the group's weight bytes at that precision, of which "
           "at most the caches' capacity (cache_bytes, placed where it shortens the floor most) are read at "
           "llc_read_gbps and the rest at read_gbps (DRAM), each rate the best of all threads and threads x "
           "one thread, of sum and matrix-vector reads, before and after the runners; efficiency = floor_ms "
           f"/ p50, above {FLOOR_WRONG:.2f} reported as 'floor wrong' and failing the benchmark's self-check")
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


@dataclass
class GroupFloor:
    """One layer group's two lower bounds at one batch size, and which is the larger."""

    compute_ms: float
    memory_ms: float
    weight_mb: float
    cached_mb: float  # of its weights, counted as read from the cache
    bound: str  # "compute" or "memory"


@dataclass
class Floor:
    ms: float
    basis: str  # one line: what it was computed from
    groups: dict[str, GroupFloor]


def place_cache(compute_s: dict[str, float], weight_bytes: dict[str, float], cache_bytes: float,
                dram_bps: float, cache_bps: float) -> dict[str, float]:
    """Cached bytes per group that make sum_g max(compute_g, memory_g) smallest. Every cached byte
    saves the same time in whichever group holds it, but only while that group is memory-bound:
    so first each group gets the bytes that still shorten it, then the rest (which change nothing)
    fill groups in order. The floor is thus below the time of any split a runtime's cache makes."""
    saving = max(1 / dram_bps - 1 / cache_bps, 0.0)
    left, cached = cache_bytes, {}
    for g, w in weight_bytes.items():
        useful = w if saving == 0 else min(w, max(w / dram_bps - compute_s[g], 0.0) / saving)
        cached[g] = min(useful, left)
        left -= cached[g]
    for g, w in weight_bytes.items():
        extra = min(w - cached[g], left)
        cached[g] += extra
        left -= extra
    return cached


def floor(cost: ModelCost, batch: int, precision: str, roofline: dict, in_flight: int = 1) -> Floor:
    """The floor time per batch, its basis and each group's terms; a roofline without cache figures
    (a test's, an old report's) reads every byte at read_gbps. With `in_flight` requests at once,
    one read of a weight may serve all of them (a runtime sharing its weights between streams), so
    each batch is charged its share of the memory time."""
    rate, name = compute_peak(precision, roofline)
    dram = roofline["read_gbps"] * 1e9
    cache = max(roofline.get("llc_read_gbps") or 0.0, roofline["read_gbps"]) * 1e9
    capacity = roofline.get("cache_bytes") or 0
    width = BYTES_PER_WEIGHT.get(precision, 4)
    compute = {g: 2 * c.macs * batch / (rate * 1e9) for g, c in cost.groups.items()}
    weights = {g: c.params * width for g, c in cost.groups.items()}
    cached = place_cache(compute, {g: w / in_flight for g, w in weights.items()}, capacity / in_flight,
                         dram, cache)
    cached = {g: c * in_flight for g, c in cached.items()}
    groups = {}
    for g in cost.groups:
        memory = ((weights[g] - cached[g]) / dram + cached[g] / cache) / in_flight
        groups[g] = GroupFloor(compute_ms=compute[g] * 1e3, memory_ms=memory * 1e3, weight_mb=weights[g] / 1e6,
                               cached_mb=cached[g] / 1e6, bound="compute" if compute[g] >= memory else "memory")
    total = sum(max(t.compute_ms, t.memory_ms) for t in groups.values())
    bounds = ", ".join(f"{g} {t.bound}-bound" for g, t in groups.items())
    basis = (f"{name}; weights {sum(weights.values()) / 1e6:.1f} MB, up to {capacity / 1e6:.1f} MB of them "
             f"from the cache at {cache / 1e9:.1f} GB/s, the rest from DRAM at {dram / 1e9:.1f} GB/s"
             f"{f', one read shared by {in_flight} requests in flight' if in_flight > 1 else ''}; {bounds}")
    return Floor(total, basis, groups)


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


def _read_gbps(nbytes: int, device: str, reps: int, sync, passes: int = 1) -> float:
    """Best read rate over a float32 array of `nbytes`: a sum, and a matrix-vector product (the
    access pattern of the fully connected layers at batch 1), whichever the machine streams faster.
    The sum reads the array `passes` times in one call (a stride-0 view): a cache-resident array is
    read in microseconds, and the call's own overhead must not lower its rate."""
    import torch

    cols = 4096
    x = torch.ones(max(nbytes // 4 // cols, 1), cols, dtype=torch.float32, device=device)
    v = torch.ones(cols, dtype=torch.float32, device=device)
    repeated = x.expand(passes, *x.shape)
    seconds = min(_best_seconds(lambda: repeated.sum(), reps, sync) / passes,
                  _best_seconds(lambda: torch.mv(x, v), reps, sync))
    return x.numel() * 4 / seconds / 1e9


# The machine's peak rates and clock, measured once per process and thread count: the floor takes
# the ISA peak where it is higher, and a later call could only measure them again as busy or quiet as
# the first, so one measurement (with its time) serves every run in the process. The read rates,
# which nothing theoretical bounds, are measured in every run, before and after its runners.
_CPU_RATES: dict[int, dict] = {}
DRAM_READ_REPS = 5
CACHE_READ_REPS = 20
CACHE_READ_PASSES = 8  # reads of the cache-resident array per timed call
READ_KEYS = ("read_gbps", "llc_read_gbps")


def measure_cpu(threads: int) -> dict:
    """Peak matmul rates (fp32, fp16, bf16 where the CPU has it, int8) and the ISA peaks (once per
    process: _CPU_RATES), and the read rates of the memory term (every run)."""
    import copy

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if threads not in _CPU_RATES:
            _CPU_RATES[threads] = _cpu_rates(threads)
        out = copy.deepcopy(_CPU_RATES[threads])
        out.update(cpu_read_rates(threads))
    finally:
        torch.set_num_threads(previous)
    return {k: v for k, v in out.items() if v is not None}


def _cpu_rates(threads: int) -> dict:
    import torch

    n = 2048 if threads <= 4 else 4096
    out = {"device": "cpu", "threads": threads, "rates_measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rates = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
    if cpu_has_bf16():
        rates["bf16"] = torch.bfloat16
    _put_rates(out, rates, n, "cpu", 3, lambda: None)
    out.update(_isa_section(threads, out.get("gflops_fp32")))
    return out


def cpu_read_rates(threads: int) -> dict[str, Any]:
    """The memory term's rates on `threads` threads (set by the caller): over an array far beyond
    the caches (read_gbps, DRAM) and over half the last-level cache (llc_read_gbps). Each is the
    higher of the rate on all threads and `threads` x the rate on one: a core reads no faster beside
    others than alone, so the product bounds what they reach together, and on a loaded machine a
    single thread finds a free core where all of them wait for one another."""
    import os

    import psutil
    import torch

    llc = last_level_cache_bytes()
    cache = cache_bytes_total()
    out: dict[str, Any] = {"cache_bytes": cache, "llc_bytes": llc}
    if cache is None:  # nothing says how much may stay cached: every weight may
        cache = out["cache_bytes"] = 1 << 40
        out["cache_note"] = "cache sizes unknown: every weight counted as cached"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    scale = max(1, min(threads, cpus))
    dram_bytes = int(min(max(4 * min(cache, 1 << 30), 512 << 20), 2 << 30, psutil.virtual_memory().available // 4))
    sizes = {"read_gbps": (dram_bytes, DRAM_READ_REPS, 1),
             "llc_read_gbps": ((llc or 32 << 20) // 2, CACHE_READ_REPS, CACHE_READ_PASSES)}
    for key, (nbytes, reps, passes) in sizes.items():
        together = _read_gbps(nbytes, "cpu", reps, lambda: None, passes)
        torch.set_num_threads(1)
        try:
            alone = _read_gbps(nbytes, "cpu", reps, lambda: None, passes) if threads > 1 else together
        finally:
            torch.set_num_threads(threads)
        out[key.replace("gbps", "bytes")] = nbytes
        out[f"{key}_all_threads"], out[f"{key}_one_thread"] = together, alone
        out[key] = max(together, scale * alone)
    out["read_scale_threads"] = scale
    return out


def _isa_section(threads: int, measured_fp32: float | None) -> dict[str, Any]:
    """isa_peak per precision at the fastest of the measured single-core clock, the stated clock and
    the clock the measured fp32 rate implies: a rate on any number of cores never exceeds it."""
    import psutil

    flags = cpu_flags()
    cores = max(1, min(threads, psutil.cpu_count(logical=False) or threads))
    core = core_clock()
    record = {"clock_measured": asdict(core)}
    candidates = {core.clock_source: core.clock_ghz, f"stated ({core.stated_source})": core.stated_ghz}
    fp32_ops = next((n for f, n in ISA_OPS_PER_CYCLE["fp32"] if f in flags), SCALAR_OPS_PER_CYCLE)
    if measured_fp32:
        candidates["implied by the measured fp32 matmul rate"] = round(measured_fp32 / (cores * fp32_ops), 3)
    known = {k: v for k, v in candidates.items() if v}
    if not known:
        return {**record, "isa_note": "no clock measured or stated and no fp32 rate measured: compute floors "
                                      "use measured rates"}
    source = max(known, key=known.get)
    return {**record, "isa_peak": isa_peaks(flags, cores, known[source]), "clock_ghz": known[source],
            "clock_source": source, "clock_stated_ghz": core.stated_ghz}


def remeasure(roofline: dict) -> list[str]:
    """Measure the read rates and the core clock again after the runners and keep the higher (the
    rates' parts too), so a busy moment at the start lowers no limit; both read measurements are kept
    in `read_rates_runs`, both clocks in `clock_runs_ghz`. Returns the keys it changed."""
    import torch

    threads = roofline.get("threads", torch.get_num_threads())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        again = cpu_read_rates(threads)
    finally:
        torch.set_num_threads(previous)
    before = {k: roofline.get(k) for k in READ_KEYS}
    roofline["read_rates_runs"] = {k: [before[k], again[k]] for k in READ_KEYS}
    changed = ["read_rates_runs"]
    for k in READ_KEYS:
        for key in (k, f"{k}_all_threads", f"{k}_one_thread"):
            roofline[key] = max(roofline.get(key) or 0.0, again[key])
            changed.append(key)
    return changed + _remeasure_clock(roofline)


def _remeasure_clock(roofline: dict) -> list[str]:
    """A faster single-core clock measured now raises every ISA peak (cores and units unchanged)."""
    if "isa_peak" not in roofline:  # no ISA peaks to raise (no clock known, a test's roofline)
        return []
    again = core_clock()
    roofline["clock_runs_ghz"] = [(roofline.get("clock_measured") or {}).get("clock_ghz"), again.clock_ghz]
    changed = ["clock_runs_ghz"]
    if again.fallback_reason is None and again.clock_ghz > (roofline.get("clock_ghz") or 0.0):
        peaks = roofline["isa_peak"]
        cores = next(iter(peaks.values()))["cores"]
        roofline["isa_peak"] = isa_peaks(cpu_flags(), cores, again.clock_ghz)
        roofline["clock_ghz"], roofline["clock_source"] = again.clock_ghz, again.clock_source
        changed += ["isa_peak", "clock_ghz", "clock_source"]
    return changed


def _put_rates(out: dict, dtypes: dict, n: int, device: str, reps: int, sync) -> None:
    """out["gflops_<p>"] (out["gops_int8"]) per precision and out["matmul_n"][p], the size each was
    measured at; precisions the device cannot multiply are left out."""
    sizes = out.setdefault("matmul_n", {})
    for precision, dtype in dtypes.items():
        measured = _matmul_rate(dtype, n, device, reps, sync)
        if measured is not None:
            key = "gops_int8" if precision == "int8" else f"gflops_{precision}"
            out[key], sizes[precision] = measured


def measure_cuda() -> dict:
    """The same on the current CUDA device, plus the TF32 rate (fp32 matmuls with TF32 allowed);
    its cache is the L2."""
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
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 0
    out["read_bytes"] = 2 << 30
    out["read_gbps"] = _read_gbps(2 << 30, "cuda", 5, sync)
    out["cache_bytes"] = l2
    if l2:
        out["llc_read_bytes"] = l2 // 2
        out["llc_read_gbps"] = _read_gbps(l2 // 2, "cuda", CACHE_READ_REPS, sync, CACHE_READ_PASSES)
    torch.cuda.empty_cache()
    return {k: v for k, v in out.items() if v is not None}


def weight_bytes(cost: ModelCost, precisions) -> dict[str, int]:
    return {p: int(cost.params * BYTES_PER_WEIGHT.get(p, 4)) for p in sorted(set(precisions))}


def measure(threads: int, cuda: bool) -> dict:
    """The roofline of the run: the CPU's figures at the top level, the GPU's under "cuda"."""
    roofline = measure_cpu(threads)
    roofline["int8_note"] = ("int8 rate from torch._int_mm" if "gops_int8" in roofline
                             else "int8 rate not measurable here (torch._int_mm unsupported); int8 "
                                  "floors use the fp32 rate")
    if cuda:
        roofline["cuda"] = measure_cuda()
    roofline["formula"] = FORMULA
    return roofline
