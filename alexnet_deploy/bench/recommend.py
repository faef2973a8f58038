"""`alexnet-deploy recommend DIR` (and `export --target cpu`, the CLI running export then this):
time every checked candidate (runner x artifact) of an export on this machine and record the
fastest per precision in the manifest's `recommended` section.

A candidate counts only if it passed the smoke check *with that runner* (the one export ran, or the
same check, checks.smoke_check, run here for runners export did not use, e.g. OpenVINO on the ONNX
file or `openvino-bf16` on the fp32 IR). Candidates are then timed with the benchmark harness at
batch 1 and batch 32 (or the export's max batch when smaller), beside torch eager fp32 from the
same run.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from alexnet_deploy.checks import Eager
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Manifest

log = logging.getLogger(__name__)

TARGETS = ("cpu",)
PRECISIONS = ("fp32", "bf16", "int8")
BATCH_SIZES = (1, 32)
# Brief on purpose: a choice between runtimes several times apart, not a published figure
# (`alexnet-deploy benchmark` and benchmarks/ measure properly).
WARMUP_S, DURATION_S, MIN_DURATION_S = 0.3, 1.5, 0.3
BASELINE = "torch-eager"


def recommend(manifest: Manifest, eager: Eager, target: str = "cpu", threads: int | None = None,
              warmup_s: float = WARMUP_S, duration_s: float = DURATION_S,
              latency_ms: float | None = None) -> dict[str, Any]:
    """Check and time the candidates of `manifest` (read from `manifest.root`) for `target`
    against `eager` (the export's weights); returns the `recommended` section (also stored on the
    manifest; the caller writes it). With `latency_ms`, the section's `budget` answers "what do I
    ship for this p99": see budget_pick."""
    from alexnet_deploy.bench import benchmark
    from alexnet_deploy.runtimes import runners_for

    check_target(target)
    if latency_ms is not None and not latency_ms > 0:
        raise UserError(f"--latency-ms must be > 0, got {latency_ms:g}")
    choices = [c for c in runners_for(manifest) if c.available and c.artifact.precision in PRECISIONS
               and c.runner_cls.device == target]
    checks = {_key(c.runner, c.artifact.path, c.artifact.precision): _check(manifest, c, eager)
              for c in choices}
    passed = {k for k, v in checks.items() if not v.get("failures")}
    cap = min((c.artifact.batch.max for c in choices if c.artifact.format != "weights"),
              default=max(BATCH_SIZES))
    sizes = sorted({min(b, cap) for b in BATCH_SIZES})
    report = benchmark(manifest.root, batch_sizes=sizes, warmup_s=warmup_s, duration_s=duration_s,
                       min_duration_s=min(MIN_DURATION_S, duration_s), threads=threads, device=target,
                       only=lambda c: _key(c.runner, c.artifact.path, c.artifact.precision) in passed)
    section = summarise(report, checks, sizes, target)
    if latency_ms is not None:
        section["budget"] = budget_pick(report.results, checks, latency_ms)
    manifest.recommended = section
    return section


def recommend_export(export_dir: str | os.PathLike, target: str = "cpu", threads: int | None = None,
                     warmup_s: float = WARMUP_S, duration_s: float = DURATION_S,
                     calib_data: str | os.PathLike | None = None, calib_images: int = 256,
                     show: bool = False, latency_ms: float | None = None) -> dict[str, Any]:
    """Recommend for an export folder (just exported, or copied to another machine): the checks
    compare with eager on the export's own copy of the weights (int8 on held-out images of
    `calib_data`, default the card's val data); the manifest is rewritten in place. `show`: say
    what it does on stderr and print the picks."""
    from alexnet_deploy.calibration import resolve_calib_data
    from alexnet_deploy.checks import reference_model
    from alexnet_deploy.files import check_output_file

    check_target(target)
    manifest = Manifest.read(export_dir)
    check_output_file(Path(manifest.root) / "manifest.json", "manifest",
                      hint="recommend rewrites it: copy the export folder somewhere writable")
    eager = Eager(model=reference_model(manifest), card=manifest.card,
                  calib_data=resolve_calib_data(manifest.card, calib_data), calib_images=calib_images)
    log.info(f"timing the {target} candidates of {manifest.root} ...")
    section = recommend(manifest, eager, target, threads, warmup_s, duration_s, latency_ms)
    manifest.write(manifest.root)
    if show:
        print_recommended(section)
    return section


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise UserError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")


def _key(runner: str, path: str, precision: str) -> str:
    return f"{runner}|{path}|{precision}"


def _check(manifest: Manifest, choice, eager: Eager) -> dict[str, Any]:
    """The export's own smoke check when it used this runner on this file as stored, else the
    same check (checks.smoke_check) run now; "failures" empty means passed."""
    from alexnet_deploy.checks import smoke_check

    if choice.artifact.format == "weights":  # the reference itself
        return {"status": "ok", "runner": choice.runner, "reference": True, "failures": []}
    done = choice.artifact.extra.get("check", {})
    if done.get("runner") == choice.runner and done.get("status") == "ok" \
            and choice.artifact.extra.get("stored_precision") is None:
        return {**done, "failures": []}
    result = smoke_check(manifest, choice.artifact, choice.runner_cls, eager)
    return {**result.record(), "failures": result.failures}


def summarise(report, checks: dict[str, dict], sizes: list[int], target: str) -> dict[str, Any]:
    """The recommended section: per precision the candidate with the smallest geometric mean of
    its p50 ratios to torch eager fp32 over the batch sizes (so batch 1 and batch 32 weigh alike)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in report.results:
        row = rows.setdefault(_key(r.backend, r.artifact, r.precision), {
            "runner": r.backend, "format": r.format, "precision": r.precision, "artifact": r.artifact,
            "inference_precision": r.inference_precision, "p50_ms": {}, "efficiency": {}})
        row["p50_ms"][str(r.batch_size)] = round(r.latency_ms.p50, 3)
        row["efficiency"][str(r.batch_size)] = round(r.efficiency, 3)
    base = next((v for v in rows.values() if v["runner"] == BASELINE), None)
    for row in rows.values():
        if base:
            row["ratio_to_torch_eager_fp32"] = {b: round(ms / base["p50_ms"][b], 3)
                                                for b, ms in row["p50_ms"].items() if b in base["p50_ms"]}
        row["check"] = _brief(checks.get(_key(row["runner"], row["artifact"], row["precision"]), {}))
    complete = [v for v in rows.values() if len(v["p50_ms"]) == len(sizes)]
    picks, missing = {}, {}
    for p in PRECISIONS:
        mine = [v for v in complete if v["precision"] == p]
        if mine:
            picks[p] = min(mine, key=lambda v: _score(v, base))
        else:
            missing[p] = _why_missing(p, checks, report)
    failed = [{"candidate": k.replace("|", " "), "failures": v["failures"]}
              for k, v in checks.items() if v.get("failures")]
    return {"target": target, "machine": {k: report.machine.get(k) for k in ("cpu", "cores_logical", "isa")},
            "threads": report.settings["threads"], "batch_sizes": sizes,
            "load_avg": report.machine.get("load_avg_start"), "created": report.created,
            "method": f"p50 over {report.settings['min_duration_s']}..{report.settings['duration_s']} s "
                      f"(at least {report.settings['min_calls']} calls) per batch size after "
                      f"{report.settings['warmup_s']} s warm-up; pick = smallest geometric mean of "
                      "p50 / torch eager fp32 p50 over the batch sizes",
            "baseline": base, "picks": picks, "missing": missing, "failed_checks": failed,
            "candidates": sorted(rows.values(), key=lambda v: (v["precision"], _score(v, base)))}


def budget_pick(results: list, checks: dict[str, dict], latency_ms: float) -> dict[str, Any]:
    """Among the timed candidates (each passed its check), at any timed batch size, the one with
    the most images per second whose p99 stays within `latency_ms`; every other candidate is a
    runner-up with why it lost (over the budget at every batch size, or slower), and every candidate
    that failed its check is listed with its failures."""
    best: dict[str, Any] = {}  # per candidate: its fastest row within budget, else its lowest p99
    for r in results:
        if r.concurrency != 1:
            continue
        key = _key(r.backend, r.artifact, r.precision)
        row = {"runner": r.backend, "artifact": r.artifact, "precision": r.precision, "batch": r.batch_size,
               "p99_ms": round(r.latency_ms.p99, 3), "images_per_s": round(r.wall_throughput_ips or r.throughput_ips, 1),
               "within": r.latency_ms.p99 <= latency_ms}
        old = best.get(key)
        if old is None or (row["within"], row["images_per_s"] if row["within"] else -row["p99_ms"]) > \
                (old["within"], old["images_per_s"] if old["within"] else -old["p99_ms"]):
            best[key] = row
    within = sorted((v for v in best.values() if v["within"]), key=lambda v: -v["images_per_s"])
    pick = within[0] if within else None
    runners_up = []
    for v in sorted(best.values(), key=lambda v: (not v["within"], -v["images_per_s"])):
        if v is pick:
            continue
        why = (f"{v['images_per_s']} images/s at batch {v['batch']}, {v['images_per_s'] / pick['images_per_s']:.0%} "
               "of the pick's" if v["within"] else
               f"p99 {v['p99_ms']} ms > {latency_ms:g} ms even at batch {v['batch']}")
        runners_up.append({**{k: v[k] for k in ("runner", "artifact", "precision", "batch", "p99_ms",
                                                "images_per_s")}, "lost_because": why})
    runners_up += [{"runner": k.split("|")[0], "artifact": k.split("|")[1], "precision": k.split("|")[2],
                    "lost_because": "failed its check: " + "; ".join(c["failures"])}
                   for k, c in checks.items() if c.get("failures")]
    return {"latency_ms": latency_ms, "pick": pick and {k: pick[k] for k in pick if k != "within"},
            "none_because": None if pick else f"no candidate's p99 is within {latency_ms:g} ms at any timed "
                                              "batch size", "runners_up": runners_up}


def _score(row: dict[str, Any], base: dict[str, Any] | None) -> float:
    ratios = row.get("ratio_to_torch_eager_fp32") if base else None
    values = list((ratios or row["p50_ms"]).values())
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


def _brief(check: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "runner", "top1_agreement", "max_abs", "cosine", "limits", "reference")
    return {k: check[k] for k in keep if k in check}


def _why_missing(precision: str, checks: dict[str, dict], report) -> str:
    tried = [k for k in checks if k.endswith("|" + precision)]
    if not tried:
        skips = [f"{s.backend}: {s.reason}" for s in report.skipped if s.precision == precision]
        return "no runner here executes a " + precision + " artifact" + (f" ({'; '.join(skips)})" if skips else "")
    return "no candidate passed its check and was timed: " + "; ".join(
        f"{k.split('|')[0]} {k.split('|')[1]}: {'; '.join(checks[k].get('failures') or ['not timed'])}"
        for k in tried)


def print_recommended(section: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from alexnet_deploy.console import make_console

    sizes = [str(b) for b in section["batch_sizes"]]
    table = Table(title=f"recommended for this {section['target']} ({section['machine'].get('cpu')}, "
                        f"{section['threads']} threads)")
    for col in ("precision", "runner", "artifact", *(f"p50 ms b{b}" for b in sizes),
                *(f"vs eager b{b}" for b in sizes)):
        table.add_column(col, justify="left" if col in ("precision", "runner", "artifact") else "right")
    base = section.get("baseline")
    rows = [("fp32 (torch eager, baseline)", base)] if base else []
    rows += list(section["picks"].items())
    for label, v in rows:
        ratios = v.get("ratio_to_torch_eager_fp32", {})
        table.add_row(escape(label), escape(v["runner"]), escape(v["artifact"]),
                      *(f"{v['p50_ms'].get(b, float('nan')):.2f}" for b in sizes),
                      *(f"{ratios[b]:.2f}x" if b in ratios else "-" for b in sizes))
    console = make_console()
    console.print(table)
    for p, why in section["missing"].items():
        console.print(escape(f"no {p} recommendation: {why}"), highlight=False)
    if "budget" in section:
        _print_budget(console, section["budget"])


def _print_budget(console, budget: dict[str, Any]) -> None:
    from rich.markup import escape

    pick, limit = budget["pick"], budget["latency_ms"]
    if pick is None:
        console.print(escape(f"for p99 <= {limit:g} ms: nothing to ship ({budget['none_because']})"), highlight=False)
    else:
        console.print(escape(f"for p99 <= {limit:g} ms ship {pick['runner']} {pick['artifact']} ({pick['precision']}) "
                             f"at batch {pick['batch']}: {pick['images_per_s']} images/s, p99 {pick['p99_ms']} ms"),
                      highlight=False)
    for r in budget["runners_up"]:
        console.print(escape(f"  {r['runner']} {r['artifact']} ({r['precision']}): {r['lost_because']}"),
                      highlight=False)
