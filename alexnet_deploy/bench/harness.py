"""benchmark(): every (runner, batch size) of an export folder timed the same way, with the
machine's roofline: peak rates and the core clock once per process, read rates in every run, and
the read rates and the clock again after the runners (bench/roofline.py); a result that beats its
floor fails the report's self_check. Results are dataclasses; the JSON keys follow DESIGN.md."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from alexnet_deploy.bench import end_to_end, loadgen
from alexnet_deploy.bench.end_to_end import EndToEnd
from alexnet_deploy.bench.loadgen import ScenarioResult
from alexnet_deploy.bench.picks import read_picks
from alexnet_deploy.bench.timing import (
    CV_WARN,
    PERCENTILE_METHOD,
    CudaTimedCall,
    LatencyStats,
    PeakMemory,
    Timing,
    harness_overhead_us,
    time_calls,
)
from alexnet_deploy.errors import CheckFailed, UserError, exception_line
from alexnet_deploy.machine import default_threads, machine_info
from alexnet_deploy.manifest import Artifact, Manifest, verify_integrity
from alexnet_deploy.runtimes import Runner

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 8, 32, 64)
MIN_DURATION_S = 1.0  # each timing lasts at least this long (or the whole cap when it is shorter)
MIN_CALLS = 10  # and holds at least this many calls, whatever the cap (trtexec's --iterations default)
INPUT_BUFFERS = 4  # inputs rotate over these so no runtime can answer from a cached input
INPUT_BUFFER_BUDGET = 256 << 20  # fewer buffers (at least two) when large batches would exceed it
METHOD = {
    "latency": "host wall clock (time.perf_counter) around each infer() call on numpy input, output "
               "copied back; CUDA runners that take device tensors (the torch *-cuda runners and "
               "tensorrt): pinned host -> device copy, compute (infer_device, CUDA-graph replay where "
               "capture works), device -> host copy, timed with CUDA events per phase and the host "
               "clock overall; CUDA runners that take host arrays only (onnxruntime-cuda, "
               "onnxruntime-tensorrt): timed like CPU ones, transfers included, phases not split",
    "windows": "warm-up for warmup_s, then timed windows until 3 consecutive window medians agree "
               "within 10% (stable) or duration_s of timed calls pass (stable=false), but never before "
               "min_duration_s of timed calls and min_calls calls (the count wins over the cap)",
    "percentiles": PERCENTILE_METHOD + "; cv = population standard deviation / mean, flagged above "
                   f"{CV_WARN:.0%} as trtexec does",
    "throughput": "concurrency 1: batch_size * timed calls / summed call latencies (one synchronous "
                  "stream; wall_throughput_ips beside it counts the harness too); concurrency N: "
                  "batch_size * completed requests / wall-clock seconds with N requests kept in flight "
                  "by the runtime's own machinery (OpenVINO AsyncInferQueue under the THROUGHPUT hint, "
                  "threads over ONNX Runtime sessions and torch modules), as trtexec and benchmark_app "
                  "count; its latencies are each request's own, its efficiency floor / wall time per batch",
    "inputs": "random float32 batches made before timing, rotated over several buffers",
    "harness_overhead": "median time of a no-op through the same timing loop; not subtracted",
    "end_to_end": end_to_end.METHOD,
    "scenarios": "MLPerf LoadGen (mlcommons-loadgen) issues, times and judges each run by its own rules "
                 "(min_duration_ms = min_duration_s, min_query_count = min_calls or the count early "
                 "stopping needs, whichever is more); "
                 "one query in flight, its samples batched up to the artifact's largest batch; server: "
                 "a bisection over Poisson rates for the highest VALID one with p99 <= latency_ms; "
                 "accuracy: LoadGen's accuracy mode over the sample set, top-1 against its labels",
}


@dataclass
class BenchResult:
    backend: str
    format: str
    precision: str
    device: str
    batch_size: int
    threads: int
    load_s: float
    first_inference_ms: float
    latency_ms: LatencyStats
    throughput_ips: float
    stable: bool | None  # None with several requests in flight (no stability windows)
    windows: list[float]  # median latency (ms) of each timed window
    calls: int
    timed_s: float
    peak_rss_mb: float
    rss_before_load_mb: float
    input_buffers_mb: float
    # set once, by _final_floors, from the machine's limits measured before and after every runner
    floor_ms: float | None = None
    efficiency: float | None = None
    floor_basis: str = ""
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None
    cuda_graph: bool | None = None
    inference_precision: str | None = None  # what the runtime says it computes in (OpenVINO), if it says
    note: str | None = None
    artifact: str = ""  # its path in the export folder
    recommended: bool = False  # recommend's pick for this precision (DIR/recommendation.json)
    floor_wrong: bool = False  # efficiency above roofline.FLOOR_WRONG: the floor is not a floor
    # per layer group (conv, fc): roofline.GroupFloor, its compute and memory terms and which bounds it
    floor_terms: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1  # requests in flight (1: one synchronous stream)
    streams: int | None = None  # the runtime's own streams serving them (OpenVINO: read back from it; CUDA: one per request)
    wall_throughput_ips: float | None = None  # items / wall-clock second of the timed run
    best_concurrency: bool = False  # the sweep's best N for its runner, artifact and batch size

    @property
    def time_per_batch_ms(self) -> float:
        """What the floor is compared with: one call's median alone; the wall time per batch when
        several run at once."""
        if self.concurrency == 1:
            return self.latency_ms.p50
        return 1e3 * self.batch_size / self.wall_throughput_ips
    @property
    def label(self) -> str:
        flight = f", {self.concurrency} in flight" if self.concurrency > 1 else ""
        flight += f", {self.streams} streams" if self.streams else ""
        return f"{self.backend} ({self.format}, {self.precision}{flight})"


@dataclass
class Skip:
    backend: str
    format: str
    precision: str
    reason: str
    batch_size: int | None = None


@dataclass
class SelfCheck:
    """The benchmark's own check: no result may beat its floor (efficiency above FLOOR_WRONG)."""

    passed: bool = True
    floor_wrong: list[str] = field(default_factory=list)  # the results that did, with their efficiency


@dataclass
class BenchmarkReport:
    export_dir: str
    created: str
    machine: dict[str, Any]
    versions: dict[str, str]
    settings: dict[str, Any]
    roofline: dict[str, Any]
    harness_overhead_us: float
    memory_method: str
    method: dict[str, str]
    results: list[BenchResult] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    end_to_end: list[EndToEnd] = field(default_factory=list)  # `--images`: from the file to the logits
    scenarios: list[ScenarioResult] = field(default_factory=list)  # `--scenario`: MLPerf LoadGen runs
    self_check: SelfCheck = field(default_factory=SelfCheck)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------------
# What to run
# ---------------------------------------------------------------------------------------------
def plan_runs(manifest: Manifest, backends: Sequence[str] | None, device: str | None,
              only: Callable[[Any], bool] | None = None):
    """(available choices, skips). Named backends that cannot run at all are a UserError;
    `only` (a predicate on RunnerChoice) narrows the plan further. Each choice carries its
    runner class, which the rest of the run uses as it is."""
    from alexnet_deploy.runtimes import get_runner, runners_for

    if not manifest.artifacts:
        raise UserError(f"the manifest in {manifest.root} lists no artifacts: run "
                        f"`alexnet-deploy export WEIGHTS --out {manifest.root}` first")
    choices = [c for c in runners_for(manifest, list(backends) if backends else None)
               if (device is None or c.runner_cls.device == device) and (only is None or only(c))]
    for name in backends or ():
        cls = get_runner(name)
        if reason := cls.unavailable_reason():
            raise UserError(f"backend {name} cannot run here: {reason}")
        mine = [c for c in choices if c.runner_cls is cls]
        if not mine:
            where = f" on {device}" if device and cls.device != device else ""
            raise UserError(f"backend {name} has nothing to run{where}: {manifest.root} holds no "
                            f"{'/'.join(cls.formats)} artifact for it (export it, or drop --backends {name})")
    skips = [Skip(c.runner, c.artifact.format, c.artifact.precision, c.reason)
             for c in choices if not c.available]
    runnable = [c for c in choices if c.available]
    if not runnable:
        why = "; ".join(f"{s.backend}: {s.reason}" for s in skips) or "no runner accepts its artifacts"
        raise UserError(f"nothing in {manifest.root} can be benchmarked here"
                        f"{f' on {device}' if device else ''} ({why})")
    return runnable, skips


# The largest input batch the harness allocates (its buffers rotate over several copies of it).
MAX_INPUT_BYTES = 2 << 30


def check_batch_sizes(manifest: Manifest, artifacts: Sequence[Artifact], batch_sizes: Sequence[int]) -> None:
    """Refuse, before the roofline is measured or anything loads, batch sizes that no planned
    artifact accepts or whose input alone would exceed MAX_INPUT_BYTES."""
    c = manifest.card.input.crop
    for b in batch_sizes:
        size = b * 3 * c * c * 4
        if size > MAX_INPUT_BYTES:
            raise UserError(f"batch size {b} needs a {size / 2**30:.1f} GiB input at {c} px (limit "
                            f"{MAX_INPUT_BYTES / 2**30:.0f} GiB); pass smaller --batch-sizes")
        if not any(a.batch.min <= b <= a.batch.max for a in artifacts):
            ranges = ", ".join(sorted({f"{a.batch.min}..{a.batch.max}" for a in artifacts}))
            raise UserError(f"batch size {b} is outside every artifact's batch range ({ranges}); "
                            "pass --batch-sizes within it or re-export with a larger --max-batch")


def check_integrity(manifest: Manifest, artifacts: Sequence[Artifact]) -> None:
    """Every file to be timed is the one the manifest lists (sha256, contained in the folder):
    a swapped file would be timed and reported under the manifest's label."""
    seen = set()
    for art in artifacts:
        if art.path in seen:
            continue
        seen.add(art.path)
        problem = verify_integrity(manifest, art)
        if problem:
            raise CheckFailed(f"{problem} (refusing to benchmark it)")


def make_inputs(batch: int, shape: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    one = batch * int(np.prod(shape)) * 4
    count = max(2, min(INPUT_BUFFERS, INPUT_BUFFER_BUDGET // max(one, 1)))
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *shape), dtype=np.float32) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
@dataclass
class _RunContext:
    manifest: Manifest
    batch_sizes: list[int]
    warmup_s: float
    duration_s: float
    min_duration_s: float
    min_calls: int
    threads: int
    roofline: dict[str, Any]
    cost: Any
    memory: PeakMemory
    images: list[str] = field(default_factory=list)  # `--images`: timed end to end after the batches
    scenarios: list[str] = field(default_factory=list)  # `--scenario`: LoadGen runs after those
    latency_ms: float | None = None  # the server scenario's p99 budget
    concurrency: list[int] = field(default_factory=lambda: [1])  # requests in flight, swept
    streams: int | None = None  # `--streams`: the runtime's own streams for them, where it has them
    samples: tuple | None = None  # LoadGen's sample set, loaded at the first scenario

    def run_length(self) -> dict[str, Any]:
        """time_calls' keyword arguments for one timing."""
        return {"warmup_s": self.warmup_s, "duration_s": self.duration_s,
                "min_duration_s": self.min_duration_s, "min_calls": self.min_calls}


def _bench_runner(ctx: _RunContext, cls: type[Runner], artifact: Artifact, report: BenchmarkReport) -> None:
    """Load once, then every batch size in ascending order; peaks are per runner, cumulative."""
    runner_name = cls.name
    results, skips = report.results, report.skipped
    runner = cls.from_artifact(ctx.manifest, artifact, threads=ctx.threads)
    lo, hi = artifact.batch.min, artifact.batch.max
    ctx.memory.reset()
    rss_before = ctx.memory.current_mb()
    log.info(f"{runner.label}: loading")
    runner.activate()
    try:
        for batch in ctx.batch_sizes:
            if not lo <= batch <= hi:
                skips.append(Skip(runner_name, artifact.format, artifact.precision,
                                  f"batch size {batch} is outside the artifact's range {lo}..{hi}", batch))
                continue
            inputs = make_inputs(batch, ctx.manifest.card.input.shape)
            t0 = time.perf_counter()
            runner.infer(inputs[0])
            first_ms = (time.perf_counter() - t0) * 1e3
            timing, cuda = time_runner(runner, inputs, ctx.run_length())
            stats = timing.stats
            results.append(BenchResult(
                backend=runner_name, format=artifact.format, precision=artifact.precision,
                device=cls.device, batch_size=batch, threads=ctx.threads,
                load_s=round(runner.load_s or 0.0, 4), first_inference_ms=first_ms, latency_ms=stats,
                throughput_ips=batch * len(timing.samples_ms) / (sum(timing.samples_ms) / 1e3),
                stable=timing.stable, windows=[round(w, 4) for w in timing.windows_ms],
                calls=len(timing.samples_ms), timed_s=round(timing.timed_s, 3),
                peak_rss_mb=round(ctx.memory.peak_mb(), 1), rss_before_load_mb=round(rss_before, 1),
                input_buffers_mb=round(sum(x.nbytes for x in inputs) / 2**20, 1),
                inference_precision=reported_precision(runner), artifact=artifact.path, **cuda))
            r = results[-1]
            r.wall_throughput_ips = batch * r.calls / timing.timed_s
            log.info(f"{r.label} batch {batch}: p50 {stats.p50:.3f} ms, p99 {stats.p99:.3f} ms, "
                    f"{r.throughput_ips:.1f} img/s{'' if r.stable else ' (unstable)'}")
            for n in (c for c in ctx.concurrency if c > 1):
                _bench_in_flight(ctx, runner, r, inputs, n, report)
        if ctx.images and lo <= 1:
            e2e = end_to_end.time_end_to_end(runner, artifact, ctx.manifest.card, ctx.images, ctx.run_length())
            report.end_to_end.append(e2e)
            log.info(f"{runner.label} from images: p50 {e2e.total_ms.p50:.3f} ms per image, "
                     f"{e2e.infer_share:.0%} of it inference")
        for scenario in ctx.scenarios:
            report.scenarios.append(_run_scenario(ctx, runner, artifact, scenario, report))
    finally:
        runner.deactivate()


def _bench_in_flight(ctx: _RunContext, runner: Runner, sync: BenchResult, inputs: list[np.ndarray], n: int,
                     report: BenchmarkReport) -> None:
    """`sync`'s runner and batch again with n requests in flight, through the runtime's own machinery."""
    from dataclasses import replace

    from alexnet_deploy.bench.timing import time_in_flight

    try:
        flight = runner.in_flight(n, ctx.streams if runner.has_streams else None)
    except UserError as e:
        report.skipped.append(Skip(sync.backend, sync.format, sync.precision, f"concurrency {n}: {e}",
                                   sync.batch_size))
        return
    try:
        timing = time_in_flight(flight, inputs, n, **ctx.run_length())
    finally:
        flight.close()
    wall = timing.throughput(sync.batch_size)
    r = replace(sync, concurrency=n, streams=flight.streams, latency_ms=timing.stats, throughput_ips=wall,
                wall_throughput_ips=wall, stable=None, windows=[], calls=len(timing.latencies_ms),
                timed_s=round(timing.wall_s, 3), peak_rss_mb=round(ctx.memory.peak_mb(), 1))
    report.results.append(r)
    log.info(f"{runner.label} batch {r.batch_size}, {n} in flight: {wall:.1f} img/s, p99 {r.latency_ms.p99:.3f} ms")


def mark_best_concurrency(results: list[BenchResult]) -> None:
    """Per runner, artifact and batch size swept over several concurrencies: the one with the most
    images per wall-clock second."""
    groups: dict[tuple, list[BenchResult]] = {}
    for r in results:
        groups.setdefault((r.backend, r.artifact, r.precision, r.batch_size), []).append(r)
    for rows in groups.values():
        if len(rows) > 1:
            max(rows, key=lambda r: r.wall_throughput_ips or 0.0).best_concurrency = True


def _run_scenario(ctx: _RunContext, runner: Runner, artifact: Artifact, scenario: str,
                  report: BenchmarkReport) -> ScenarioResult:
    if ctx.samples is None:
        ctx.samples = loadgen.scenario_samples(ctx.manifest.card)
        report.settings["scenario_samples"] = ctx.samples[2]
    samples, labels, _ = ctx.samples
    log.info(f"{runner.label}: LoadGen {scenario}")
    result = loadgen.run_scenario(runner, artifact, samples, labels, scenario, ctx.min_duration_s,
                                  ctx.min_calls, ctx.latency_ms)
    log.info(f"{runner.label} {scenario}: {result.headline:.3f} {result.unit}, "
             f"{'VALID' if result.valid else 'INVALID (' + '; '.join(result.why_invalid) + ')'}")
    return result


def time_runner(runner: Runner, inputs: list[np.ndarray], run_length: dict[str, Any]
                ) -> tuple[Timing, dict[str, Any]]:
    """One active runner at one batch size: the timing and, on CUDA, the per-phase medians
    (CUDA runners that declare `device_tensors` are timed through `infer_device` with CUDA events)."""
    if runner.device == "cuda" and runner.device_tensors:
        call = CudaTimedCall(runner, inputs)
        timing = time_calls(call, call.host, **run_length)
        extra = {**call.phase_medians(len(timing.samples_ms)), "cuda_graph": call.graph is not None}
        if call.graph_error:
            extra["note"] = f"CUDA graph capture failed, plain calls timed ({call.graph_error})"
        return timing, extra
    timing = time_calls(runner.infer, inputs, **run_length)
    extra = {}
    if runner.device == "cuda":
        extra = {"cuda_graph": False, "note": "runner takes host arrays only: latency includes "
                                              "transfers, phases not split"}
    return timing, extra


def reported_precision(runner: Runner) -> str | None:
    """The precision the runtime says it computes in (OpenVINO's runner reports it), else None."""
    value = runner.runtime_precision()
    return None if value is None else precision_name(str(value))


def precision_name(text: str) -> str:
    """'float32' from OpenVINO's "<Type: 'float32'>"; other text unchanged."""
    import re

    quoted = re.search(r"'(\w+)'", text)
    return quoted.group(1) if quoted else text


def benchmark(export_dir: str | os.PathLike, backends: Sequence[str] | None = None,
              batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, warmup_s: float = 1.0,
              duration_s: float = 10.0, threads: int | None = None, device: str | None = None,
              only: Callable[[Any], bool] | None = None, min_duration_s: float | None = None,
              min_calls: int = MIN_CALLS, images: str | os.PathLike | None = None,
              scenarios: Sequence[str] = (), latency_ms: float | None = None,
              concurrency: Sequence[int] = (1,), streams: int | None = None) -> BenchmarkReport:
    """Time every available runner on every batch size; see METHOD and roofline.FORMULA.
    `duration_s` caps each timing; `min_duration_s` (default: MIN_DURATION_S, or duration_s when
    that is shorter) and `min_calls` are what each must reach first. `images`: a folder whose
    files each runner also classifies one per call, decode and preprocessing timed apart.
    `scenarios`: MLPerf LoadGen scenarios run on each runner (see bench/loadgen.py); the server
    scenario searches the highest rate whose p99 stays within `latency_ms`. `concurrency`: numbers
    of requests kept in flight (each runtime's own machinery, wall-clock throughput); the
    synchronous stream (1) always runs, as the baseline. `streams`: how many of its own streams a
    runtime that has them (OpenVINO) serves those requests with (None: its THROUGHPUT hint's choice;
    the number used is in each result either way)."""
    import torch

    from alexnet_deploy.bench import roofline
    from alexnet_deploy.machine import library_versions

    if any(b < 1 for b in batch_sizes):
        raise UserError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    min_duration_s = min(MIN_DURATION_S, duration_s) if min_duration_s is None else min_duration_s
    if not 0 <= min_duration_s <= duration_s:
        raise UserError(f"--min-duration-s {min_duration_s:g} must be between 0 and --duration-s "
                        f"{duration_s:g} (the cap): raise --duration-s or lower --min-duration-s")
    if min_calls < 1:
        raise UserError(f"--min-calls must be >= 1, got {min_calls}")
    image_paths = end_to_end.image_paths(images) if images is not None else []
    loadgen.check_scenarios(list(scenarios), latency_ms)
    if any(n < 1 for n in concurrency):
        raise UserError(f"--concurrency must be >= 1, got {list(concurrency)}")
    if streams is not None and streams < 1:
        raise UserError(f"--streams must be >= 1, got {streams}")
    if streams is not None and max(concurrency) < 2:
        raise UserError("--streams serves the requests kept in flight: pass --concurrency with a value above 1 too")
    manifest = Manifest.read(export_dir)
    plan, skips = plan_runs(manifest, backends, device, only)
    check_integrity(manifest, [c.artifact for c in plan])
    check_batch_sizes(manifest, [c.artifact for c in plan], batch_sizes)
    threads = threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # torch-based runners run in this process
    try:
        machine = machine_info()  # before anything of ours loads the machine
        log.info(f"measuring the roofline with {threads} threads")
        card = manifest.card
        cost = roofline.model_cost(card.arch, card.num_classes, card.input.crop)
        ctx = _RunContext(
            manifest=manifest, batch_sizes=sorted(set(batch_sizes)), warmup_s=warmup_s,
            duration_s=duration_s, min_duration_s=min_duration_s, min_calls=min_calls, images=image_paths,
            scenarios=list(scenarios), latency_ms=latency_ms, concurrency=sorted({1, *concurrency}),
            streams=streams, threads=threads, cost=cost, memory=PeakMemory(),
            roofline=roofline.measure(threads, any(c.runner_cls.device == "cuda" for c in plan)))
        report = BenchmarkReport(
            export_dir=str(manifest.root), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            machine=machine, versions=library_versions(),
            settings={"batch_sizes": ctx.batch_sizes, "warmup_s": warmup_s, "duration_s": duration_s,
                      "min_duration_s": min_duration_s, "min_calls": min_calls,
                      "images": str(images) if images is not None else None,
                      "scenarios": list(scenarios), "latency_ms": latency_ms,
                      "concurrency": sorted({1, *concurrency}), "streams": streams,
                      "threads": threads, "device": device, "backends": list(backends or [])},
            roofline={**ctx.roofline, "model_macs": ctx.cost.macs, "model_params": ctx.cost.params,
                      "model_input": card.input.crop,
                      "weight_bytes": roofline.weight_bytes(cost, [c.artifact.precision for c in plan])},
            harness_overhead_us=harness_overhead_us(), memory_method=ctx.memory.method,
            method=METHOD, skipped=skips)
        for choice in plan:
            try:
                _bench_runner(ctx, choice.runner_cls, choice.artifact, report)
            except Exception as e:  # a runtime failing mid-run is reported; the others still run
                reason = f"failed: {exception_line(e)}"
                log.warning(f"{choice.runner} [{choice.artifact.precision}]: {reason}")
                report.skipped.append(Skip(choice.runner, choice.artifact.format,
                                           choice.artifact.precision, reason))
        if report.results:
            _final_floors(ctx, report)
    finally:
        torch.set_num_threads(previous_threads)
    if not report.results:
        why = "; ".join(f"{s.backend}: {s.reason}" for s in report.skipped)
        raise UserError(f"no backend produced a result ({why})")
    mark_recommended(report.results, read_picks(manifest))
    mark_best_concurrency(report.results)
    report.machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") \
        else None
    return report


def _final_floors(ctx: _RunContext, report: BenchmarkReport) -> None:
    """Every result's floor, from the better of the two measurements of the CPU's read rates and clock
    (the GPU's are measured once), then the floor's own check."""
    from alexnet_deploy.bench import roofline

    for key in roofline.remeasure(ctx.roofline):
        report.roofline[key] = ctx.roofline[key]
    for r in report.results:
        roof = ctx.roofline.get("cuda", ctx.roofline) if r.device == "cuda" else ctx.roofline
        bound = roofline.floor(ctx.cost, r.batch_size, r.precision, roof, in_flight=r.concurrency)
        r.floor_ms, r.floor_basis, r.floor_terms = bound.ms, bound.basis, bound.groups
        r.efficiency = r.floor_ms / r.time_per_batch_ms
    report.self_check = self_check(report.results)
    if not report.self_check.passed:
        note = (f"floor wrong: {', '.join(report.self_check.floor_wrong)} ran faster than the floor allows "
                f"(efficiency above {roofline.FLOOR_WRONG:.2f}); the roofline's figures for it are not limits")
        report.notes.append(note)
        log.warning(note)


def self_check(results: Sequence[BenchResult]) -> SelfCheck:
    """Marks each result that beat its floor (a bug in the floor, not a fast runtime) and lists them."""
    from alexnet_deploy.bench.roofline import FLOOR_WRONG

    wrong = []
    for r in results:
        r.floor_wrong = r.efficiency > FLOOR_WRONG
        if r.floor_wrong:
            wrong.append(f"{r.label} batch {r.batch_size} ({r.efficiency:.0%})")
    return SelfCheck(passed=not wrong, floor_wrong=wrong)


def mark_recommended(results: list[BenchResult], picks: dict[str, dict[str, Any]]) -> None:
    """Mark the rows that are recommend's pick for their precision (bench/picks.read_picks)."""
    for r in results:
        pick = picks.get(r.precision, {})
        r.recommended = (pick.get("runner"), pick.get("artifact")) == (r.backend, r.artifact)
