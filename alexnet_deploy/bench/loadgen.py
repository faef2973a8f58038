"""MLPerf LoadGen scenarios over any runner (`benchmark --scenario`), through the mlcommons-loadgen
wheel: LoadGen issues the queries, times them and judges each run VALID by its own rules (minimum
duration and query count, early stopping, the server's latency bound); this module is the system under
test around one active runner, and the search for the server scenario's highest valid rate.

Our SUT keeps one query in flight at a time (a worker thread runs them in order; LoadGen's thread
only enqueues), batching a query's samples up to the artifact's largest batch."""

from __future__ import annotations

import queue
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_deploy.errors import UserError

SCENARIOS = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "server": "Server",
             "offline": "Offline"}
MULTI_STREAM_SAMPLES = 8  # samples per query, as MLPerf's edge rules
SERVER_SEARCH_RUNS = 6  # LoadGen runs spent searching the server rate
SCHEDULE_MARGIN = 4  # how much faster than the probe a run may turn out and still fill its minimum duration
MIN_BUSY = 0.1  # the server search gives up below a rate that keeps the runner this busy
# Fewer queries than this and LoadGen's early-stopping rule cannot pass, so the run would be INVALID
# whatever the latencies (its summary says how many it needs: about 64 for single-stream's p90, 662
# for multi-stream's p99, 460 for the server's p99); a run takes at least this many.
EARLY_STOPPING_QUERIES = {"single-stream": 100, "multi-stream": 700, "server": 500, "offline": 1}
OFFLINE_RESIZES = 2  # offline reruns after a run that ended before its minimum duration (_fixed_schedule)
# What each scenario's headline is: the summary line LoadGen writes it on, and its unit
HEADLINE = {"single-stream": ("90.0th percentile latency (ns)", "p90 latency ms"),
            "multi-stream": ("99.0th percentile latency (ns)", "p99 latency ms"),
            "server": ("Completed samples per second", "samples/s at p99 <= the budget"),
            "offline": ("Samples per second", "samples/s")}


def unavailable_reason() -> str | None:
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError:
        return "MLPerf LoadGen is not installed: pip install mlcommons-loadgen"
    return None


def check_scenarios(names: list[str], latency_ms: float | None) -> None:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UserError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if latency_ms is not None and not latency_ms > 0:
        raise UserError(f"--latency-ms must be > 0, got {latency_ms:g}")
    if "server" in names and latency_ms is None:
        raise UserError("the server scenario needs a latency budget: pass --latency-ms (e.g. 10)")
    if names and (why := unavailable_reason()):
        raise UserError(why)


@dataclass
class ScenarioResult:
    scenario: str
    backend: str
    format: str
    precision: str
    valid: bool
    headline: float  # the scenario's metric, in `unit`
    unit: str
    latency_ms: dict[str, float]  # LoadGen's percentiles of the (last) run
    samples: int  # sample set size
    runs: list[dict[str, Any]] = field(default_factory=list)  # each LoadGen run: its settings, result
    why_invalid: list[str] = field(default_factory=list)
    latency_budget_ms: float | None = None
    accuracy_top1: float | None = None  # LoadGen's accuracy mode, scored as validate scores top-1
    summary: str = ""  # LoadGen's mlperf_log_summary.txt of the run the headline comes from
    artifact: str = ""  # its path in the export folder


class _SUT:
    """One worker thread runs the queries LoadGen issues, in order, batched up to `max_batch`."""

    def __init__(self, runner: Any, samples: np.ndarray, max_batch: int) -> None:
        self.runner, self.samples, self.max_batch = runner, samples, max_batch
        self.predictions: dict[int, int] = {}
        self.errors: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def issue(self, query_samples) -> None:
        self._queue.put(list(query_samples))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=60)

    def _run(self) -> None:
        import mlperf_loadgen as lg

        while (qs := self._queue.get()) is not None:
            for start in range(0, len(qs), self.max_batch):
                part = qs[start:start + self.max_batch]
                try:
                    logits = self.runner.infer(self.samples[[q.index for q in part]])
                    for q, row in zip(part, np.asarray(logits), strict=True):
                        self.predictions[q.index] = int(row.argmax())
                except Exception as e:  # answered anyway, or LoadGen would wait forever
                    self.errors.append(str(e))
                lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in part])


def _settings(scenario: str, mode: str, duration_s: float, min_queries: int, expected_ms: float,
              qps: float | None, latency_ms: float | None):
    import mlperf_loadgen as lg

    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, SCENARIOS[scenario])
    s.mode = getattr(lg.TestMode, mode)
    s.min_duration_ms = int(duration_s * 1000)
    s.min_query_count = max(min_queries, EARLY_STOPPING_QUERIES[scenario] if mode == "PerformanceOnly" else 1)
    # LoadGen schedules min_duration / expected latency queries: an expectation measured slow (a busy
    # probe) would end the run before its minimum duration, so it is understated (the run only lengthens)
    s.single_stream_expected_latency_ns = int(expected_ms / SCHEDULE_MARGIN * 1e6)
    s.multi_stream_samples_per_query = MULTI_STREAM_SAMPLES
    s.multi_stream_expected_latency_ns = int(expected_ms * MULTI_STREAM_SAMPLES / SCHEDULE_MARGIN * 1e6)
    s.offline_expected_qps = qps or 1e3 / expected_ms
    if qps is not None and scenario == "server":
        s.server_target_qps = qps
    if latency_ms is not None:
        s.server_target_latency_ns = int(latency_ms * 1e6)
    return s


def _one_run(sut: _SUT, samples: np.ndarray, settings) -> tuple[str, dict[str, Any]]:
    import mlperf_loadgen as lg

    with tempfile.TemporaryDirectory(prefix="loadgen-") as out:
        log = lg.LogSettings()
        log.log_output.outdir = out
        log.log_output.copy_summary_to_stdout = False
        sut_handle = lg.ConstructSUT(sut.issue, sut.flush)
        count = len(samples)
        qsl = lg.ConstructQSL(count, count, lambda _: None, lambda _: None)
        try:
            lg.StartTestWithLogSettings(sut_handle, qsl, settings, log)
        finally:
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut_handle)
        summary = (Path(out) / "mlperf_log_summary.txt").read_text()
    return summary, parse_summary(summary)


def parse_summary(text: str) -> dict[str, Any]:
    """The fields of LoadGen's mlperf_log_summary.txt that a result needs."""
    def value(label: str) -> float | None:
        m = re.search(rf"^\s*{re.escape(label)}\s*:\s*([0-9.]+)", text, re.M)
        return float(m.group(1)) if m else None

    percentiles = {f"p{m.group(1).rstrip('0').rstrip('.')}": int(m.group(2)) / 1e6
                   for m in re.finditer(r"^([0-9.]+) percentile latency \(ns\)\s*:\s*(\d+)", text, re.M)}
    unmet = [f"{what.replace(' satisfied', '').lower()} not satisfied"
             for what in re.findall(r"^\s*(.+?)\s*:\s*(?:NO|No)\s*$", text, re.M)]
    valid = re.search(r"^Result is : (\w+)", text, re.M)
    return {"valid": bool(valid and valid.group(1) == "VALID"), "unmet": unmet, "percentiles_ms": percentiles,
            **{key: value(label) for key, (label, _) in HEADLINE.items()}}


def run_scenario(runner: Any, artifact: Any, samples: np.ndarray, labels: np.ndarray | None, scenario: str,
                 duration_s: float, min_queries: int, latency_ms: float | None = None) -> ScenarioResult:
    """One scenario on an active runner; the server scenario searches its rate (see server_search)."""
    expected_ms = _probe_ms(runner, samples)
    if scenario == "server" and expected_ms > latency_ms:
        return _cannot_meet(runner, artifact, samples, expected_ms, latency_ms)
    # no call larger than the sample set: the weights' "artifact" (torch eager) takes any batch, up to
    # the manifest's 65536, and an offline rate probed on a few samples but scaled by that would ask
    # LoadGen for millions of samples in one query
    batch = min(artifact.batch.max, len(samples))
    sut = _SUT(runner, samples, batch)
    try:
        if scenario == "server":
            summary, parsed, runs = server_search(sut, samples, duration_s, min_queries, expected_ms,
                                                  latency_ms, batch)
        else:
            summary, parsed, runs = _fixed_schedule(sut, runner, samples, scenario, duration_s, min_queries,
                                                    expected_ms, batch)
        accuracy = None
        if labels is not None:
            sut.predictions.clear()
            # every sample once, whatever the scenario: its answers do not depend on the schedule
            _one_run(sut, samples, _settings("offline", "AccuracyOnly", 0, 1, expected_ms, None, None))
            accuracy = float(np.mean([sut.predictions.get(i, -1) == y for i, y in enumerate(labels)]))
    finally:
        sut.close()
    if sut.errors:
        raise RuntimeError(f"the runner failed under LoadGen: {sut.errors[0]}")
    label, unit = HEADLINE[scenario]
    headline = parsed[scenario] or 0.0
    if scenario in ("single-stream", "multi-stream"):
        headline /= 1e6  # ns -> ms
    return ScenarioResult(
        scenario=scenario, backend=runner.name, format=artifact.format, precision=artifact.precision,
        artifact=artifact.path,
        valid=parsed["valid"], headline=headline, unit=unit, latency_ms=parsed["percentiles_ms"],
        samples=len(samples), runs=runs, why_invalid=[] if parsed["valid"] else parsed["unmet"],
        latency_budget_ms=latency_ms if scenario == "server" else None, accuracy_top1=accuracy,
        summary=summary)


def _fixed_schedule(sut: _SUT, runner: Any, samples: np.ndarray, scenario: str, duration_s: float,
                    min_queries: int, expected_ms: float, batch: int) -> tuple[str, dict[str, Any], list[dict]]:
    """Single-stream, multi-stream or offline: one performance run, and for offline up to
    OFFLINE_RESIZES more. LoadGen sizes offline's one query from the expected rate: overstating it only
    lengthens the run, understating it ends the run before its minimum duration. The probe understates
    it when the machine was busier while probing than while running (measured: another process's
    work ending between the two), so such a run is repeated, sized from the rate it measured."""
    offline = scenario == "offline"
    qps = 2e3 * batch / _probe_ms(runner, samples, batch) if offline else None
    runs: list[dict] = []
    for _ in range(1 + OFFLINE_RESIZES if offline else 1):
        settings = _settings(scenario, "PerformanceOnly", duration_s, min_queries, expected_ms, qps, None)
        summary, parsed = _one_run(sut, samples, settings)
        runs.append({"valid": parsed["valid"], "unmet": parsed["unmet"]} | ({"target_qps": qps} if qps else {}))
        if parsed["valid"] or parsed["unmet"] != ["min duration not satisfied"] or not parsed["offline"]:
            break
        qps = 2 * parsed["offline"]
    return summary, parsed, runs


def _cannot_meet(runner: Any, artifact: Any, samples: np.ndarray, expected_ms: float,
                 latency_ms: float) -> ScenarioResult:
    """One sample alone takes longer than the budget: no rate can meet it, so no LoadGen run is spent."""
    return ScenarioResult(
        scenario="server", backend=runner.name, format=artifact.format, precision=artifact.precision,
        artifact=artifact.path,
        valid=False, headline=0.0, unit=HEADLINE["server"][1], latency_ms={"p50": expected_ms},
        samples=len(samples), latency_budget_ms=latency_ms,
        why_invalid=[f"one sample alone takes {expected_ms:.2f} ms (median of 5) > the {latency_ms:g} ms "
                     "budget: no rate meets it"])


def server_search(sut: _SUT, samples: np.ndarray, duration_s: float, min_queries: int, expected_ms: float,
                  latency_ms: float, max_batch: int) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The highest Poisson rate LoadGen judges VALID with p99 <= latency_ms: a bisection over
    SERVER_SEARCH_RUNS runs between 0 and the rate one in-flight query could at best sustain. The
    headline comes from the fastest VALID run (or the last run, INVALID, when none is). The search
    stops at a rate that keeps the runner under MIN_BUSY busy: below it, waiting in the queue is not
    what breaks the budget (and runs of 500 queries at a trickle would take hours)."""
    lo, hi = 0.0, 1e3 / expected_ms * max(1, max_batch) * 1.2
    qps = 1e3 / expected_ms * 0.5  # start at half of what batch 1 sustains
    best = last = None
    runs = []
    for _ in range(SERVER_SEARCH_RUNS):
        if last is not None and best is None and qps * expected_ms / 1e3 < MIN_BUSY:
            break
        settings = _settings("server", "PerformanceOnly", duration_s, min_queries, expected_ms, qps, latency_ms)
        last = _one_run(sut, samples, settings)
        parsed = last[1]
        runs.append({"target_qps": round(qps, 3), "valid": parsed["valid"], "unmet": parsed["unmet"],
                     "p99_ms": parsed["percentiles_ms"].get("p99")})
        if parsed["valid"]:
            lo, best = qps, last
        else:
            hi = qps
        qps = (lo + hi) / 2 if lo > 0 else qps / 2  # halve until one run is VALID, then bisect
    summary, parsed = best or last
    return summary, parsed, runs


def scenario_samples(card: Any, limit: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The sample set: the card's labelled val images when they are here (their labels score the
    accuracy mode), else seeded random inputs (no accuracy); and a line saying which."""
    from alexnet_deploy.data import load_labelled

    source = card.data.get("val")
    if source and Path(source).is_dir():
        labelled = load_labelled(source, card, limit=limit, seed=seed)
        if len(labelled.images):
            return labelled.images, labelled.labels, f"{len(labelled.images)} labelled images from {source}"
    noise = np.random.default_rng(seed).standard_normal((64, *card.input.shape), dtype=np.float32)
    return noise, None, "64 random inputs (the card's val data is not here: no accuracy run)"


def _probe_ms(runner: Any, samples: np.ndarray, batch: int = 1) -> float:
    """Median of a few calls at `batch`: LoadGen's expected latency (it sizes the run from it)."""
    import time

    times = []
    batch = min(batch, len(samples))
    for _ in range(5):
        t0 = time.perf_counter()
        runner.infer(samples[:batch])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))
