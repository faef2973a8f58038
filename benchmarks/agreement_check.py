"""Trust check for the benchmark harness: on the same fp32 ONNX, thread count, batch size and fp32
inference, this harness must agree within 10% with

  - OpenVINO's own `benchmark_app` (installed with the openvino wheel), for the `openvino` runner:
      * median latency against `-hint none -nstreams 1 -api sync` (one stream, tuned by hand),
      * median latency against `-hint latency` (the plugin's own latency configuration),
      * wall-clock throughput with N requests in flight (`benchmark --concurrency N`, through
        Runner.in_flight) against `-hint throughput -api async`, N being the number of infer
        requests benchmark_app chooses; our sweep over N = 1, 2, 4 is reported beside it;
  - a bare `onnxruntime.InferenceSession.run` loop, for the `onnxruntime-cpu` runner (median latency).

benchmark_app refuses -nthreads together with a hint (a rule of its command line, not of OpenVINO),
so under a hint the thread count goes in through -load_config; -ip f32 keeps its input float32 like
ours (else it feeds u8 through an added Convert).

Measurements alternate for --rounds rounds, every other round in reverse order (ABBA), so drift
from other processes hits both sides alike; each side's figure is the median of its round figures.
Writes benchmarks/results/agreement-<machine>-<date>.{json,md}; exit 0 when every pair agrees, 1 if not.

    .venv/bin/python benchmarks/agreement_check.py [--export-dir DIR] [--batch-sizes 1,8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

from alexnet_deploy.bench.harness import (  # noqa: E402
    MIN_CALLS,
    make_inputs,
    precision_name,
    reported_precision,
    time_runner,
)
from alexnet_deploy.errors import UserError  # noqa: E402
from alexnet_deploy.machine import default_threads, library_versions, machine_info, machine_slug  # noqa: E402
from alexnet_deploy.manifest import Artifact, Manifest  # noqa: E402
from alexnet_deploy.report import markdown_table, write_report  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export-dir", type=Path, default=None,
                   help="An export folder with an fp32 ONNX [default: export fresh 224 px weights to a temp dir].")
    p.add_argument("--batch-sizes", default="1,8", help="Comma-separated [default: 1,8].")
    p.add_argument("--threads", type=int, default=None, help="[default: physical cores]")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=3.0, help="Timed seconds per measurement.")
    p.add_argument("--rounds", type=int, default=4, help="Alternating rounds per pair.")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--note", action="append", default=[], help="A line for the report (repeatable).")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The sides
# ---------------------------------------------------------------------------------------------
SWEEP = (1, 2, 4)  # the concurrencies our own sweep tries, for information beside the pair
MEDIAN = r"Median:\s+([\d.]+)\s*ms"  # benchmark_app's latency figure
FPS = r"Throughput:\s+([\d.]+)\s*FPS"  # its images per second: batch * iterations / wall time


def harness_median(runner_name: str, manifest: Manifest, artifact: Artifact, batch: int, threads: int,
                   args) -> tuple[float, dict]:
    """The harness's own path: the registered runner, timed by time_runner (as benchmark() does)."""
    from alexnet_deploy.runtimes import get_runner

    runner = get_runner(runner_name).from_artifact(manifest, artifact, threads=threads).activate()
    try:
        inputs = make_inputs(batch, manifest.card.input.shape)
        runner.infer(inputs[0])
        timing, _ = time_runner(runner, inputs, {"warmup_s": args.warmup_s, "duration_s": args.duration_s})
        # wall_ips: what benchmark() reports as concurrency 1's wall-clock throughput, the sweep's N = 1
        facts = {"stable": timing.stable, "calls": len(timing.samples_ms),
                 "wall_ips": batch * len(timing.samples_ms) / timing.timed_s}
        if precision := reported_precision(runner):
            facts["inference_precision"] = precision
        return timing.stats.p50, facts
    finally:
        runner.deactivate()


def harness_in_flight(manifest: Manifest, artifact: Artifact, batch: int, threads: int, counts: list[int],
                      args) -> dict[int, float]:
    """Images per wall-clock second with n requests in flight, for each n in `counts`: the path
    `benchmark --concurrency n` takes (Runner.in_flight, timed by time_in_flight), run for as long
    as benchmark_app's -t so both sides see the same stretch of the machine's load."""
    from alexnet_deploy.bench.timing import time_in_flight
    from alexnet_deploy.runtimes import get_runner

    runner = get_runner("openvino").from_artifact(manifest, artifact, threads=threads).activate()
    try:
        inputs = make_inputs(batch, manifest.card.input.shape)
        found = {}
        for n in counts:
            flight = runner.in_flight(n)
            try:
                timing = time_in_flight(flight, inputs, n, warmup_s=args.warmup_s,
                                        min_duration_s=app_seconds(args), min_calls=MIN_CALLS)
            finally:
                flight.close()
            found[n] = timing.throughput(batch)
        return found
    finally:
        runner.deactivate()


def app_seconds(args) -> int:
    return max(1, round(args.duration_s))  # benchmark_app's -t takes whole seconds only


def benchmark_app_cmd(model: Path, batch: int, shape: list[int], mode: list[str], args) -> list[str]:
    app = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if app is None:
        raise UserError("benchmark_app not found: it comes with the openvino wheel (pip install openvino)")
    # -layout names the batch axis, so "FPS" counts images rather than calls at batch > 1
    return [app, "-m", str(model), "-d", "CPU", *mode, "-infer_precision", "f32", "-ip", "f32",
            "-shape", "[" + ",".join(map(str, [batch, *shape])) + "]", "-layout", "[NCHW]",
            "-t", str(app_seconds(args))]


def run_benchmark_app(cmd: list[str], wanted: str) -> tuple[str, dict]:
    """benchmark_app's output and the settings it says it compiled with; `wanted` is a regex the
    output must hold (the figure the caller reads)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or not re.search(wanted, out):
        raise RuntimeError(f"benchmark_app failed (exit {proc.returncode}): {out[-2000:]}")
    facts = {"command": " ".join(cmd[1:])}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                "ENABLE_CPU_PINNING"):
        m = re.search(rf"{key}:\s+(.+)", out)
        if m:
            facts[key] = precision_name(m.group(1).strip())
    return out, facts


def benchmark_app_median(model: Path, batch: int, shape: list[int], threads: int, args) -> tuple[float, dict]:
    """OpenVINO's benchmark_app, synchronous, one stream and request, fp32 inference, our threads."""
    mode = ["-hint", "none", "-nstreams", "1", "-nireq", "1", "-api", "sync", "-nthreads", str(threads)]
    out, facts = run_benchmark_app(benchmark_app_cmd(model, batch, shape, mode, args), MEDIAN)
    return float(re.search(MEDIAN, out).group(1)), facts


def benchmark_app_latency_hint(model: Path, batch: int, shape: list[int], threads_config: Path,
                               args) -> tuple[float, dict]:
    """benchmark_app under -hint latency (synchronous, the plugin picks streams), our threads."""
    mode = ["-hint", "latency", "-api", "sync", "-load_config", str(threads_config)]
    out, facts = run_benchmark_app(benchmark_app_cmd(model, batch, shape, mode, args), MEDIAN)
    return float(re.search(MEDIAN, out).group(1)), facts


def benchmark_app_throughput(model: Path, batch: int, shape: list[int], threads_config: Path,
                             args) -> tuple[float, dict]:
    """benchmark_app under -hint throughput, asynchronous: images per second ("Throughput: X FPS",
    batch * iterations / wall time) and, in the facts, the number of infer requests it chose."""
    mode = ["-hint", "throughput", "-api", "async", "-load_config", str(threads_config)]
    out, facts = run_benchmark_app(benchmark_app_cmd(model, batch, shape, mode, args), FPS)
    facts["nireq"] = int(re.search(r"asynchronously, (\d+) inference requests", out).group(1))
    seen = re.search(r"Model batch size:\s+(\d+)", out)
    if not seen or int(seen.group(1)) != batch:  # else its FPS would not be images per second
        raise RuntimeError(f"benchmark_app saw batch size {seen and seen.group(1)}, not {batch}")
    return float(re.search(FPS, out).group(1)), facts


def threads_config(folder: Path, threads: int) -> Path:
    """A -load_config file carrying our thread count: benchmark_app takes -nthreads only with -hint none."""
    path = folder / "benchmark_app_threads.json"
    path.write_text(json.dumps({"CPU": {"INFERENCE_NUM_THREADS": str(threads)}}))
    return path


def bare_ort_median(model: Path, batch: int, shape: list[int], threads: int, args) -> tuple[float, dict]:
    """InferenceSession.run in a plain loop: same threads, same provider, same rotated inputs."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    inputs = make_inputs(batch, shape)
    i, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.warmup_s or i == 0:
        session.run(None, {name: inputs[i % len(inputs)]})
        i += 1
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < args.duration_s or len(samples) < 9:
        t0 = time.perf_counter()
        session.run(None, {name: inputs[i % len(inputs)]})
        samples.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return float(np.median(samples)), {"calls": len(samples), "intra_op_num_threads": threads}


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------
def fresh_export(out: Path, max_batch: int) -> Path:
    """A 224 px AlexNet with random weights exported to ONNX (the weights do not change the timing)."""
    import torch

    from alexnet_deploy.exporters import export_all
    from alexnet_deploy.models import ModelCard, build_model, save_weights

    torch.manual_seed(0)
    weights = save_weights(build_model("alexnet", 10), ModelCard(num_classes=10), out / "weights.safetensors")
    export_all(str(weights), out / "export", formats=["onnx"], max_batch=max_batch, force=True)
    return out / "export"


def pick_onnx_fp32(manifest: Manifest) -> Artifact:
    """The fp32 ONNX artifact, which both runners accept."""
    found = manifest.find("onnx", "fp32")
    if not found:
        raise UserError(f"{manifest.root} has no fp32 ONNX artifact: export with --formats onnx")
    return found[0]


LATENCY, THROUGHPUT = "p50 latency, ms", "throughput, images/s"


def compare(name: str, batch: int, metric: str, harness: list, reference: list, tolerance: float) -> dict:
    """One pair: each side's median over the rounds, the difference relative to the reference."""
    h = statistics.median(m for m, _ in harness)
    r = statistics.median(m for m, _ in reference)
    diff = abs(h - r) / r
    return {"pair": name, "batch_size": batch, "metric": metric, "harness": round(h, 4),
            "reference": round(r, 4), "difference": round(diff, 4), "agree": diff <= tolerance,
            "harness_rounds": [round(m, 4) for m, _ in harness],
            "reference_rounds": [round(m, 4) for m, _ in reference],
            "harness_facts": harness[-1][1], "reference_facts": reference[-1][1]}


def in_flight_counts(n_app: int) -> list[int]:
    """The concurrencies in_flight times: benchmark_app's N and our sweep's (N = 1 is the sync run)."""
    return sorted({n_app} | (set(SWEEP) - {1}))


def sweep(batch: int, sync: list, flights: list[dict[int, float]]) -> dict:
    """Our `--concurrency 1,2,4` sweep, for information: each N's median over the rounds (N = 1 is
    the synchronous run's wall-clock throughput, as benchmark() reports it) and the best N."""
    rounds = {1: [f["wall_ips"] for _, f in sync]} | {n: [f[n] for f in flights] for n in SWEEP if n > 1}
    medians = {n: round(statistics.median(v), 2) for n, v in rounds.items()}
    return {"batch_size": batch, "images_per_s": medians, "best_n": max(medians, key=medians.get)}


def measure_batch(batch: int, manifest: Manifest, artifact: Artifact, threads: int, config: Path,
                  args) -> tuple[list[dict], dict, list[float]]:
    """Every side at one batch size, in ABBA rounds: the pairs, our sweep, the 1-min load per round."""
    model, shape = manifest.path_of(artifact), list(manifest.card.input.shape)
    # The N benchmark_app picks under the throughput hint decides which in_flight(N) we time,
    # so ask it once before the rounds (its figure is not used; each round re-reads N)
    n_app = benchmark_app_throughput(model, batch, shape, config, args)[1]["nireq"]
    counts = in_flight_counts(n_app)
    measure = {
        "ov": lambda: harness_median("openvino", manifest, artifact, batch, threads, args),
        "app": lambda: benchmark_app_median(model, batch, shape, threads, args),
        "app_latency": lambda: benchmark_app_latency_hint(model, batch, shape, config, args),
        "ov_flight": lambda: (harness_in_flight(manifest, artifact, batch, threads, counts, args), {}),
        "app_throughput": lambda: benchmark_app_throughput(model, batch, shape, config, args),
        "ort": lambda: harness_median("onnxruntime-cpu", manifest, artifact, batch, threads, args),
        "bare": lambda: bare_ort_median(model, batch, shape, threads, args),
    }
    sides: dict[str, list] = {k: [] for k in measure}
    load = []
    for rnd in range(args.rounds):
        print(f"batch {batch}, round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        load.append(round(os.getloadavg()[0], 2))
        # ABBA order: every other round reversed, so a trend in the machine's load favours neither side
        for key in (measure if rnd % 2 == 0 else reversed(measure)):
            sides[key].append(measure[key]())
    flights = [by_n for by_n, _ in sides["ov_flight"]]
    return pairs(batch, sides, flights, n_app, args.tolerance), sweep(batch, sides["ov"], flights), load


def pairs(batch: int, sides: dict[str, list], flights: list[dict[int, float]], n_app: int,
          tolerance: float) -> list[dict]:
    """The four checks at one batch size from every side's round figures."""
    ours = [(by_n[n_app], {"concurrency": n_app, "runner": "openvino", "path": "Runner.in_flight + time_in_flight"})
            for by_n in flights]
    checks = [
        compare("openvino: harness vs benchmark_app -hint none -nstreams 1", batch, LATENCY,
                sides["ov"], sides["app"], tolerance),
        compare("openvino: harness vs benchmark_app -hint latency", batch, LATENCY,
                sides["ov"], sides["app_latency"], tolerance),
        compare(f"openvino: harness --concurrency {n_app} vs benchmark_app -hint throughput", batch, THROUGHPUT,
                ours, sides["app_throughput"], tolerance),
        compare("onnxruntime-cpu: harness vs bare InferenceSession.run loop", batch, LATENCY,
                sides["ort"], sides["bare"], tolerance),
    ]
    # benchmark_app chooses N anew each run: keep every round's, so a change shows
    checks[2]["reference_rounds_nireq"] = [f["nireq"] for _, f in sides["app_throughput"]]
    return checks


def run(args) -> dict:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or default_threads()
    machine = machine_info()
    checks, sweeps, load = [], [], {}
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        export_dir = args.export_dir or fresh_export(Path(tmp), max(batch_sizes))
        manifest = Manifest.read(export_dir)
        artifact = pick_onnx_fp32(manifest)
        config = threads_config(Path(tmp), threads)
        for batch in batch_sizes:
            found, swept, load[batch] = measure_batch(batch, manifest, artifact, threads, config, args)
            checks += found
            sweeps.append(swept)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["load_avg_1min_per_round"] = load
    return {"passed": all(c["agree"] for c in checks), "tolerance": args.tolerance, "threads": threads,
            "model": {"artifact": artifact.path, "input": list(manifest.card.input.shape), "precision": "fp32"},
            "settings": {"warmup_s": args.warmup_s, "duration_s": args.duration_s, "rounds": args.rounds},
            "machine": machine, "versions": library_versions(), "notes": args.note, "checks": checks,
            "concurrency_sweep": sweeps}


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmark harness agreement check", "",
        f"- Result: **{'PASS' if report['passed'] else 'FAIL'}** (tolerance {report['tolerance']:.0%} on each "
        "pair's median over the rounds)",
        f"- Machine: {m['cpu']}, {m['cores_physical']} physical cores, ISA {', '.join(m['isa'])}",
        f"- Load average at start / end: {m.get('load_avg_start')} / {m.get('load_avg_end')}; 1-min load at "
        "each round's start, by batch size: "
        + "; ".join(f"{b}: {v}" for b, v in m.get("load_avg_1min_per_round", {}).items()),
        f"- Threads: {report['threads']}; model {report['model']['artifact']} input {report['model']['input']}, fp32",
        f"- Per measurement: warm-up {report['settings']['warmup_s']} s, {report['settings']['duration_s']} s "
        f"timed; {report['settings']['rounds']} alternating rounds (ABBA order), median of the round figures",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
        *(f"> {n}" for n in report["notes"]), "",
        checks_table(report["checks"]), "",
        rounds_table(report["checks"]), "",
        sweep_table(report["concurrency_sweep"]), "",
        "benchmark_app commands, batch 1:", "",
        *sorted({f"- `{c['reference_facts']['command']}`" for c in report["checks"]
                 if c["batch_size"] == report["checks"][0]["batch_size"] and "command" in c["reference_facts"]}), "",
    ]
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    def settings(facts: dict) -> str:
        if "command" not in facts:
            return facts.get("inference_precision", "f32 (ORT CPU)")
        streams = f", {facts.get('NUM_STREAMS')} stream(s)"
        nireq = f", {facts['nireq']} requests" if "nireq" in facts else ""
        return f"{facts.get('INFERENCE_PRECISION_HINT')}, {facts.get('PERFORMANCE_HINT') or 'no hint'}{streams}{nireq}"

    rows = [[c["pair"], c["batch_size"], c["metric"], f"{c['harness']:.3f}", f"{c['reference']:.3f}",
             f"{c['difference']:.1%}", "yes" if c["agree"] else "NO",
             c["harness_facts"].get("inference_precision", c["harness_facts"].get("path", "f32 (ORT CPU)")),
             settings(c["reference_facts"])] for c in checks]
    return markdown_table(["pair", "batch", "metric", "harness", "reference", "difference", "agree",
                           "harness", "reference settings"], rows)


def rounds_table(checks: list[dict]) -> str:
    """Each round's harness / reference figure: on a shared machine the spread between rounds shows
    how far the medians can be trusted."""
    rows = [[c["pair"], c["batch_size"], *(f"{h:.4g} / {r:.4g}" for h, r in
                                          zip(c["harness_rounds"], c["reference_rounds"], strict=True))]
            for c in checks]
    count = max(len(c["harness_rounds"]) for c in checks)
    return ("Round by round (harness / reference, in the check's unit):\n\n"
            + markdown_table(["pair", "batch", *(f"round {i + 1}" for i in range(count))], rows))


def sweep_table(sweeps: list[dict]) -> str:
    counts = sorted({n for s in sweeps for n in s["images_per_s"]})
    rows = [[s["batch_size"], *(f"{s['images_per_s'][n]:.1f}" for n in counts), s["best_n"]] for s in sweeps]
    return ("Our `openvino` runner's concurrency sweep (images/s, for information; N = 1 is the synchronous "
            "run's wall-clock throughput):\n\n"
            + markdown_table(["batch", *(f"N = {n}" for n in counts), "best N"], rows))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = f"agreement-{machine_slug(report['machine'])}-{date.today().isoformat()}"
    json_path, md_path = write_report(args.results_dir / f"{stem}.json", report, render(report))
    print(render(report))
    print(f"wrote {json_path} and {md_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
