"""The benchmark harness: `benchmark()` returns a BenchmarkReport; `run_benchmark()` is the CLI's
entry point (prints the table, writes JSON, Markdown and the PNG plot).

    timing.py    warm-up, stability windows, percentiles, overhead, peak memory, CUDA events
    harness.py   what to run, the runner loop, the report dataclasses
    output.py    rich table, Markdown, plots
    roofline.py  the machine's peak rates and the model's floor time
    end_to_end.py  `--images`: from the image file to the logits, phases apart
    loadgen.py   `--scenario`: MLPerf LoadGen scenarios over a runner
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from alexnet_deploy.bench.harness import (  # noqa: F401
    DEFAULT_BATCH_SIZES,
    MIN_CALLS,
    BenchmarkReport,
    BenchResult,
    Skip,
    benchmark,
)
from alexnet_deploy.bench.output import print_table, render_markdown, write_outputs  # noqa: F401
from alexnet_deploy.bench.timing import LatencyStats, Timing, time_calls, windows_agree  # noqa: F401


def run_benchmark(export_dir: str | os.PathLike, backends: Sequence[str] | None = None,
                  batch_sizes: Sequence[int] | None = None, warmup_s: float = 1.0,
                  duration_s: float = 10.0, threads: int | None = None, device: str | None = None,
                  report: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
                  min_duration_s: float | None = None, min_calls: int = MIN_CALLS,
                  images: str | os.PathLike | None = None, scenarios: Sequence[str] = (),
                  latency_ms: float | None = None, concurrency: Sequence[int] = (1,),
                  streams: int | None = None) -> BenchmarkReport:
    """Benchmark EXPORT_DIR, print the table, write the report (default EXPORT_DIR/benchmark.json);
    CheckFailed (exit 1) if the report's self-check failed."""
    result = benchmark(export_dir, backends=backends, batch_sizes=batch_sizes or DEFAULT_BATCH_SIZES,
                       warmup_s=warmup_s, duration_s=duration_s, threads=threads, device=device,
                       min_duration_s=min_duration_s, min_calls=min_calls, images=images,
                       scenarios=scenarios, latency_ms=latency_ms, concurrency=concurrency, streams=streams)
    json_path = Path(report) if report else Path(result.export_dir) / "benchmark.json"
    paths = write_outputs(result, json_path, plot)
    print_table(result)
    print("wrote " + ", ".join(map(str, paths)))
    check_floors(result, json_path)
    return result


def check_floors(report: BenchmarkReport, json_path: str | os.PathLike) -> None:
    """The benchmark's self-check as the CLI's verdict: CheckFailed (exit 1) when a result beat its
    floor. The files are written first: they are still the measurements, and say which floor failed."""
    from alexnet_deploy.bench.roofline import FLOOR_WRONG
    from alexnet_deploy.errors import CheckFailed

    if not report.self_check.passed:
        raise CheckFailed(f"benchmark self-check failed: floor wrong (efficiency above {FLOOR_WRONG:.2f}) for "
                          f"{'; '.join(report.self_check.floor_wrong)} (report: {json_path})")
