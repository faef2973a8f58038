"""The benchmark harness: the timing core on synthetic callables with a scripted clock, the roofline,
and the real command on an export folder."""

from __future__ import annotations

import itertools
import json
import mmap
import time

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

from alexnet_deploy.bench.roofline import floor, model_cost
from alexnet_deploy.bench.timing import (
    LatencyStats,
    PeakMemory,
    harness_overhead_us,
    time_calls,
    windows_agree,
)

LATENCY_KEYS = {"min", "mean", "p50", "p90", "p95", "p99", "p99_9", "max", "std", "cv", "count"}
RESULT_KEYS = {"backend", "format", "precision", "batch_size", "threads", "load_s", "first_inference_ms",
               "latency_ms", "throughput_ips", "stable", "windows", "peak_rss_mb", "floor_ms", "efficiency"}


class ScriptedClock:
    """A clock that only moves when the timed callable says how long it took (exact binary fractions)."""

    def __init__(self, durations) -> None:
        self.now = 0.0
        self.durations = iter(durations)

    def __call__(self) -> float:
        return self.now

    def call(self, _input) -> None:
        self.now += next(self.durations)


def _ordered(stats: LatencyStats) -> bool:
    return stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max


# -- timing core ---------------------------------------------------------------------------------
def test_percentiles_are_over_all_samples_and_ordered():
    stats = LatencyStats.of(np.arange(1, 101, dtype=float))
    assert (stats.min, stats.max, stats.mean) == (1.0, 100.0, 50.5)
    assert stats.p50 == pytest.approx(50.5)
    assert _ordered(stats)


def test_p99_9_coefficient_of_variation_and_count_as_trtexec_reports_them():
    stats = LatencyStats.of(np.arange(1, 1001, dtype=float))
    assert stats.count == 1000
    assert stats.p99_9 == pytest.approx(999.001)  # linear interpolation between 999 and 1000
    assert stats.p99 <= stats.p99_9 <= stats.max
    assert stats.std == pytest.approx(np.sqrt((1000**2 - 1) / 12))  # population std of 1..n
    assert stats.cv == pytest.approx(stats.std / 500.5) and stats.noisy
    steady = LatencyStats.of([10.0] * 50 + [10.05] * 50)  # 0.25 % spread: not flagged
    assert steady.cv == pytest.approx(0.025 / 10.025) and not steady.noisy


@pytest.mark.parametrize("medians, agree", [
    ([10.0, 10.5, 10.9], True),
    ([50.0, 20.0, 10.0, 10.2, 10.1], True),  # only the last three count
    ([10.0, 11.5, 10.0], False),             # 15% apart
    ([10.0, 10.0], False),                   # fewer than three windows
])
def test_stability_rule(medians, agree):
    assert windows_agree(medians) is agree


def test_constant_calls_stop_after_three_agreeing_windows():
    clock = ScriptedClock(itertools.repeat(1 / 64))
    timing = time_calls(clock.call, [0, 1], warmup_s=0.25, duration_s=10, window_s=1 / 8, clock=clock)
    assert timing.stable
    assert len(timing.windows_ms) == 3
    assert len(timing.samples_ms) == 3 * 8  # warm-up calls are not timed
    assert set(timing.samples_ms) == {1000 / 64}


def test_drifting_calls_keep_timing_until_windows_settle():
    slow, fast = [1 / 32] * 4, [1 / 64] * 8  # one window each
    clock = ScriptedClock(itertools.chain(slow, fast, slow, itertools.repeat(1 / 64)))
    timing = time_calls(clock.call, [0], warmup_s=0, duration_s=10, window_s=1 / 8, clock=clock)
    assert timing.stable
    assert timing.windows_ms == [31.25, 15.625, 31.25, 15.625, 15.625, 15.625]
    assert timing.stats.max == 31.25 and timing.stats.min == 15.625  # early windows still count


def test_unsettled_calls_stop_at_the_cap_flagged_unstable():
    clock = ScriptedClock(itertools.cycle([1 / 32] * 4 + [1 / 64] * 8))
    timing = time_calls(clock.call, [0], warmup_s=0, duration_s=1.0, window_s=1 / 8, clock=clock)
    assert not timing.stable
    assert len(timing.windows_ms) == 8 and timing.timed_s == 1.0


def test_a_minimum_duration_keeps_a_stable_run_going():
    clock = ScriptedClock(itertools.repeat(1 / 64))
    timing = time_calls(clock.call, [0], warmup_s=0, duration_s=10, window_s=1 / 8, clock=clock, min_duration_s=2.0)
    assert timing.stable and timing.timed_s == 2.0  # stable after 3 windows (0.375 s), kept to 2 s
    assert len(timing.samples_ms) == 2 * 64


def test_a_minimum_call_count_wins_over_the_cap():
    clock = ScriptedClock(itertools.repeat(0.5))  # a slow model: 2 calls per second
    timing = time_calls(clock.call, [0], warmup_s=0, duration_s=1.0, window_s=0.1, clock=clock, min_calls=10)
    assert len(timing.samples_ms) >= 10 and timing.timed_s >= 5.0
    assert timing.stats.count == len(timing.samples_ms)


def test_slow_calls_still_get_three_per_window():
    clock = ScriptedClock(itertools.repeat(0.5))
    timing = time_calls(clock.call, [0], warmup_s=0, duration_s=10, window_s=0.1, clock=clock)
    assert len(timing.samples_ms) == 9 and timing.stable


def test_inputs_are_rotated():
    seen = []
    time_calls(seen.append, ["a", "b", "c"], warmup_s=0, duration_s=0.01, window_s=0.001)
    assert seen[:6] == ["a", "b", "c", "a", "b", "c"]


def test_real_sleep_is_never_under_reported():
    timing = time_calls(lambda _: time.sleep(0.002), [None], warmup_s=0.01, duration_s=0.2, window_s=0.02)
    assert timing.stats.min >= 2.0  # sleep never returns early
    assert _ordered(timing.stats)
    assert len(timing.samples_ms) >= 9


def test_harness_overhead_is_below_a_known_sleep():
    """A no-op through the timing loop costs less than a 100 µs sleep measured by the same loop
    (in the same unit): an overhead in the wrong unit or a broken loop would not be."""
    overhead_us = harness_overhead_us(duration_s=0.05)
    sleep = time_calls(lambda _: time.sleep(1e-4), [None], warmup_s=0, duration_s=0.05, window_s=0.005)
    assert sleep.stats.min >= 0.1  # ms: the sleep itself is measured, never early
    assert 0 < overhead_us < sleep.stats.p50 * 1e3


def test_peak_memory_is_per_runner():
    memory = PeakMemory()
    if not memory.method.startswith("VmHWM"):
        pytest.skip("the OS does not allow resetting the peak RSS (/proc/self/clear_refs)")
    memory.reset()
    base = memory.peak_mb()
    # 190 MiB of new pages, touched: mapped here, not from malloc, which may hold freed memory to reuse
    # (tests/conftest.py has it keep what it frees)
    with mmap.mmap(-1, 200_000_000) as block:
        np.frombuffer(block, dtype=np.uint8)[:] = 1
    assert memory.peak_mb() >= base + 150
    memory.reset()
    assert memory.peak_mb() < base + 100


# -- what the harness times, by declared capability -----------------------------------------------
class _HostOnlyCudaRunner:
    """Stands in for a CUDA runner that takes host arrays only (onnxruntime-cuda declares so)."""

    name = "host-only-cuda"
    device = "cuda"
    device_tensors = False

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        return np.zeros((len(batch), 10), np.float32)

    def runtime_precision(self):
        return None


def test_cuda_runner_without_device_tensors_is_timed_with_transfers_and_says_so():
    from alexnet_deploy.bench.harness import reported_precision, time_runner

    runner = _HostOnlyCudaRunner()
    timing, extra = time_runner(runner, [np.zeros((1, 3, 8, 8), np.float32)], {"warmup_s": 0, "duration_s": 0.01})
    assert runner.calls >= len(timing.samples_ms) >= 3  # timed through infer() on numpy
    assert extra["cuda_graph"] is False and "latency includes transfers" in extra["note"]
    assert reported_precision(runner) is None


def test_cuda_event_timing_refuses_a_runner_without_device_tensors():
    from alexnet_deploy.bench.timing import CudaTimedCall

    with pytest.raises(TypeError, match="host-only-cuda takes host arrays only"):
        CudaTimedCall(_HostOnlyCudaRunner(), [np.zeros((1, 3, 8, 8), np.float32)])


def test_method_text_names_which_cuda_runners_are_timed_apart_from_transfers():
    from alexnet_deploy.bench.harness import METHOD
    from alexnet_deploy.runtimes import RUNNERS

    text = METHOD["latency"]
    for name, cls in RUNNERS.items():
        if cls.device == "cuda" and not cls.device_tensors:
            assert name in text, name  # these include the transfers: the method must say which
    assert "torch *-cuda runners and tensorrt" in text
    assert all(RUNNERS[n].device_tensors for n in ("tensorrt", "torch-eager-cuda"))


# -- roofline ---------------------------------------------------------------------------------------
def test_model_cost_matches_alexnet_published_figures():
    cost = model_cost("alexnet", 1000, 224)
    assert cost.macs == pytest.approx(0.714e9, rel=0.01)
    assert cost.params == 61_100_840
    assert cost.groups["conv"].macs > 10 * cost.groups["fc"].macs
    assert model_cost("alexnet", 1000, 112).groups["conv"].macs < cost.groups["conv"].macs / 3


def test_floor_grows_with_batch_and_shrinks_with_precision():
    cost = model_cost("alexnet", 1000, 224)
    roof = {"gflops_fp32": 100.0, "gops_int8": 400.0, "read_gbps": 10.0}  # no per-size rates: DRAM rate
    one = floor(cost, 1, "fp32", roof)
    f1, f64 = one.ms, floor(cost, 64, "fp32", roof).ms
    assert 0 < f1 < f64
    assert "fc memory-bound" in one.basis and "conv compute-bound" in one.basis
    assert floor(cost, 1, "int8", roof).ms < f1
    assert floor(cost, 1, "fp16", roof).ms <= f1  # no fp16 rate: fp32 rate, half the bytes


@pytest.mark.parametrize("flags, expected", [
    # a Sapphire Rapids core: AVX-512 FMA, AMX for bf16 and int8, AVX512-FP16
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8"},
     {"fp32": 256, "bf16": 4096, "fp16": 512, "int8": 8192}),
    # AVX2 + FMA only (this CI machine's kind): bf16 and fp16 are computed in fp32, int8 with AVX2
    ({"avx", "avx2", "fma", "ssse3"}, {"fp32": 128, "bf16": 128, "fp16": 128, "int8": 512}),
    ({"avx512f", "fma", "avx512_vnni"}, {"fp32": 256, "bf16": 256, "fp16": 256, "int8": 1024}),
])
def test_isa_peak_is_cores_times_clock_times_the_widest_units_ops_per_cycle(flags, expected):
    from alexnet_deploy.bench.roofline import isa_peaks

    peaks = isa_peaks(flags, cores=2, clock_ghz=2.0)
    assert {p: v["gops"] for p, v in peaks.items()} == expected
    assert all(v["cores"] == 2 and v["clock_ghz"] == 2.0 for v in peaks.values())


def test_the_floor_takes_the_isa_peak_and_never_a_rate_below_a_measured_one():
    from alexnet_deploy.bench.roofline import compute_peak

    isa = {"int8": {"gops": 600.0, "unit": "avx2"}, "fp32": {"gops": 150.0, "unit": "fma"}}
    # int8 measured at 1.2 GOP/s by torch's reference GEMM: the ISA's 600 bounds it instead
    assert compute_peak("int8", {"gops_int8": 1.2, "gflops_fp32": 70.0, "isa_peak": isa})[0] == 600.0
    # a measured rate above the stated-clock peak (turbo) wins: the floor stays below every result
    assert compute_peak("fp32", {"gflops_fp32": 180.0, "isa_peak": isa}) == (180.0, "gflops_fp32=180 (measured)")
    assert compute_peak("fp32", {"gflops_fp32": 70.0})[0] == 70.0  # CUDA: no ISA table, measured only


def test_the_isa_peak_takes_the_fastest_of_the_measured_stated_and_implied_clocks(monkeypatch):
    from alexnet_deploy.bench import roofline
    from alexnet_deploy.machine import CoreClock

    monkeypatch.setattr(roofline, "cpu_flags", lambda: {"avx2", "fma"})
    measured = CoreClock(1.2, "measured: dependent-add chain, best of 20", 1.0, "cpu MHz")
    monkeypatch.setattr(roofline, "core_clock", lambda: measured)
    boost = roofline._isa_section(threads=1, measured_fp32=20.0)  # below 1 core x 1.2 GHz x 32
    assert (boost["clock_ghz"], boost["clock_source"]) == (1.2, measured.clock_source)
    assert boost["isa_peak"]["fp32"]["gops"] == pytest.approx(38.4) and boost["clock_stated_ghz"] == 1.0
    turbo = roofline._isa_section(threads=1, measured_fp32=48.0)  # 1.5 GHz worth of FMAs
    assert turbo["clock_ghz"] == 1.5 and "implied" in turbo["clock_source"]
    assert turbo["isa_peak"]["fp32"]["gops"] == 48.0
    refused = CoreClock(1.0, "stated (cpu MHz)", 1.0, "cpu MHz", "not measured: Operation not permitted")
    monkeypatch.setattr(roofline, "core_clock", lambda: refused)
    stated = roofline._isa_section(threads=1, measured_fp32=20.0)
    assert (stated["clock_ghz"], stated["isa_peak"]["fp32"]["gops"]) == (1.0, 32.0)
    assert stated["clock_measured"]["fallback_reason"] == "not measured: Operation not permitted"


def test_a_faster_clock_measured_after_the_runners_raises_the_isa_peaks_and_a_slower_one_does_not(monkeypatch):
    from alexnet_deploy.bench import roofline
    from alexnet_deploy.machine import CoreClock

    monkeypatch.setattr(roofline, "cpu_flags", lambda: {"avx2", "fma"})
    first = CoreClock(2.0, "measured: dependent-add chain, best of 20", 1.0, "cpu MHz")
    roof = {"clock_measured": {"clock_ghz": 2.0}, "clock_ghz": 2.0, "clock_source": first.clock_source,
            "isa_peak": roofline.isa_peaks({"avx2", "fma"}, 2, 2.0)}
    monkeypatch.setattr(roofline, "core_clock", lambda: CoreClock(1.8, first.clock_source, 1.0, "cpu MHz"))
    assert roofline._remeasure_clock(roof) == ["clock_runs_ghz"] and roof["isa_peak"]["fp32"]["gops"] == 128.0
    monkeypatch.setattr(roofline, "core_clock", lambda: CoreClock(2.5, first.clock_source, 1.0, "cpu MHz"))
    roofline._remeasure_clock(roof)
    assert roof["clock_runs_ghz"] == [2.0, 2.5] and roof["clock_ghz"] == 2.5
    assert roof["isa_peak"]["fp32"]["gops"] == 160.0 and roof["isa_peak"]["int8"]["cores"] == 2


def test_the_core_clock_is_measured_by_a_dependent_add_chain_on_x86_64():
    import platform

    from alexnet_deploy.machine import core_clock

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the dependent-add chain is x86-64 code")
    clock = core_clock(tries=5)
    assert clock.fallback_reason is None and clock.clock_source == "measured: dependent-add chain, best of 5"
    assert 0.5 < clock.clock_ghz < 7.0  # any x86-64 core made; a wrong loop count or unit would miss it


def test_the_core_clock_falls_back_to_the_stated_one_when_executable_memory_is_refused(monkeypatch):
    import errno
    import mmap

    from alexnet_deploy import machine

    def refuse(*args, **kwargs):  # the kernel's (or SELinux's) answer to an executable mapping
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(mmap, "mmap", refuse)
    monkeypatch.setattr(machine, "cpu_clock_ghz", lambda: (2.5, "cpu MHz"))
    clock = machine.core_clock(tries=5)
    assert (clock.clock_ghz, clock.stated_ghz, clock.clock_source) == (2.5, 2.5, "stated (cpu MHz)")
    assert "Operation not permitted" in clock.fallback_reason


def test_at_most_the_caches_capacity_of_the_weights_is_read_at_the_cache_rate():
    from alexnet_deploy.bench.roofline import LayerGroup, ModelCost, floor

    cost = ModelCost({"conv": LayerGroup(macs=0, params=0), "fc": LayerGroup(macs=0, params=25 * 10**6)})
    roof = {"gflops_fp32": 100.0, "read_gbps": 10.0, "llc_read_gbps": 100.0, "cache_bytes": 30 * 10**6}
    big = floor(cost, 1, "fp32", roof)  # 100 MB: 70 from DRAM at 10 GB/s, 30 from the cache at 100 GB/s
    assert big.ms == pytest.approx(7.0 + 0.3) and big.groups["fc"].cached_mb == pytest.approx(30.0)
    small = floor(cost, 1, "int8", roof)  # 25 MB: all of it may be cached
    assert small.ms == pytest.approx(0.25) and small.groups["fc"].bound == "memory"
    assert floor(cost, 1, "fp32", {**roof, "cache_bytes": 0}).ms == pytest.approx(10.0)


def test_requests_in_flight_may_share_each_weight_read_but_not_the_arithmetic():
    from alexnet_deploy.bench.roofline import LayerGroup, ModelCost, floor

    cost = ModelCost({"conv": LayerGroup(macs=10**8, params=0), "fc": LayerGroup(macs=0, params=25 * 10**6)})
    roof = {"gflops_fp32": 100.0, "read_gbps": 10.0, "llc_read_gbps": 100.0, "cache_bytes": 30 * 10**6}
    one, two = floor(cost, 1, "fp32", roof), floor(cost, 1, "fp32", roof, in_flight=2)
    assert two.groups["conv"].compute_ms == one.groups["conv"].compute_ms == pytest.approx(2.0)
    assert two.groups["fc"].memory_ms == pytest.approx(one.groups["fc"].memory_ms / 2)  # 7.3 ms per two batches
    assert two.ms == pytest.approx(2.0 + 3.65) and "shared by 2 requests in flight" in two.basis


def test_the_cache_is_placed_where_it_shortens_the_floor_most():
    """Whatever share of the cache each group's weights get, its time is not below the floor."""
    from alexnet_deploy.bench.roofline import LayerGroup, ModelCost, floor

    # conv: 2 ms of compute and 10 MB; fc: no compute, 40 MB; 20 MB of cache
    cost = ModelCost({"conv": LayerGroup(macs=10**8, params=25 * 10**5), "fc": LayerGroup(macs=0, params=10**7)})
    roof = {"gflops_fp32": 100.0, "read_gbps": 10.0, "llc_read_gbps": 100.0, "cache_bytes": 20 * 10**6}
    f = floor(cost, 1, "fp32", roof)
    for conv_mb in range(0, 11):  # every split of the cache between the groups
        fc_mb = 20 - conv_mb
        conv = max(2.0, (10 - conv_mb) / 10 + conv_mb / 100)
        fc = (40 - fc_mb) / 10 + fc_mb / 100
        assert f.ms <= conv + fc + 1e-9
    assert f.ms == pytest.approx(2.0 + 2.0 + 0.2)  # all the cache on fc: conv is compute-bound anyway
    assert (f.groups["conv"].bound, f.groups["fc"].bound) == ("compute", "memory")


def _result(p50_ms, precision="fp32", batch=1):
    from alexnet_deploy.bench.harness import BenchResult
    from alexnet_deploy.bench.timing import LatencyStats

    return BenchResult(backend="x", format="onnx", precision=precision, device="cpu", batch_size=batch, threads=1,
                       load_s=0, first_inference_ms=0, latency_ms=LatencyStats.of([p50_ms] * 3),
                       throughput_ips=1, stable=True, windows=[], calls=3, timed_s=0, peak_rss_mb=0,
                       rss_before_load_mb=0, input_buffers_mb=0, floor_ms=0, efficiency=0, floor_basis="")


def test_a_result_faster_than_its_floor_is_reported_as_floor_wrong():
    from alexnet_deploy.bench.harness import BenchmarkReport, SelfCheck, _final_floors, _RunContext
    from alexnet_deploy.bench.output import render_markdown
    from alexnet_deploy.bench.roofline import LayerGroup, ModelCost
    from alexnet_deploy.bench.timing import PeakMemory

    cost = ModelCost({"conv": LayerGroup(macs=10**9, params=0), "fc": LayerGroup(macs=0, params=1000)})
    roof = {"threads": 1, "gflops_fp32": 100.0, "read_gbps": 10.0}

    honest, impossible = _result(100.0), _result(1.0)  # the floor is 20 ms (2 GFLOP at 100 GFLOP/s)
    report = BenchmarkReport(export_dir="", created="", machine={}, versions={}, settings={}, roofline={},
                             harness_overhead_us=0, memory_method="", method={}, results=[honest, impossible])
    ctx = _RunContext(manifest=None, batch_sizes=[1], warmup_s=0, duration_s=1, min_duration_s=0, min_calls=1,
                      threads=1, roofline=roof, cost=cost, memory=PeakMemory())
    _final_floors(ctx, report)
    assert honest.floor_ms == pytest.approx(20.0, rel=1e-3) and not honest.floor_wrong
    assert impossible.efficiency == pytest.approx(20.0, rel=1e-3) and impossible.floor_wrong
    assert len(report.notes) == 1 and "floor wrong: x (onnx, fp32) batch 1" in report.notes[0]
    assert report.self_check == SelfCheck(passed=False, floor_wrong=["x (onnx, fp32) batch 1 (2000%)"])
    assert report.to_dict()["self_check"] == {"passed": False, "floor_wrong": ["x (onnx, fp32) batch 1 (2000%)"]}
    runs = report.roofline["read_rates_runs"]  # measured again after the runners, the better kept
    assert len(runs["read_gbps"]) == len(runs["llc_read_gbps"]) == 2
    assert report.roofline["read_gbps"] == max(runs["read_gbps"])
    assert honest.floor_terms["conv"].bound == "compute"
    report.settings, report.machine = {"threads": 1, "batch_sizes": [1], "warmup_s": 0, "duration_s": 1}, {
        "cpu": "x", "cores_physical": 1, "cores_logical": 1, "memory_gb": 1, "load_avg_start": [0.5, 0.4, 0.3]}
    report.roofline.update(model_macs=10**9, model_params=1000, model_input=64, formula="f")
    markdown = render_markdown(report)
    assert markdown.splitlines()[2].startswith("**Self-check FAILED**: floor wrong")
    assert "## What bounds each layer group" in markdown and "[0.5, 0.4, 0.3]" in markdown
    assert "| cpu | fp32 | 1 | 1 | 20.000 |" in markdown  # conv's compute term, once per precision and batch


def test_a_failed_self_check_is_the_commands_exit_1_and_a_passed_one_is_not(tmp_path):
    from alexnet_deploy.bench import check_floors
    from alexnet_deploy.bench.harness import BenchmarkReport, self_check
    from alexnet_deploy.errors import CheckFailed

    fast, fine = _result(1.0), _result(10.0)
    fast.efficiency, fine.efficiency = 1.2, 0.8
    report = BenchmarkReport(export_dir="", created="", machine={}, versions={}, settings={}, roofline={},
                             harness_overhead_us=0, memory_method="", method={}, results=[fine])
    report.self_check = self_check(report.results)
    check_floors(report, tmp_path / "b.json")  # passes: nothing raised
    report.results.append(fast)
    report.self_check = self_check(report.results)
    with pytest.raises(CheckFailed, match=r"floor wrong .* for x \(onnx, fp32\) batch 1 \(120%\)") as failed:
        check_floors(report, tmp_path / "b.json")
    assert failed.value.exit_code == 1 and not fine.floor_wrong and fast.floor_wrong


def test_matmul_size_grows_to_the_peak_for_fast_kernels_and_stops_early_for_slow_ones(monkeypatch):
    """A scripted clock: seconds = size^3 / rate. The fast kernel is measured at the full size; the
    slow one (torch's reference int8 GEMM on a CPU without VNNI: ~20 s at 2048^3) stops at the first
    size over MATMUL_MIN_S instead of spending a minute on the full one."""
    import torch

    from alexnet_deploy.bench import roofline

    rates = {torch.float32: 100e9, torch.int8: 0.8e9}  # multiply-adds per second
    timed: list[tuple[torch.dtype, int]] = []

    def product(a, b):
        timed.append((a.dtype, a.shape[0]))
        return a

    def scripted(fn, reps, sync=lambda: None):
        fn()
        dtype, size = timed[-1]
        return size**3 / rates[dtype]

    monkeypatch.setattr(torch, "mm", product)
    monkeypatch.setattr(torch, "_int_mm", product)
    monkeypatch.setattr(roofline, "_best_seconds", scripted)
    fast = roofline._matmul_rate(torch.float32, 2048, "cpu", 3, lambda: None)
    slow = roofline._matmul_rate(torch.int8, 2048, "cpu", 3, lambda: None)
    assert fast == (pytest.approx(2 * 100.0), 2048)
    assert slow[1] == 512 and slow[0] == pytest.approx(2 * 0.8)  # 512^3 / 0.8e9 = 0.17 s >= 0.05 s
    assert max(size for dtype, size in timed if dtype == torch.int8) == 512


# -- the command on a real export ------------------------------------------------------------------
def _onnxruntime_or_skip():
    from alexnet_deploy.backends.onnxruntime.runner import ort_cpu_unavailable_reason

    if reason := ort_cpu_unavailable_reason():
        pytest.skip(reason)


@pytest.mark.slow
def test_benchmark_command_writes_json_markdown_and_plot(exported_dir, tmp_path):
    _onnxruntime_or_skip()
    from alexnet_deploy.manifest import Manifest

    max_batch = Manifest.read(exported_dir).artifacts[0].batch.max
    report = tmp_path / "reports" / "bench.json"
    proc = run_cli("benchmark", exported_dir, "--backends", "onnxruntime-cpu,torch-eager",
                   "--batch-sizes", f"1,2,{max_batch + 1}", "--warmup-s", "0", "--duration-s", "0.1",
                   "--threads", "1", "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "p50 ms" in proc.stdout  # the table

    data = json.loads(report.read_text())
    assert {"machine", "versions", "roofline", "harness_overhead_us", "results", "skipped"} <= data.keys()
    assert data["machine"]["cores_logical"] >= 1 and data["machine"]["cpu"]
    assert data["roofline"]["gflops_fp32"] > 0 and data["roofline"]["read_gbps"] > 0
    assert data["harness_overhead_us"] > 0
    ran = {(r["backend"], r["precision"], r["batch_size"]) for r in data["results"]}
    assert {("torch-eager", "fp32", 1), ("torch-eager", "fp32", 2), ("onnxruntime-cpu", "fp32", 1)} <= ran
    for r in data["results"]:
        assert RESULT_KEYS <= r.keys()
        lat = r["latency_ms"]
        assert LATENCY_KEYS == lat.keys()
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
        assert lat["count"] == r["calls"] >= 10  # --min-calls' default, although the cap is 0.1 s
        assert lat["cv"] == pytest.approx(lat["std"] / lat["mean"])
        assert r["threads"] == 1 and r["throughput_ips"] > 0 and r["load_s"] >= 0
        assert r["floor_ms"] > 0 and r["efficiency"] == pytest.approx(r["floor_ms"] / lat["p50"])
        assert r["peak_rss_mb"] >= r["rss_before_load_mb"] > 0
        assert len(r["windows"]) >= 1
    too_big = [s for s in data["skipped"] if s["batch_size"] == max_batch + 1]
    assert too_big and all("outside" in s["reason"] for s in too_big)

    assert (data["settings"]["min_duration_s"], data["settings"]["min_calls"]) == (0.1, 10)
    assert "Hyndman-Fan type 7" in data["method"]["percentiles"]
    markdown = report.with_suffix(".md").read_text()
    assert "| onnxruntime-cpu |" in markdown and "floor_ms" in markdown
    assert "p99.9 ms" in markdown and "at least 0.1 s and 10 calls" in markdown
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_pipeline_reads_a_failed_self_check_as_a_finding_not_a_failure(tmp_path):
    """The benchmark step exits 1 on a failed self-check; the pipeline tells that exit from a crash by
    the report the step wrote (a crash writes none, and stays a failure)."""
    from alexnet_deploy.bench.harness import BenchmarkReport, self_check
    from alexnet_deploy.pipeline.steps import STEPS

    step = next(s for s in STEPS if s.name == "benchmark")
    assert step.finding_codes == (1,) and step.findings_in(tmp_path) == ""  # no report: a failure
    fast = _result(1.0)
    fast.efficiency = 1.2
    report = BenchmarkReport(export_dir="", created="", machine={}, versions={}, settings={}, roofline={},
                             harness_overhead_us=0, memory_method="", method={}, results=[fast])
    report.self_check = self_check(report.results)
    (tmp_path / "benchmark.json").write_text(report.to_json())
    assert step.findings_in(tmp_path) == "benchmark self-check failed: floor wrong for x (onnx, fp32) batch 1 (120%)"


@pytest.mark.slow
def test_a_beaten_floor_fails_the_command_after_writing_the_measurements(random_export, tmp_path, monkeypatch):
    """A broken read-rate measurement (the stand-in: 1 MB/s, so every floor lies far above the
    runtime's time) is what the self-check is for: the report is written, says so, and names the
    results; the command exits 1 with one line."""
    _onnxruntime_or_skip()
    from alexnet_deploy.bench import roofline

    broken = {f"{k}{part}": 0.001 for k in roofline.READ_KEYS for part in ("", "_all_threads", "_one_thread")}
    monkeypatch.setattr(roofline, "cpu_read_rates", lambda threads: {**broken, "cache_bytes": 0})
    report = tmp_path / "bench.json"
    proc = run_cli("benchmark", random_export, "--backends", "onnxruntime-cpu", "--batch-sizes", "1",
                   "--warmup-s", "0", "--duration-s", "0.1", "--threads", "1", "--report", report)
    assert proc.returncode == 1, proc.stderr
    last = proc.lines()[-1]
    assert last.startswith("error: benchmark self-check failed: floor wrong") and str(report) in last
    assert "Traceback" not in proc.stderr
    data = json.loads(report.read_text())
    assert data["self_check"]["passed"] is False and data["results"]
    assert len(data["self_check"]["floor_wrong"]) == len(data["results"])  # every floor is wrong here
    assert all(r["floor_wrong"] and r["floor_terms"]["fc"]["bound"] == "memory" for r in data["results"])
    assert "**Self-check FAILED**" in report.with_suffix(".md").read_text()


def test_unavailable_backends_are_skipped_with_their_reason(exported_dir):
    from alexnet_deploy.bench.harness import plan_runs
    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.runtimes import RUNNERS

    runnable, skips = plan_runs(Manifest.read(exported_dir), None, None)
    assert runnable
    assert all(c.runner_cls is RUNNERS[c.runner] and c.runner_cls.unavailable_reason() is None for c in runnable)
    assert all(s.reason for s in skips)
    unavailable = {n for n, cls in RUNNERS.items() if cls.unavailable_reason()}
    assert {s.backend for s in skips} <= unavailable


def _empty_export(tmp_path, exported_dir):
    manifest = json.loads((exported_dir / "manifest.json").read_text())
    manifest["artifacts"] = []
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--backends", "no-such-runtime"], "unknown backend"),
    (["--batch-sizes", "1,0"], ">= 1"),
    (["--duration-s", "1", "--min-duration-s", "5"], "--min-duration-s 5 must be between 0 and --duration-s 1"),
    (["--min-calls", "0"], "--min-calls"),
])
def test_bad_options_exit_2_without_traceback(args, needle, exported_dir):
    assert_user_error(run_cli("benchmark", exported_dir, *args), needle)


@pytest.mark.slow
def test_missing_export_is_one_line(tmp_path):
    proc = run_cli("benchmark", tmp_path / "nothing-here")
    assert_user_error(proc, "no manifest.json")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_manifest_without_artifacts_is_a_user_error(exported_dir, tmp_path):
    from alexnet_deploy.bench import benchmark
    from alexnet_deploy.errors import UserError

    with pytest.raises(UserError, match="lists no artifacts"):
        benchmark(_empty_export(tmp_path, exported_dir))


def test_named_backend_that_cannot_run_here_is_a_user_error(exported_dir):
    from alexnet_deploy.bench import benchmark
    from alexnet_deploy.errors import UserError
    from alexnet_deploy.runtimes import RUNNERS

    blocked = next((n for n, cls in RUNNERS.items() if cls.unavailable_reason()), None)
    if blocked is None:
        pytest.skip("every registered backend can run on this machine")
    with pytest.raises(UserError, match=f"backend {blocked} cannot run here: "):
        benchmark(exported_dir, backends=[blocked])


# -- end to end from image files ----------------------------------------------------------------
def _odd_images(folder):
    """Five files a user might have: a camera-sized JPEG, 16-bit grayscale, palette and RGBA PNGs,
    a BMP; none of them the model's size or square."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / "camera.jpg", quality=90)
    Image.fromarray(rng.integers(0, 65536, (301, 199), dtype=np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (150, 90, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (77, 123, 3), dtype=np.uint8)).save(folder / "old.bmp")
    return [(640, 480), (199, 301), (130, 97), (90, 150), (123, 77)]


@pytest.mark.slow
def test_images_are_timed_from_the_file_to_the_logits_with_each_phase_apart(random_export, tmp_path):
    sizes = _odd_images(tmp_path / "photos")
    report = tmp_path / "bench.json"
    proc = run_cli("benchmark", random_export, "--backends", "onnxruntime-cpu", "--batch-sizes", "2",
                   "--warmup-s", "0", "--duration-s", "0.1", "--min-calls", "7", "--images", tmp_path / "photos",
                   "--report", report)
    assert proc.returncode == 0, proc.stderr
    assert "from image files" in proc.stdout
    data = json.loads(report.read_text())
    assert data["settings"]["images"] == str(tmp_path / "photos")
    rows = data["end_to_end"]
    ran = {(r["backend"], r["precision"]) for r in data["results"]}
    assert {(r["backend"], r["precision"]) for r in rows} == ran and len(rows) == len(ran) >= 1
    pixels = [w * h / 1e6 for w, h in sizes]
    for r in rows:
        assert r["images"] == 5
        phases = [r[k] for k in ("decode_ms", "preprocess_ms", "infer_ms", "total_ms")]
        assert len({p["count"] for p in phases}) == 1 and phases[0]["count"] >= 7  # the same timed calls
        # each call's total holds its three phases, so every order statistic does too
        assert r["total_ms"]["p50"] >= r["infer_ms"]["p50"] and r["total_ms"]["max"] >= r["decode_ms"]["max"]
        assert min(pixels) - 1e-3 <= r["megapixels"] <= max(pixels) + 1e-3
    markdown = report.with_suffix(".md").read_text()
    assert "## From image files to logits" in markdown and "decode ms" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("case, needle", [("missing", "no such folder"), ("empty", "no image files"),
                                          ("corrupt", "cannot read image")])
def test_bad_images_folder_is_one_line_and_nothing_written(case, needle, random_export, tmp_path):
    folder = tmp_path / "photos"
    if case != "missing":
        folder.mkdir()
    if case == "corrupt":
        (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    report = tmp_path / "bench.json"
    proc = run_cli("benchmark", random_export, "--backends", "onnxruntime-cpu", "--batch-sizes", "1",
                   "--duration-s", "0.1", "--images", folder, "--report", report)
    assert_user_error(proc, needle)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not report.exists() and not report.with_suffix(".md").exists()


# -- requests in flight -------------------------------------------------------------------------
class ScriptedFlight:
    """n servers that each take `service_s` per request, on a scripted clock: submit() waits (moves
    the clock) until a server is free, as a runtime's queue does."""

    def __init__(self, clock: ScriptedClock, n: int, service_s: float) -> None:
        self.clock, self.n, self.service_s = clock, n, service_s
        self.running: list[tuple[float, object]] = []

    def _finish_first(self) -> None:
        self.running.sort(key=lambda r: r[0])
        end, done = self.running.pop(0)
        self.clock.now = max(self.clock.now, end)
        done(None, self.service_s * 1e3)

    def submit(self, batch, done) -> None:
        if len(self.running) == self.n:
            self._finish_first()
        self.running.append((self.clock.now + self.service_s, done))

    def drain(self) -> None:
        while self.running:
            self._finish_first()


@pytest.mark.parametrize("n", [1, 2, 4])
def test_in_flight_throughput_is_completed_items_per_wall_second(n):
    from alexnet_deploy.bench.timing import time_in_flight

    clock = ScriptedClock([])
    flight = ScriptedFlight(clock, n, service_s=1 / 64)
    timing = time_in_flight(flight, [0], n, warmup_s=0.25, min_duration_s=1.0, min_calls=10, clock=clock)
    # n servers of 64 requests/s each: n * 64 per wall second, each request's own latency 1/64 s
    assert timing.throughput(batch=8) == pytest.approx(8 * 64 * n, rel=0.05)
    assert set(timing.latencies_ms) == {1000 / 64} and timing.stats.count == len(timing.latencies_ms)
    assert timing.wall_s >= 1.0 and len(timing.latencies_ms) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("runner_name", ["onnxruntime-cpu", "openvino", "torch-eager-cuda"])
def test_requests_in_flight_all_get_their_own_right_answers(runner_name, random_export):
    """On the GPU each request has a CUDA stream of its own (CudaStreamsInFlight); the CPU runtimes
    share a thread pool or use their own queue."""
    from standins import answers_in_flight

    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.runtimes import RUNNERS

    cls = RUNNERS[runner_name]
    if cls.unavailable_reason():
        pytest.skip(cls.unavailable_reason())
    manifest = Manifest.read(random_export)
    artifact = next(a for a in manifest.artifacts if cls.accepts(a) and a.precision == "fp32")
    inputs = [np.random.default_rng(i).standard_normal((2, *manifest.card.input.shape), dtype=np.float32)
              for i in range(6)]
    with cls.from_artifact(manifest, artifact, threads=2) as runner:
        expected = [runner.infer(x) for x in inputs]
        flight = runner.in_flight(3)
        got = answers_in_flight(flight, inputs * 2)  # 12 requests, 3 at a time
    assert flight.streams == 3 or not cls.cuda_streams
    assert sorted(got) == list(range(12))
    for i, out in got.items():
        np.testing.assert_allclose(out, expected[i % 6], rtol=1e-4, atol=1e-4)


def test_a_cuda_runners_requests_in_flight_each_run_on_a_stream_of_the_pool(random_weights, monkeypatch):
    """The torch CUDA runners' in-flight path (CudaStreamsInFlight) on this CUDA-less machine: the
    runner pointed at the CPU, torch's stream API stood in for. 12 requests, 3 in flight: three
    streams made, never the default one, every request on one of them, every answer right."""
    import torch
    from standins import CudaStreams, answers_in_flight

    from alexnet_deploy.backends.torch.runner import TorchEagerCudaRunner
    from alexnet_deploy.models import read_card

    CudaStreams().install(monkeypatch)
    seen: list[int] = []

    class OnTheCpu(TorchEagerCudaRunner):
        device = "cpu"

        @classmethod
        def unavailable_reason(cls):
            return None

        def infer_device_impl(self, x):
            seen.append(torch.cuda.current_stream().cuda_stream)
            return super().infer_device_impl(x)

    card = read_card(random_weights)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 2, *card.input.shape), dtype=np.float32)
              for i in range(4)]
    with OnTheCpu(random_weights, card, threads=1) as runner:
        expected = [runner.infer(x) for x in inputs]
        seen.clear()
        flight = runner.in_flight(3)
        got = answers_in_flight(flight, inputs * 3)
    assert flight.streams == 3 and len(seen) == 12 and len(set(seen)) == 3 and 0 not in seen, seen
    assert sorted(got) == list(range(12))
    for i, out in got.items():
        np.testing.assert_allclose(out, expected[i % 4], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_openvino_serves_requests_in_flight_with_the_streams_asked_for(random_export):
    """--streams is OpenVINO's NUM_STREAMS: the compiled model runs that many (read back from it,
    not from what was asked), their answers are right, and a runner without streams says so."""
    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.runtimes import RUNNERS

    cls = RUNNERS["openvino"]
    if cls.unavailable_reason():
        pytest.skip(cls.unavailable_reason())
    manifest = Manifest.read(random_export)
    artifact = next(a for a in manifest.artifacts if a.format == "onnx" and a.precision == "fp32")
    x = np.random.default_rng(0).standard_normal((2, *manifest.card.input.shape), dtype=np.float32)
    with cls.from_artifact(manifest, artifact, threads=2) as runner:
        expected = runner.infer(x)
        for streams in (1, 2):
            flight = runner.in_flight(2, streams=streams)
            got: list[np.ndarray] = []
            try:
                assert flight.streams == streams
                for _ in range(4):
                    flight.submit(x, lambda out, ms, got=got: got.append(out))
                flight.drain()
            finally:
                flight.close()
            assert len(got) == 4 and all(np.allclose(g, expected, rtol=1e-4, atol=1e-4) for g in got)
        chosen = runner.in_flight(2)  # the THROUGHPUT hint's own choice, reported as it is
        assert chosen.streams is not None and chosen.streams >= 1
        chosen.close()
    with RUNNERS["onnxruntime-cpu"].from_artifact(manifest, artifact, threads=2) as ort_runner:
        with pytest.raises(Exception, match="no streams of its own"):
            ort_runner.in_flight(2, streams=2)


def test_benchmark_streams_reach_openvino_results_only_and_bad_values_are_one_line(random_export, tmp_path):
    report = tmp_path / "bench.json"
    proc = run_cli("benchmark", random_export, "--backends", "onnxruntime-cpu,openvino", "--batch-sizes", "1",
                   "--warmup-s", "0", "--duration-s", "0.2", "--concurrency", "2", "--streams", "2",
                   "--report", report)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["settings"]["streams"] == 2
    flights = [r for r in data["results"] if r["concurrency"] == 2]
    assert {r["backend"] for r in flights} == {"onnxruntime-cpu", "openvino"}
    for r in flights:  # ONNX Runtime has no streams: its requests share one thread pool, as without --streams
        assert r["streams"] == (2 if r["backend"] == "openvino" else None), r
    assert "2 (2 streams)" in report.with_suffix(".md").read_text()
    assert_user_error(run_cli("benchmark", random_export, "--streams", "0"), "--streams")
    assert_user_error(run_cli("benchmark", random_export, "--streams", "2"), "--streams", "--concurrency")


@pytest.mark.slow
def test_benchmark_concurrency_sweep_reports_wall_throughput_and_the_best_n(random_export, tmp_path):
    report = tmp_path / "bench.json"
    proc = run_cli("benchmark", random_export, "--backends", "onnxruntime-cpu", "--batch-sizes", "1",
                   "--warmup-s", "0", "--duration-s", "0.2", "--concurrency", "2,3", "--report", report)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["settings"]["concurrency"] == [1, 2, 3]
    groups: dict[tuple, list[dict]] = {}
    for r in data["results"]:
        groups.setdefault((r["artifact"], r["batch_size"]), []).append(r)
    for rows in groups.values():
        assert sorted(r["concurrency"] for r in rows) == [1, 2, 3]
        best = [r for r in rows if r["best_concurrency"]]
        assert len(best) == 1 and best[0]["wall_throughput_ips"] == max(r["wall_throughput_ips"] for r in rows)
        for r in rows:
            assert r["wall_throughput_ips"] > 0 and r["calls"] >= 10
            if r["concurrency"] > 1:
                assert r["stable"] is None and r["efficiency"] == pytest.approx(
                    r["floor_ms"] * r["wall_throughput_ips"] / (1e3 * r["batch_size"]))
    assert "wall img/s" in report.with_suffix(".md").read_text()
    bad = run_cli("benchmark", random_export, "--concurrency", "0")
    assert_user_error(bad, "--concurrency")
