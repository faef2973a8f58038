"""The timing core: warm-up, stability windows, percentiles, harness overhead, peak memory, and
CUDA event timing. Everything here works on a plain callable so it can be tested on its own."""

from __future__ import annotations

import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.errors import exception_line

STABLE_TOLERANCE = 0.10  # three consecutive window medians within 10% of each other
STABLE_WINDOWS = 3
MIN_CALLS_PER_WINDOW = 3
Clock = Callable[[], float]


CV_WARN = 0.01  # trtexec warns when the coefficient of variation passes 1 %
PERCENTILE_METHOD = "numpy.percentile 'linear' (Hyndman-Fan type 7) over every timed call"


@dataclass
class LatencyStats:
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    p99_9: float = float("nan")
    std: float = float("nan")  # population standard deviation
    cv: float = float("nan")  # std / mean
    count: int = 0  # timed calls the percentiles are over

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p95, p99, p999 = np.percentile(a, [50, 90, 95, 99, 99.9])
        mean, std = float(a.mean()), float(a.std())
        return cls(min=float(a.min()), mean=mean, p50=float(p50), p90=float(p90), p95=float(p95),
                   p99=float(p99), max=float(a.max()), p99_9=float(p999), std=std,
                   cv=std / mean if mean > 0 else float("nan"), count=int(a.size))

    @property
    def noisy(self) -> bool:
        """Spread above trtexec's 1 % warning line: the percentiles move from run to run."""
        return bool(self.cv > CV_WARN)


@dataclass
class Timing:
    samples_ms: list[float]  # every timed call, warm-up excluded
    windows_ms: list[float]  # the median of each window, in order
    stable: bool
    timed_s: float
    stats: LatencyStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = LatencyStats.of(self.samples_ms)


def windows_agree(medians: Sequence[float], tolerance: float = STABLE_TOLERANCE,
                  count: int = STABLE_WINDOWS) -> bool:
    """True when the last `count` window medians lie within `tolerance` of the smallest of them."""
    last = list(medians)[-count:]
    return len(last) == count and max(last) <= (1 + tolerance) * min(last)


def default_window_s(duration_s: float) -> float:
    # Ten windows fit in the cap, so a run that settles quickly stops after a third of it;
    # at most 1 s per window keeps quick runners' windows short enough to see drift.
    return min(max(duration_s / 10, 1e-3), 1.0)


def time_calls(call: Callable[[Any], object], inputs: Sequence[Any], warmup_s: float, duration_s: float,
               window_s: float | None = None, clock: Clock = time.perf_counter,
               min_duration_s: float = 0.0, min_calls: int = 0) -> Timing:
    """Warm up for `warmup_s`, then time `call` over the rotated `inputs` in windows until the last
    three windows' medians agree within 10% (stable) or `duration_s` of timed calls pass (unstable).
    Neither ends the run before `min_duration_s` of timed calls and `min_calls` calls (as trtexec's
    --duration / --iterations and LoadGen's minimums): the call count wins over the cap, so a slow
    model still gets `min_calls` samples.

    A window lasts `window_s` and holds at least three calls, so slow calls still get a median.
    """
    window_s = default_window_s(duration_s) if window_s is None else window_s
    n, i = len(inputs), 0
    start = clock()
    while clock() - start < warmup_s:
        call(inputs[i % n])
        i += 1
    samples: list[float] = []
    medians: list[float] = []
    timed_start = clock()
    while True:
        window: list[float] = []
        window_start = clock()
        while True:
            t0 = clock()
            call(inputs[i % n])
            t1 = clock()
            i += 1
            window.append((t1 - t0) * 1e3)
            if t1 - window_start >= window_s and len(window) >= MIN_CALLS_PER_WINDOW:
                break
        samples += window
        medians.append(statistics.median(window))
        elapsed = clock() - timed_start
        if elapsed < min_duration_s or len(samples) < min_calls:
            continue
        if windows_agree(medians):
            stable = True
            break
        if elapsed >= duration_s:
            stable = False
            break
    return Timing(samples, medians, stable, clock() - timed_start)


@dataclass
class InFlightTiming:
    """Requests kept `concurrency` deep: each one's own latency, and the wall clock over all."""

    concurrency: int
    latencies_ms: list[float]
    wall_s: float  # first timed submit to the last completion
    stats: LatencyStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = LatencyStats.of(self.latencies_ms)

    def throughput(self, batch: int) -> float:
        """Items per wall-clock second, as trtexec and benchmark_app count them."""
        return batch * len(self.latencies_ms) / self.wall_s


def time_in_flight(flight: Any, inputs: Sequence[Any], concurrency: int, warmup_s: float,
                   min_duration_s: float = 0.0, min_calls: int = 0, clock: Clock = time.perf_counter,
                   **_: Any) -> InFlightTiming:
    """Keep `concurrency` requests in flight on `flight` (runtimes.InFlight; the caller closes it):
    warm up for `warmup_s`, drain, then submit until `min_duration_s` passed and at least
    `min_calls` (and `concurrency`) requests went in, drain again. No stability windows: with several
    requests in flight one call's time is not the measure, so the minimums set the run's length."""
    import threading

    lock = threading.Lock()
    latencies: list[float] = []

    def record(_out: Any, latency_ms: float) -> None:
        with lock:
            latencies.append(latency_ms)

    n, i, start = len(inputs), 0, clock()
    while clock() - start < warmup_s:
        flight.submit(inputs[i % n], lambda _o, _l: None)
        i += 1
    flight.drain()
    t0, submitted = clock(), 0
    while True:
        elapsed = clock() - t0
        if submitted >= max(min_calls, concurrency) and elapsed >= min_duration_s:
            break
        flight.submit(inputs[i % n], record)
        i += 1
        submitted += 1
    flight.drain()
    return InFlightTiming(concurrency, latencies, clock() - t0)


def harness_overhead_us(duration_s: float = 0.2) -> float:
    """Median cost of one timed call of a no-op through the same loop (clock reads, rotation)."""
    timing = time_calls(lambda x: None, [None] * 4, warmup_s=0.02, duration_s=duration_s,
                        window_s=duration_s / 10)
    return timing.stats.p50 * 1e3


# ---------------------------------------------------------------------------------------------
# Peak process memory
# ---------------------------------------------------------------------------------------------
class PeakMemory:
    """The process's resident-set high-water mark, reset per runner where the OS allows it.

    On Linux, writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS, so each runner's
    peak is its own (on top of what the process already held). Elsewhere the peak is the process
    lifetime's (ru_maxrss), which only grows; `method` says which one a report holds.
    """

    _status = Path("/proc/self/status")

    def __init__(self) -> None:
        self.method = "VmHWM reset per runner (/proc/self/clear_refs)" if self._can_reset() \
            else "ru_maxrss: process lifetime high-water mark, not reset per runner"

    def _can_reset(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return self._field("VmHWM") is not None
        except OSError:
            return False

    def _field(self, name: str) -> float | None:
        try:
            m = re.search(rf"^{name}:\s+(\d+) kB", self._status.read_text(), re.M)
        except OSError:
            return None
        return int(m.group(1)) / 1024 if m else None

    def reset(self) -> None:
        if self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")

    def current_mb(self) -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def peak_mb(self) -> float:
        peak = self._field("VmHWM")
        if peak is not None:
            return peak
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 2**20 if sys.platform == "darwin" else kb / 1024  # macOS reports bytes


# ---------------------------------------------------------------------------------------------
# CUDA: events around host->device, compute and device->host, CUDA-graph replay where possible
# ---------------------------------------------------------------------------------------------
class CudaTimedCall:
    """One call = copy a pinned host batch in, run, copy the logits out, synchronise.

    For runners that declare `device_tensors` (the torch *-cuda runners and tensorrt; the
    onnxruntime GPU runners take host arrays only and are timed as CPU ones are, transfers
    included): their `infer_device(tensor) -> tensor` runs on the current stream. Events split
    each call into h2d / compute / d2h as trtexec does; the host clock around the whole call is the
    latency. With `graph=True` the compute is captured once into a CUDA graph and replayed; a
    runtime that cannot be captured falls back to plain calls (`graph_error` says why).
    """

    def __init__(self, runner, inputs: Sequence[np.ndarray], graph: bool = True) -> None:
        import torch

        if not runner.device_tensors:
            raise TypeError(f"{runner.name} takes host arrays only: time it with time_calls(runner.infer, ...)")
        self.torch, self.runner = torch, runner
        self.host = [torch.from_numpy(x).pin_memory() for x in inputs]
        self.device_in = torch.empty(self.host[0].shape, dtype=self.host[0].dtype, device="cuda")
        self.device_in.copy_(self.host[0])
        out = runner.infer_device(self.device_in)
        self.device_out = out
        self.host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self.phases: list[tuple[float, float, float]] = []
        self.graph = None
        self.graph_error: str | None = None
        if graph:
            self._capture()

    def _capture(self) -> None:
        torch = self.torch
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(3):
                    self.runner.infer_device(self.device_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.device_out = self.runner.infer_device(self.device_in)
            self.graph = graph
        except Exception as e:  # each runtime fails capture its own way; fall back to plain calls
            torch.cuda.synchronize()
            self.graph_error = exception_line(e)

    def __call__(self, host) -> None:
        e0, e1, e2, e3 = self.events
        e0.record()
        self.device_in.copy_(host, non_blocking=True)
        e1.record()
        if self.graph is not None:
            self.graph.replay()
            out = self.device_out
        else:
            out = self.runner.infer_device(self.device_in)
        e2.record()
        self.host_out.copy_(out, non_blocking=True)
        e3.record()
        e3.synchronize()
        self.phases.append((e0.elapsed_time(e1), e1.elapsed_time(e2), e2.elapsed_time(e3)))

    def phase_medians(self, last: int) -> dict[str, float]:
        """Median h2d / compute / d2h milliseconds over the last `last` calls (the timed ones)."""
        h2d, compute, d2h = zip(*self.phases[-last:], strict=True)
        return {"h2d_ms": statistics.median(h2d), "compute_ms": statistics.median(compute),
                "d2h_ms": statistics.median(d2h)}
