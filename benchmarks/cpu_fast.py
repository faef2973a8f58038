"""Issue 8: the fastest CPU artifact per precision, side by side with torch eager fp32 in one run.

Exports demo weights at 224 px (onnx fp32 + symmetric int8 QDQ, OpenVINO fp32 IR + NNCF int8 IR
when nncf is installed, AOTInductor, TorchScript), waits for a quiet machine (1-minute load average
below --max-load, polled every 30 s for at most --wait-min minutes), then times every fp32 / bf16 /
int8 candidate at batch 1 and 32 with the benchmark harness, roofline measured in the same run.

Writes benchmarks/results/cpu-fast-<machine>-<date>.{json,md}.

    .venv/bin/python benchmarks/cpu_fast.py [--work-dir DIR [--reuse-export]] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from alexnet_deploy.bench import benchmark  # noqa: E402
from alexnet_deploy.machine import machine_slug  # noqa: E402
from alexnet_deploy.report import markdown_table, write_report  # noqa: E402

FORMATS = ["onnx", "openvino", "aoti", "torchscript"]
PRECISIONS = ("fp32", "bf16", "int8")
BATCHES = (1, 32)
# The goals (set on a 2-core AMD EPYC; this script checks them on the machine it runs on).
GOALS = {"int8_b1_ms": 4.5, "int8_b32_ms_per_image": 1.8, "fp32_floor_factor": 1.25,
         "int8_min_agreement": 0.98}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="[default: short demo training at 224 px]")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--reuse-export", action="store_true", help="Time WORK_DIR/export as it is.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=4.0)
    p.add_argument("--max-load", type=float, default=1.3, help="Wait for a 1-minute load below this.")
    p.add_argument("--wait-min", type=float, default=25.0, help="Longest wait for it, minutes.")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def wait_for_quiet(max_load: float, wait_min: float) -> dict:
    started = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if load < max_load or waited >= wait_min * 60:
            return {"load_1min": round(load, 2), "waited_s": round(waited), "quiet": load < max_load,
                    "max_load": max_load}
        print(f"load {load:.2f} >= {max_load}: waiting ({waited / 60:.1f} of {wait_min} min)",
              file=sys.stderr, flush=True)
        time.sleep(30)


def export(args, work: Path) -> Path:
    from alexnet_deploy.exporters import export_all

    out = work / "export"
    if args.reuse_export:
        return out
    from suite import demo_weights

    weights = args.weights or demo_weights(work, 224)
    export_all(str(weights), out, formats=FORMATS, max_batch=max(BATCHES), force=True)
    return out


def summarise(report) -> list[dict]:
    """One row per candidate: batch 1 ms, batch 32 ms per image, ratios to eager, efficiencies."""
    rows: dict[tuple, dict] = {}
    for r in report.results:
        row = rows.setdefault((r.backend, r.artifact, r.precision), {
            "runner": r.backend, "artifact": r.artifact, "format": r.format, "precision": r.precision,
            "computes_in": computes_in(r)})
        b = r.batch_size
        row[f"b{b}_ms"] = r.latency_ms.p50
        row[f"b{b}_ms_per_image"] = r.latency_ms.p50 / b
        row[f"b{b}_floor_ms"] = r.floor_ms
        row[f"b{b}_efficiency"] = r.efficiency
        row[f"b{b}_floor_basis"] = r.floor_basis
        row[f"b{b}_stable"] = r.stable
    base = rows.get(("torch-eager", "weights.safetensors", "fp32"))
    for row in rows.values():
        for b in BATCHES:
            if base and f"b{b}_ms" in row:
                row[f"b{b}_ratio_to_eager"] = row[f"b{b}_ms"] / base[f"b{b}_ms"]
    return sorted(rows.values(), key=lambda r: (PRECISIONS.index(r["precision"]), r.get("b1_ms", 1e9)))


def computes_in(r) -> str | None:
    """OpenVINO reports its float hint; an int8 graph computes its quantized layers in int8."""
    if r.precision == "int8" and r.inference_precision:
        return f"int8 ({r.inference_precision} between)"
    return r.inference_precision


def best(rows: list[dict], precision: str, key: str) -> dict | None:
    mine = [r for r in rows if r["precision"] == precision and key in r]
    return min(mine, key=lambda r: r[key]) if mine else None


def goals(rows: list[dict], manifest) -> list[dict]:
    out = []
    b1, b32 = best(rows, "int8", "b1_ms"), best(rows, "int8", "b32_ms_per_image")
    if b1 and b32:
        out.append({"goal": f"int8 batch 1 <= {GOALS['int8_b1_ms']} ms", "best": f"{b1['b1_ms']:.2f} ms "
                    f"({b1['runner']} {b1['artifact']})", "met": b1["b1_ms"] <= GOALS["int8_b1_ms"],
                    "limit": limit_text(b1, 1)})
        out.append({"goal": f"int8 batch 32 <= {GOALS['int8_b32_ms_per_image']} ms/image",
                    "best": f"{b32['b32_ms_per_image']:.2f} ms/image ({b32['runner']} {b32['artifact']})",
                    "met": b32["b32_ms_per_image"] <= GOALS["int8_b32_ms_per_image"],
                    "limit": limit_text(b32, 32)})
    agreements = {a.path: a.extra.get("heldout_top1_agreement") for a in manifest.artifacts
                  if a.precision == "int8"}
    worst = min((v for v in agreements.values() if v is not None), default=None)
    out.append({"goal": f"int8 top-1 agreement >= {GOALS['int8_min_agreement']:.0%} (held-out calibration "
                        "images, these demo weights)", "best": ", ".join(f"{k} {v:.1%}" for k, v in agreements.items()),
                "met": worst is not None and worst >= GOALS["int8_min_agreement"],
                "limit": "tests/test_recommend.py checks every int8 runner on a trained 64 px model's "
                         "labelled val images; `alexnet-deploy validate` proves it per export"})
    for b in BATCHES:
        f = best(rows, "fp32", f"b{b}_ms")
        if f:
            factor = 1 / f[f"b{b}_efficiency"]
            out.append({"goal": f"fp32 batch {b} within {GOALS['fp32_floor_factor']}x of the roofline floor",
                        "best": f"{f[f'b{b}_ms']:.2f} ms = {factor:.2f}x the floor ({f['runner']} {f['artifact']})",
                        "met": factor <= GOALS["fp32_floor_factor"], "limit": limit_text(f, b)})
    bf = best(rows, "bf16", "b1_ms")
    out.append({"goal": "bf16 where the CPU has it, validated with its limits",
                "best": f"{bf['runner']} {bf['artifact']}: {bf['b1_ms']:.2f} ms batch 1" if bf else "none ran",
                "met": bf is not None, "limit": "export's check and validate use tolerances.py's bf16 limits"})
    return out


def limit_text(row: dict, b: int) -> str:
    eff = row[f"b{b}_efficiency"]
    basis = row[f"b{b}_floor_basis"]
    return f"{eff:.0%} of the floor ({basis})"


def render(report, rows: list[dict], goal_rows: list[dict], wait: dict) -> str:
    m, roof = report.machine, report.roofline
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    table = [[r["runner"], r["artifact"], r["precision"], r["computes_in"] or "-",
              fmt(r.get("b1_ms")), fmt(r.get("b32_ms")), fmt(r.get("b32_ms_per_image")),
              fmt(r.get("b1_ratio_to_eager")), fmt(r.get("b32_ratio_to_eager")),
              fmt(r.get("b1_efficiency"), ".0%"), fmt(r.get("b32_efficiency"), ".0%"),
              fmt(r.get("b1_floor_ms")), fmt(r.get("b32_floor_ms"))] for r in rows]
    lines = [
        "# Fastest CPU artifact per precision (issue 8)", "",
        f"- Machine: {m['cpu']}, {m['cores_logical']} logical cores, ISA: {', '.join(m.get('isa') or [])}; "
        f"LLC {m.get('llc_mb')} MB",
        f"- Threads {report.settings['threads']}; batch sizes {report.settings['batch_sizes']}; warm-up "
        f"{report.settings['warmup_s']} s; timed windows capped at {report.settings['duration_s']} s",
        f"- Load before timing: {wait['load_1min']} after waiting {wait['waited_s']} s "
        f"({'quiet' if wait['quiet'] else 'NOT quiet: the wait limit passed, measured anyway'}); load "
        f"average at start / end of the run {m.get('load_avg_start')} / {m.get('load_avg_end')}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        "- Weights: demo weights (short demo training) at 224 px; dense timings do not depend on the values",
        "", "## Results (median ms; ratio = candidate / torch eager fp32 in this run; efficiency = floor / median)",
        "", markdown_table(["runner", "artifact", "precision", "computes in", "b1 ms", "b32 ms",
                            "b32 ms/image", "b1 vs eager", "b32 vs eager", "b1 eff.", "b32 eff.",
                            "b1 floor ms", "b32 floor ms"], table),
        "## Roofline (measured in this run)", "",
        markdown_table(["measure", "value"], [[k, f"{v:,.1f}"] for k, v in roof.items()
                                              if isinstance(v, (int, float)) and k != "threads"]),
        f"{roof['formula']}", "",
        "Reading the efficiencies: compute floors are the ISA's peak at the measured core clock, memory "
        "floors read what the caches cannot hold at the best DRAM rate measured; a result above 105% fails "
        "the benchmark's self-check ('floor wrong'). The goals are judged in absolute milliseconds as the "
        "issue states them.",
        "",
        "## Goals", "", markdown_table(["goal", "best here", "met", "what limits it"],
                                       [[g["goal"], g["best"], "met" if g["met"] else "NOT met", g["limit"]]
                                        for g in goal_rows]),
        "## What was tried and what did not win", "", *EXPLORATION, "",
    ]
    return "\n".join(lines)


# Exploration runs (rough: 3 s timings while other jobs loaded the 2 cores to a load average of
# about 4), kept here because they decided what the product ships.
EXPLORATION = [
    "- int8: OpenVINO on the symmetric QDQ ONNX ran 5.9 ms (batch 1) / 1.6 ms per image (batch 32); "
    "ONNX Runtime on the same file 13.2 / 4.7 (its S8S8 QDQ kernels stay well behind OpenVINO's "
    "VNNI/AMX int8 path; turning thread spinning off made it slower: 14.8 / 6.0). NNCF's int8 IR "
    "(openvino/alexnet.int8.xml) ran 4.9-5.7 / 1.45-1.53, 7-10% ahead of the QDQ file in every "
    "paired run, so export writes it when nncf is installed. Asking OpenVINO for bf16 in the "
    "non-quantized rest of the int8 graph did not help (6.4 / 1.6).",
    "- int8 accuracy: with MinMax calibration the asymmetric QDQ model (the previous export) agreed "
    "with fp32 on 38/40 demo val images of the trained 64 px test model and the symmetric one on "
    "39/40 (near-tie logits, margins down to 0.003); symmetric with 99.99th-percentile ranges agreed "
    "on 40/40 under both runtimes (in two separate calibrations), as did NNCF's model; 99.999th "
    "percentile ranges 38/40. These are near-tie decisions of a tiny model, so the differences are "
    "a few images: export uses 99.99th-percentile ranges, and its post-export int8 check now feeds "
    "two held-out calibration images instead of Gaussian noise (noise, clipped by ranges calibrated "
    "on real images, flipped near-tie decisions in some test sessions).",
    "- fp32: OpenVINO IR with the LATENCY hint 32.6 / 9.4, without a hint 32.0 / 9.7, with CPU "
    "pinning 59 / 9.9 (pinning hurts on a shared machine); ONNX Runtime 40 / 9.9 (ORT_ENABLE_ALL, "
    "which includes the NCHWc layout transform, is already its Python default; no spinning: 47 / 15). "
    "AOTInductor as exported 207 / 15.5, with freezing 144 / 11.8, freezing + channels_last "
    "140 / 11.9; torch eager 228 / 19.1, channels_last 168 / 15.7. Torch's OpenMP runtime pays a "
    "barrier per operator, and a preempted thread on a loaded 2-core machine stalls every one of "
    "them (a ReLU on 190k values took 7 ms); OpenVINO's and ONNX Runtime's fused graphs have far "
    "fewer sync points. AOTI freezing was left out of the exporter: it does not close that gap and "
    "the C++ consumers load the package as it is.",
    "- bf16: OpenVINO with INFERENCE_PRECISION_HINT=bf16 on the fp32 IR 15.8 / 2.3 (AMX-BF16), "
    "the `openvino-bf16` runner.",
]


def run(args, work: Path) -> Path:
    from alexnet_deploy.manifest import Manifest

    export_dir = export(args, work)
    wait = wait_for_quiet(args.max_load, args.wait_min)
    report = benchmark(export_dir, batch_sizes=list(BATCHES), warmup_s=args.warmup_s,
                       duration_s=args.duration_s, threads=args.threads, device="cpu",
                       only=lambda c: c.artifact.precision in PRECISIONS and c.runner != "torch-export")
    rows = summarise(report)
    goal_rows = goals(rows, Manifest.read(export_dir))
    stem = f"cpu-fast-{machine_slug(report.machine)}-{date.today().isoformat()}"
    data = {"wait": wait, "goals": goal_rows, "summary": rows, "exploration": EXPLORATION,
            "benchmark": report.to_dict()}
    json_path, md_path = write_report(args.results_dir / f"{stem}.json", data,
                                      render(report, rows, goal_rows, wait))
    print(md_path.read_text())
    return json_path


def main(argv=None) -> int:
    from suite import run_in_work_dir

    return run_in_work_dir(run, parse_args(argv), "alexnet-cpu-fast-")


if __name__ == "__main__":
    sys.exit(main())
