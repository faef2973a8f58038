"""The benchmark report as a rich table, Markdown and PNG plots (the JSON is the dataclasses)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from alexnet_deploy.bench.end_to_end import EndToEnd
from alexnet_deploy.bench.harness import BenchmarkReport, BenchResult
from alexnet_deploy.bench.loadgen import ScenarioResult
from alexnet_deploy.report import markdown_table

HEADERS = ("backend", "format", "precision", "batch", "in flight", "p50 ms", "p99 ms", "p99.9 ms", "cv", "calls",
           "img/s", "wall img/s", "stable", "load s", "first ms", "peak RSS MB (+runner)", "floor ms", "efficiency")
NOISY_MARK = "!"
SCENARIO_HEADERS = ("scenario", "backend", "format", "precision", "result", "metric", "p50 ms", "p99 ms",
                    "top-1", "LoadGen")
E2E_HEADERS = ("backend", "format", "precision", "images", "MP", "decode ms", "preprocess ms", "infer ms",
               "total p50 ms", "total p99 ms", "img/s", "inference share")


NOISY_NOTE = (f"{NOISY_MARK} cv above 1 %: latencies spread (trtexec warns at the same line); on a shared "
              "machine compare runs side by side, or raise --min-duration-s")
RECOMMENDED_MARK = "*"
RECOMMENDED_NOTE = (f"{RECOMMENDED_MARK} recommended: the fastest checked runner and artifact for its precision "
                    "on the machine `alexnet-deploy recommend` ran on (DIR/recommendation.json)")


def _row(r: BenchResult) -> list:
    own = r.peak_rss_mb - r.rss_before_load_mb
    backend = f"{r.backend} {RECOMMENDED_MARK}" if r.recommended else r.backend
    lat = r.latency_ms
    cv = f"{lat.cv:.1%}{' ' + NOISY_MARK if lat.noisy else ''}"
    flight = f"{r.concurrency}{f' ({r.streams} streams)' if r.streams else ''}{' best' if r.best_concurrency else ''}"
    wall = "" if r.wall_throughput_ips is None else f"{r.wall_throughput_ips:.1f}"
    stable = "n/a" if r.stable is None else "yes" if r.stable else "NO"
    return [backend, r.format, r.precision, r.batch_size, flight, f"{lat.p50:.3f}", f"{lat.p99:.3f}",
            f"{lat.p99_9:.3f}", cv, lat.count, f"{r.throughput_ips:.1f}", wall, stable, f"{r.load_s:.2f}",
            f"{r.first_inference_ms:.1f}", f"{r.peak_rss_mb:.0f} (+{own:.0f})", f"{r.floor_ms:.3f}",
            f"{r.efficiency:.1%}" + (" floor wrong" if r.floor_wrong else "")]


def _e2e_row(r: EndToEnd) -> list:
    return [r.backend, r.format, r.precision, r.images, f"{r.megapixels:.2f}", f"{r.decode_ms.p50:.3f}",
            f"{r.preprocess_ms.p50:.3f}", f"{r.infer_ms.p50:.3f}", f"{r.total_ms.p50:.3f}",
            f"{r.total_ms.p99:.3f}", f"{r.throughput_ips:.1f}", f"{r.infer_share:.0%}"]


def _scenario_row(r: ScenarioResult) -> list:
    verdict = "VALID" if r.valid else "INVALID: " + "; ".join(r.why_invalid or ["see its summary"])
    top1 = "" if r.accuracy_top1 is None else f"{r.accuracy_top1:.1%}"
    budget = f" (p99 <= {r.latency_budget_ms:g} ms)" if r.latency_budget_ms else ""
    return [r.scenario, r.backend, r.format, r.precision, f"{r.headline:.3f}", r.unit + budget,
            f"{r.latency_ms.get('p50', float('nan')):.3f}", f"{r.latency_ms.get('p99', float('nan')):.3f}",
            top1, verdict]


def print_table(report: BenchmarkReport) -> None:
    from rich.markup import escape
    from rich.table import Table

    from alexnet_deploy.console import make_console

    table = Table(title=f"benchmark: {report.machine['cpu']}, {report.settings['threads']} threads")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("backend", "format", "precision") else "right")
    for r in report.results:
        table.add_row(*(escape(str(v)) for v in _row(r)))
    console = make_console()
    console.print(table)
    if any(r.recommended for r in report.results):
        console.print(escape(RECOMMENDED_NOTE), highlight=False)
    if any(r.latency_ms.noisy for r in report.results):
        console.print(escape(NOISY_NOTE), highlight=False)
    if report.end_to_end:
        e2e = Table(title=f"from image files ({report.settings.get('images')}), one per call; median ms")
        for h in E2E_HEADERS:
            e2e.add_column(h, justify="left" if h in ("backend", "format", "precision") else "right")
        for r in report.end_to_end:
            e2e.add_row(*(escape(str(v)) for v in _e2e_row(r)))
        console.print(e2e)
    if report.scenarios:
        sc = Table(title=f"MLPerf LoadGen scenarios ({report.settings.get('scenario_samples')})")
        for h in SCENARIO_HEADERS:
            sc.add_column(h)
        for r in report.scenarios:
            sc.add_row(*(escape(str(v)) for v in _scenario_row(r)))
        console.print(sc)
    for s in report.skipped:
        batch = f" batch {s.batch_size}" if s.batch_size else ""
        console.print(f"[yellow]skipped[/] {escape(f'{s.backend} ({s.format}, {s.precision}){batch}: {s.reason}')}",
                      highlight=False)


def render_markdown(report: BenchmarkReport, plot_name: str | None = None) -> str:
    m, roof, s = report.machine, report.roofline, report.settings
    isa = ", ".join(m.get("isa") or []) or "none detected"
    lines = [
        "# Benchmark report", "", _self_check_line(report), "",
        f"- Export: `{report.export_dir}`; created {report.created}",
        f"- Machine: {m['cpu']}, {m['cores_physical']} physical / {m['cores_logical']} logical cores, "
        f"{m['memory_gb']} GB RAM, ISA: {isa}; GPU: {m.get('gpu') or 'none'}",
        f"- Load average at start / end: {m.get('load_avg_start')} / {m.get('load_avg_end')}",
        f"- Threads: {s['threads']}; batch sizes {s['batch_sizes']}; warm-up {s['warmup_s']} s; "
        f"timed cap {s['duration_s']} s per runner and batch size, at least {s.get('min_duration_s', 0)} s "
        f"and {s.get('min_calls', 1)} calls",
        f"- Percentiles: {report.method.get('percentiles', 'numpy.percentile')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        f"- Harness overhead: {report.harness_overhead_us:.2f} µs per call (not subtracted)",
        f"- Peak memory: {report.memory_method}; it includes the process's baseline and the input "
        "buffers (both in the JSON)", "",
    ]
    lines += [*(f"> {n}" for n in report.notes), ""] if report.notes else []
    lines += ["## Roofline (ISA peaks from the CPU's features and clock; rates and bandwidth measured in this run)", "",
              markdown_table(["measure", "value"], _roofline_rows(roof)),
              f"Floor and efficiency: {roof['formula']}. Model: {roof['model_macs'] / 1e9:.3f} G "
              f"multiply-adds and {roof['model_params'] / 1e6:.2f} M parameters per "
              f"{roof['model_input']} px image. {roof.get('int8_note', '')}", "",
              "## Results", "", markdown_table(HEADERS, [_row(r) for r in report.results])]
    lines += _bounds_section(report)
    if any(r.recommended for r in report.results):
        lines += [RECOMMENDED_NOTE, ""]
    if any(r.latency_ms.noisy for r in report.results):
        lines += [NOISY_NOTE, ""]
    cuda = [r for r in report.results if r.compute_ms is not None]
    if cuda:
        lines += ["## CUDA phases (median ms, CUDA events)", "", markdown_table(
            ["backend", "format", "precision", "batch", "h2d", "compute", "d2h", "CUDA graph"],
            [[r.backend, r.format, r.precision, r.batch_size, f"{r.h2d_ms:.3f}", f"{r.compute_ms:.3f}",
              f"{r.d2h_ms:.3f}", r.cuda_graph] for r in cuda])]
    if report.end_to_end:
        lines += [f"## From image files to logits (`{report.settings.get('images')}`, one image per call)", "",
                  "Medians per phase; total's percentiles over whole calls. The batch timings above start "
                  "from a ready float32 array: the rest of an application's time is here.", "",
                  markdown_table(E2E_HEADERS, [_e2e_row(r) for r in report.end_to_end])]
    if report.scenarios:
        lines += ["## MLPerf LoadGen scenarios", "", f"Sample set: {report.settings.get('scenario_samples')}. "
                  "Each result is LoadGen's own verdict; its summary log is in the JSON (`scenarios[].summary`).",
                  "", markdown_table(SCENARIO_HEADERS, [_scenario_row(r) for r in report.scenarios])]
    if report.skipped:
        lines += ["## Skipped", "", markdown_table(
            ["backend", "format", "precision", "batch", "reason"],
            [[k.backend, k.format, k.precision, k.batch_size or "all", k.reason] for k in report.skipped])]
    lines += ["## Method", "", *(f"- {k}: {v}" for k, v in report.method.items()), ""]
    if plot_name:
        lines += [f"![latency and throughput]({plot_name})", ""]
    return "\n".join(lines)


def _self_check_line(report: BenchmarkReport) -> str:
    from alexnet_deploy.bench.roofline import FLOOR_WRONG

    check = report.self_check
    if check.passed:
        return f"**Self-check passed**: no result beat its floor (every efficiency <= {FLOOR_WRONG:.2f})."
    return (f"**Self-check FAILED**: floor wrong (efficiency above {FLOOR_WRONG:.2f}) for "
            f"{'; '.join(check.floor_wrong)}. A floor that is beaten is a bug in the floor; the timings "
            "below are still the measurements.")


def _bounds_section(report: BenchmarkReport) -> list[str]:
    """One row per (device, precision, batch size, requests in flight) measured: each layer group's
    compute and memory terms, which one bounds it, and the floor; with the machine's load."""
    rows, seen = [], set()
    for r in sorted(report.results, key=lambda r: (r.device, r.precision, r.batch_size, r.concurrency)):
        key = (r.device, r.precision, r.batch_size, r.concurrency)
        if key in seen or not r.floor_terms:
            continue
        seen.add(key)
        terms = r.floor_terms.values()
        rows.append([r.device, r.precision, r.batch_size, r.concurrency,
                     *(x for t in terms for x in (f"{t.compute_ms:.3f}", f"{t.memory_ms:.3f}", t.bound)),
                     f"{r.floor_ms:.3f}"])
    if not rows:
        return []
    groups = next(r.floor_terms for r in report.results if r.floor_terms)
    headers = ["device", "precision", "batch", "in flight",
               *(f"{g} {x}" for g in groups for x in ("compute ms", "memory ms", "bound")), "floor ms"]
    m = report.machine
    return ["## What bounds each layer group", "",
            f"Machine load (1 / 5 / 15 min load average) at start / end: {m.get('load_avg_start')} / "
            f"{m.get('load_avg_end')}. Compute: 2 x multiply-adds x batch / the peak; memory: the group's weight "
            "bytes, those that may stay cached read at the cache's rate and the rest at DRAM's (with several "
            "requests in flight, one read may serve them all: each batch's share); the larger bounds the "
            "group, and the floor is their sum over the groups.", "",
            markdown_table(headers, rows)]


def _rate_row(scope: str, key: str, values: dict) -> list[str]:
    """A read rate the floor takes, with what it is the best of."""
    where = "DRAM" if key == "read_gbps" else "cache-resident"
    size = values.get(key.replace("gbps", "bytes"))
    parts = []
    if f"{key}_all_threads" in values:
        parts.append(f"all threads {values[f'{key}_all_threads']:,.1f}, {values.get('read_scale_threads', 1)} x "
                     f"one thread {values[f'{key}_one_thread']:,.1f}")
    runs = (values.get("read_rates_runs") or {}).get(key)
    if runs:
        parts.append("before / after the runners " + " / ".join(f"{v:,.1f}" for v in runs if v is not None))
    label = f"{scope} {key} ({where}, over {size / 2**20:,.0f} MiB)" if size else f"{scope} {key} ({where})"
    return [label, f"{values[key]:,.1f} GB/s" + (f" (best of: {'; '.join(parts)})" if parts else "")]


def _roofline_rows(roof: dict) -> list[list[str]]:
    from alexnet_deploy.bench.roofline import READ_KEYS

    rows = []
    for scope, values in (("cpu", roof), ("cuda", roof.get("cuda") or {})):
        for k, v in values.items():
            if k.startswith(("gflops", "gops")) and isinstance(v, (int, float)):
                unit = "GOP/s" if k.startswith("gops") else "GFLOP/s"
                rows.append([f"{scope} {k} (measured matmul: achievable)", f"{v:,.1f} {unit}"])
        rows += [_rate_row(scope, k, values) for k in READ_KEYS if values.get(k)]
        if values.get("cache_bytes"):
            llc = f"; last level {values['llc_bytes'] / 2**20:,.1f} MiB" if values.get("llc_bytes") else ""
            rows.append([f"{scope} cache_bytes (weights that may stay cached between calls)",
                         f"{values['cache_bytes'] / 2**20:,.1f} MiB{llc}"])
    if roof.get("clock_ghz"):
        measured = roof.get("clock_measured") or {}
        note = f", {measured['fallback_reason']}" if measured.get("fallback_reason") else ""
        rows.append(["cpu clock (the ISA peaks')", f"{roof['clock_ghz']} GHz ({roof.get('clock_source')}); "
                     f"stated {roof.get('clock_stated_ghz')} GHz{note}"])
    for p, peak in (roof.get("isa_peak") or {}).items():
        unit = "GOP/s" if p == "int8" else "GFLOP/s"
        rows.append([f"cpu isa_peak {p} ({peak['unit']}: {peak['ops_per_cycle']} ops/cycle x {peak['cores']} cores "
                     f"x {peak['clock_ghz']} GHz, {roof.get('clock_source')})", f"{peak['gops']:,.1f} {unit}"])
    return rows


def plot(report: BenchmarkReport, path: str | os.PathLike) -> Path:
    """Two panels: p50 (solid) and p99 (dashed) latency, and throughput, against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    from alexnet_deploy.files import atomic_path

    series: dict[str, list[BenchResult]] = defaultdict(list)
    for r in report.results:
        series[r.label].append(r)
    fig, (lat, tput) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (label, rs) in enumerate(sorted(series.items())):
        rs.sort(key=lambda r: r.batch_size)
        b = [r.batch_size for r in rs]
        color = f"C{i % 10}"  # more than ten series: markers differ instead
        marker = "osD^v"[i // 10 % 5]
        lat.plot(b, [r.latency_ms.p50 for r in rs], marker + "-", color=color, label=f"{label} p50")
        lat.plot(b, [r.latency_ms.p99 for r in rs], "x--", color=color, label=f"{label} p99")
        tput.plot(b, [r.throughput_ips for r in rs], marker + "-", color=color, label=label)
    lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency (ms)",
            title="latency: p50 solid, p99 dashed")
    tput.set(xscale="log", xlabel="batch size", ylabel="images / s", title="throughput")
    batches = sorted({r.batch_size for r in report.results})
    for ax in (lat, tput):
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    # plain numbers on the log latency axis: every decade, and 2x / 5x within it
    lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lat.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    tput.legend(fontsize=7, loc="best")
    fig.suptitle(f"{report.machine['cpu']} — {report.settings['threads']} threads", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_outputs(report: BenchmarkReport, json_path: str | os.PathLike,
                  plot_path: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """JSON, Markdown beside it, PNG (default beside it too); returns the three paths."""
    from alexnet_deploy.report import write_report

    json_path = Path(json_path)
    plot_path = Path(plot_path) if plot_path else json_path.with_suffix(".png")
    plot(report, plot_path)
    rel = os.path.relpath(plot_path, json_path.parent)
    j, md = write_report(json_path, report.to_dict(), render_markdown(report, rel))
    return j, md, plot_path
