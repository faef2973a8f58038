"""Issue 18 item 7: do the weight-compressed OpenVINO IRs (`export --weight-compression`: int8w,
int4w, int4w-a8) beat the OpenVINO fp32 IR, `openvino-bf16` and NNCF's int8 IR at batch 1?

Exports a 224 px, 1000-class AlexNet with random weights (seed 0: dense timings do not depend on the
values) to OpenVINO with --weight-compression, then, in one process:
  1. benchmark() (the library's harness; roofline, floors and efficiencies measured in the same run)
     of every IR under every runner that accepts it (`openvino`, `openvino-bf16`), batch 1 and 32;
  2. ABBA rounds: every candidate timed again by the harness's time_runner at each --round-batch-sizes,
     all runners loaded at once and the order reversed every other round, so load that drifts
     over the run (the machine is shared) favours none of them; the figure is the median of the
     round medians, with the 1-minute load average per round.
Writes benchmarks/results/weight-compression-<machine>-<date>.{json,md}.

    .venv/bin/python benchmarks/weight_compression.py [--work-dir DIR [--reuse-export]] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from alexnet_deploy.bench import benchmark  # noqa: E402
from alexnet_deploy.bench.harness import make_inputs, reported_precision, time_runner  # noqa: E402
from alexnet_deploy.machine import machine_slug  # noqa: E402
from alexnet_deploy.report import markdown_table, write_report  # noqa: E402

BATCHES = (1, 32)
RUNNERS = ("openvino", "openvino-bf16")
GOAL_B1_MS = 1.5  # the goal: batch-1 p50 of the best validated artifact, 224 px, this machine
# Order of the table: the baselines first, then the new artifacts
PRECISION_ORDER = ("fp32", "bf16", "int8", "int8w", "int4w", "int4w-a8")


# Exploration (rough: OpenVINO's per-layer counters and plain timing loops, alternating rounds, while
# other jobs loaded the 2 cores to 3-7), kept because it decided what export writes.
EXPLORATION = [
    "- The three Linears, int4 vs NNCF's int8 IR (its static u8 x s8 kernels), by how many weights share a "
    "scale and how many activations OpenVINO quantizes per dynamic scale (DYNAMIC_QUANTIZATION_GROUP_SIZE): "
    "groups of 128 / 32 (NNCF's and OpenVINO's defaults) 1.12x the int8 time, 128 / 128 0.98x, 256 / 256 "
    "0.93x, 512 / 512 0.74x, per channel / 1024 0.72x. At batch 1 the int8 x int4 kernel is bound by its "
    "arithmetic (unpacking, and converting the int32 sums to float at every group boundary), not by the "
    "bytes it reads: so one scale per output channel, and 1024 activations per scale written into each "
    "IR's rt_info (runtime_options). A group of the whole row (UINT64_MAX) ran slower than 1024.",
    "- Top-1 agreement with the fp32 IR on the trained demo model's 1000 val images (64 px): every one of "
    "those variants 99.7-99.9 % (int4w, int4w-a8), INT4_ASYM no better than INT4_SYM; accuracy drop 0-0.2 "
    "points. On the untrained 1000-class weights of this benchmark, whose logits are near-ties, per-channel "
    "int4 keeps only ~10 % of the argmaxes (groups of 128: ~70 %; int8: 98 %): the held-out column above is "
    "that, not accuracy; validate on real images is the gate.",
    "- nncf.quantize cannot give weights 4 bits (its CPU hardware config refuses 4-bit quantizers) and "
    "compress_weights on NNCF's int8 model changes nothing (no float weight left): int4w-a8 is nncf.quantize "
    "with the Linears (MatMul) ignored, then compress_weights INT4 on them.",
    "- With float activations the convolutions run in f32 (their int8 weights are decompressed when the "
    "model is compiled) or bf16, which is why int8w / int4w do not win at batch 1 here.",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--reuse-export", action="store_true", help="Time WORK_DIR/export as it is.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=4.0, help="Cap of each benchmark() timing.")
    p.add_argument("--rounds", type=int, default=6, help="ABBA rounds (0: none).")
    p.add_argument("--round-s", type=float, default=1.5, help="Timed seconds per candidate per round.")
    p.add_argument("--round-batch-sizes", default="1", help="Comma-separated batch sizes of the rounds.")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--note", action="append", default=[], help="A line for the report (repeatable).")
    return p.parse_args(argv)


def export(args, work: Path) -> Path:
    import torch
    import torchvision

    import alexnet_deploy as ad

    out = work / "export"
    if not args.reuse_export:
        torch.manual_seed(0)
        ad.export(torchvision.models.alexnet(), out, formats=["openvino"], max_batch=max(BATCHES),
                  card={"num_classes": 1000, "input": {"crop": 224}}, weight_compression=True, force=True)
    return out


def is_candidate(choice) -> bool:
    return choice.artifact.format == "openvino"


def rounds(args, export_dir: Path) -> dict:
    """{batch: {(runner, artifact): [p50 per round]}} and the 1-minute load average per round."""
    from alexnet_deploy.bench.harness import plan_runs
    from alexnet_deploy.manifest import Manifest

    manifest = Manifest.read(export_dir)
    plan, _ = plan_runs(manifest, RUNNERS, "cpu", is_candidate)
    runners = {(c.runner, c.artifact.path): c.runner_cls.from_artifact(manifest, c.artifact, threads=args.threads)
               for c in plan}
    out: dict = {"load_1min": [], "p50_ms": {}}
    sizes = [int(b) for b in args.round_batch_sizes.split(",") if b]
    try:
        for r in runners.values():
            r.activate()
        for batch in sizes:
            inputs = make_inputs(batch, manifest.card.input.shape)
            found: dict = {key: [] for key in runners}
            for rnd in range(args.rounds):
                out["load_1min"].append(round(os.getloadavg()[0], 2))
                print(f"batch {batch}, round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
                for key in (list(runners) if rnd % 2 == 0 else list(reversed(runners))):
                    timing, _ = time_runner(runners[key], inputs, {"warmup_s": 0.2, "duration_s": args.round_s,
                                                                   "min_duration_s": args.round_s})
                    found[key].append(round(timing.stats.p50, 4))
            out["p50_ms"][batch] = found
        out["inference_precision"] = {key: reported_precision(r) for key, r in runners.items()}
    finally:
        for r in runners.values():
            r.deactivate()
    return out


def summarise(report, manifest, rounded: dict) -> list[dict]:
    """One row per (runner, artifact): benchmark()'s p50s, floors and efficiencies, the rounds'
    medians, and what the artifact holds."""
    arts = {a.path: a for a in manifest.artifacts}
    rows: dict[tuple, dict] = {}
    for r in report.results:
        art = arts[r.artifact]
        row = rows.setdefault((r.backend, r.artifact), {
            "runner": r.backend, "artifact": r.artifact, "precision": r.precision,
            "computes_in": art.extra.get("computed_in") or r.inference_precision,
            "bytes": art.bytes, "stored_weights": art.extra.get("stored_weights"),
            "heldout_top1_agreement": art.extra.get("heldout_top1_agreement")})
        row[f"b{r.batch_size}_ms"] = r.latency_ms.p50
        row[f"b{r.batch_size}_floor_ms"] = r.floor_ms
        row[f"b{r.batch_size}_efficiency"] = r.efficiency
        row[f"b{r.batch_size}_stable"] = r.stable
    for batch, found in rounded.get("p50_ms", {}).items():
        for key, values in found.items():
            if key in rows:
                rows[key][f"b{batch}_rounds_ms"] = values
                rows[key][f"b{batch}_rounds_median_ms"] = statistics.median(values)
    return sorted(rows.values(), key=lambda r: (PRECISION_ORDER.index(r["precision"]), r["runner"]))


def goal(rows: list[dict]) -> dict:
    """The issue's goal on the rounds' medians (else benchmark()'s p50) at batch 1."""
    key = "b1_rounds_median_ms" if any("b1_rounds_median_ms" in r for r in rows) else "b1_ms"
    best = min((r for r in rows if key in r), key=lambda r: r[key])
    return {"goal": f"batch-1 p50 <= {GOAL_B1_MS} ms at 224 px", "measure": key,
            "best": f"{best[key]:.2f} ms ({best['runner']} {best['artifact']}, {best['precision']})",
            "met": best[key] <= GOAL_B1_MS}


def render(args, report, rows: list[dict], rounded: dict, goal_row: dict) -> str:
    m, s = report.machine, report.settings
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    table = [[r["runner"], r["artifact"], r["precision"], r["computes_in"] or "-", f"{r['bytes'] / 1e6:.1f}",
              fmt(r.get("b1_rounds_median_ms")), fmt(r.get("b1_ms")), fmt(r.get("b32_ms")),
              fmt(r.get("b32_ms") and r["b32_ms"] / 32), fmt(r.get("b1_floor_ms")),
              fmt(r.get("b1_efficiency"), ".0%"), fmt(r.get("b32_efficiency"), ".0%"),
              fmt(r.get("heldout_top1_agreement"), ".1%")] for r in rows]
    load = rounded.get("load_1min") or []
    lines = [
        "# Weight-compressed OpenVINO IRs at batch 1 (issue 18, item 7)", "",
        f"- Machine: {m['cpu']}, {m['cores_logical']} logical cores, ISA: {', '.join(m.get('isa') or [])}; "
        f"LLC {m.get('llc_mb')} MB",
        f"- Threads {s['threads']}; benchmark(): batch sizes {s['batch_sizes']}, warm-up {s['warmup_s']} s, "
        f"timed windows capped at {s['duration_s']} s; rounds: {args.rounds} ABBA rounds of {args.round_s} s "
        f"per candidate at batch {args.round_batch_sizes}",
        f"- Load average (1, 5, 15 min) at start / end of benchmark(): {m.get('load_avg_start')} / "
        f"{m.get('load_avg_end')}; 1-minute load per round: {load}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        "- Model: torchvision AlexNet, random weights (seed 0), 224 px, 1000 classes; accuracy is not "
        "judged on these weights (see the tests: validate on the trained demo model)",
        *[f"- {n}" for n in args.note], "",
        "## Results (p50 ms; rounds = median of the ABBA rounds' p50; efficiency = floor / benchmark() p50)", "",
        markdown_table(["runner", "artifact", "precision", "computes in", "MB", "b1 rounds", "b1", "b32",
                        "b32 per image", "b1 floor", "b1 eff.", "b32 eff.", "held-out agreement"], table),
        "## Goal", "",
        markdown_table(["goal", "best here", "met"], [[goal_row["goal"], goal_row["best"],
                                                       "met" if goal_row["met"] else "NOT met"]]),
        "## Rounds (p50 ms per round, batch 1)", "",
        markdown_table(["runner", "artifact", *[f"r{i + 1}" for i in range(args.rounds)]],
                       [[r["runner"], r["artifact"], *r.get("b1_rounds_ms", [])] for r in rows]),
        "## What was tried", "", *EXPLORATION, "",
    ]
    return "\n".join(lines)


def run(args, work: Path) -> Path:
    from alexnet_deploy.manifest import Manifest

    export_dir = export(args, work)
    report = benchmark(export_dir, batch_sizes=list(BATCHES), backends=list(RUNNERS), warmup_s=args.warmup_s,
                       duration_s=args.duration_s, threads=args.threads, device="cpu", only=is_candidate)
    rounded = rounds(args, export_dir) if args.rounds else {}
    manifest = Manifest.read(export_dir)
    rows = summarise(report, manifest, rounded)
    goal_row = goal(rows)
    stem = f"weight-compression-{machine_slug(report.machine)}-{date.today().isoformat()}"
    rounded_json = {**rounded, "p50_ms": {str(b): {" ".join(k): v for k, v in found.items()}
                                          for b, found in rounded.get("p50_ms", {}).items()},
                    "inference_precision": {" ".join(k): v for k, v in rounded.get("inference_precision", {}).items()}}
    data = {"goal": goal_row, "summary": rows, "rounds": rounded_json, "notes": args.note, "exploration": EXPLORATION,
            "artifacts": [a.to_dict() for a in manifest.artifacts if a.format == "openvino"],
            "benchmark": report.to_dict()}
    json_path, md_path = write_report(args.results_dir / f"{stem}.json", data,
                                      render(args, report, rows, rounded, goal_row))
    print(md_path.read_text())
    return json_path


def main(argv=None) -> int:
    from suite import run_in_work_dir

    return run_in_work_dir(run, parse_args(argv), "alexnet-weight-compression-")


if __name__ == "__main__":
    sys.exit(main())
