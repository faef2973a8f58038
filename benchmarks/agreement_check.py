"""Trust check for the benchmark harness: on the same fp32 ONNX, thread count, batch size and fp32
inference, this harness's median latency must agree within 10% with

  - OpenVINO's own `benchmark_app` (installed with the openvino wheel), for the `openvino` runner, and
  - a bare `onnxruntime.InferenceSession.run` loop, for the `onnxruntime-cpu` runner.

Measurements alternate for --rounds rounds, every other round in reverse order (ABBA), so drift
from other processes hits both sides alike; each side's figure is the median of its round medians.
Writes benchmarks/results/agreement-<machine>-<date>.{json,md}; exit 0 when every pair agrees, 1 if not.

    .venv/bin/python benchmarks/agreement_check.py [--export-dir DIR] [--batch-sizes 1,8] [--threads N]
"""

from __future__ import annotations

import argparse
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
# The two sides
# ---------------------------------------------------------------------------------------------
def harness_median(runner_name: str, manifest: Manifest, artifact: Artifact, batch: int, threads: int,
                   args) -> tuple[float, dict]:
    """The harness's own path: the registered runner, timed by time_runner (as benchmark() does)."""
    from alexnet_deploy.runtimes import get_runner

    runner = get_runner(runner_name).from_artifact(manifest, artifact, threads=threads).activate()
    try:
        inputs = make_inputs(batch, manifest.card.input.shape)
        runner.infer(inputs[0])
        timing, _ = time_runner(runner, inputs, {"warmup_s": args.warmup_s, "duration_s": args.duration_s})
        facts = {"stable": timing.stable, "calls": len(timing.samples_ms)}
        if precision := reported_precision(runner):
            facts["inference_precision"] = precision
        return timing.stats.p50, facts
    finally:
        runner.deactivate()


def benchmark_app_median(model: Path, batch: int, shape: list[int], threads: int, args) -> tuple[float, dict]:
    """OpenVINO's benchmark_app, synchronous, one stream and request, fp32 inference, our threads."""
    app = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if app is None:
        raise UserError("benchmark_app not found: it comes with the openvino wheel (pip install openvino)")
    cmd = [app, "-m", str(model), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nireq", "1",
           "-api", "sync", "-nthreads", str(threads), "-infer_precision", "f32",
           "-shape", "[" + ",".join(map(str, [batch, *shape])) + "]", "-t", str(max(1, round(args.duration_s)))]  # whole seconds only
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    median = re.search(r"Median:\s+([\d.]+)\s*ms", out)
    if proc.returncode != 0 or not median:
        raise RuntimeError(f"benchmark_app failed (exit {proc.returncode}): {out[-2000:]}")
    facts = {"command": " ".join(cmd[1:])}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT"):
        m = re.search(rf"{key}:\s+(.+)", out)
        if m:
            facts[key] = precision_name(m.group(1).strip())
    return float(median.group(1)), facts


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


def compare(name: str, batch: int, harness: list, reference: list, tolerance: float) -> dict:
    h = statistics.median(m for m, _ in harness)
    r = statistics.median(m for m, _ in reference)
    diff = abs(h - r) / r
    return {"pair": name, "batch_size": batch, "harness_ms": round(h, 4), "reference_ms": round(r, 4),
            "difference": round(diff, 4), "agree": diff <= tolerance,
            "harness_rounds_ms": [round(m, 4) for m, _ in harness],
            "reference_rounds_ms": [round(m, 4) for m, _ in reference],
            "harness_facts": harness[-1][1], "reference_facts": reference[-1][1]}


def run(args) -> dict:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = args.threads or default_threads()
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        export_dir = args.export_dir or fresh_export(Path(tmp), max(batch_sizes))
        manifest = Manifest.read(export_dir)
        artifact = pick_onnx_fp32(manifest)
        model, shape = manifest.path_of(artifact), list(manifest.card.input.shape)
        checks = []
        for batch in batch_sizes:
            measure = {
                "ov": lambda b=batch: harness_median("openvino", manifest, artifact, b, threads, args),
                "app": lambda b=batch: benchmark_app_median(model, b, shape, threads, args),
                "ort": lambda b=batch: harness_median("onnxruntime-cpu", manifest, artifact, b, threads, args),
                "bare": lambda b=batch: bare_ort_median(model, b, shape, threads, args),
            }
            sides: dict[str, list] = {k: [] for k in measure}
            for rnd in range(args.rounds):
                print(f"batch {batch}, round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
                # ABBA order: every other round reversed, so a trend in the machine's load
                # favours neither side
                for key in (measure if rnd % 2 == 0 else reversed(measure)):
                    sides[key].append(measure[key]())
            checks.append(compare("openvino: harness vs benchmark_app", batch, sides["ov"], sides["app"],
                                  args.tolerance))
            checks.append(compare("onnxruntime-cpu: harness vs bare InferenceSession.run loop", batch,
                                  sides["ort"], sides["bare"], args.tolerance))
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"passed": all(c["agree"] for c in checks), "tolerance": args.tolerance, "threads": threads,
            "model": {"artifact": artifact.path, "input": shape, "precision": "fp32"},
            "settings": {"warmup_s": args.warmup_s, "duration_s": args.duration_s, "rounds": args.rounds},
            "machine": machine, "versions": library_versions(), "notes": args.note, "checks": checks}


def render(report: dict) -> str:
    m = report["machine"]
    rows = [[c["pair"], c["batch_size"], f"{c['harness_ms']:.3f}", f"{c['reference_ms']:.3f}",
             f"{c['difference']:.1%}", "yes" if c["agree"] else "NO",
             c["harness_facts"].get("inference_precision", "f32 (ORT CPU)"),
             c["reference_facts"].get("INFERENCE_PRECISION_HINT", "f32 (ORT CPU)")] for c in report["checks"]]
    lines = [
        "# Benchmark harness agreement check", "",
        f"- Result: **{'PASS' if report['passed'] else 'FAIL'}** (tolerance {report['tolerance']:.0%} on the median)",
        f"- Machine: {m['cpu']}, {m['cores_physical']} physical cores, ISA {', '.join(m['isa'])}",
        f"- Load average at start / end: {m.get('load_avg_start')} / {m.get('load_avg_end')}",
        f"- Threads: {report['threads']}; model {report['model']['artifact']} input {report['model']['input']}, fp32",
        f"- Per measurement: warm-up {report['settings']['warmup_s']} s, {report['settings']['duration_s']} s "
        f"timed; {report['settings']['rounds']} alternating rounds (ABBA order), median of round medians",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
        *(f"> {n}" for n in report["notes"]), "",
        markdown_table(["pair", "batch", "harness p50 ms", "reference p50 ms", "difference", "agree",
                        "harness precision", "reference precision"], rows),
        "benchmark_app, e.g. batch 1: `" + report["checks"][0]["reference_facts"]["command"] + "`", "",
    ]
    return "\n".join(lines)


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
