"""`alexnet-deploy recommend DIR` (and `export --target cpu`, the CLI running export then this): which
runner x artifact of an export to ship on this machine, written to its own file
(DIR/recommendation.json and .md, or --report), never into export's manifest.

1. The gate is validate's: every candidate (runner x artifact for the target's device) goes through
   `validate` on the card's labelled images (or --data), with its limits and the user's
   --max-accuracy-drop; only those that pass are timed.
2. The timing is the benchmark harness at batch 1 and batch 32 (or the export's max batch when
   smaller), beside torch eager fp32 from the same run: per precision, the fastest is picked.
3. --latency-ms answers "what do I ship for this p99": the candidate and batch size with the most
   images per second whose p99 stays within it; with --scenario, MLPerf LoadGen's verdict instead
   (server: the highest Poisson rate whose p99 stays within the budget). Every other candidate is
   listed with why it lost.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from alexnet_deploy.bench.picks import FILE
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Manifest

log = logging.getLogger(__name__)

TARGETS = ("cpu",)
PRECISIONS = ("fp32", "bf16", "int8", "int8w", "int4w", "int4w-a8")
# made only on request (export --weight-compression): missing from the picks only where the export has one
OPTIONAL = ("int8w", "int4w", "int4w-a8")
BATCH_SIZES = (1, 32)
GATE_IMAGES = 200  # validate's default
# Brief on purpose: a choice between runtimes several times apart, not a published figure
# (`alexnet-deploy benchmark` and benchmarks/ measure properly).
WARMUP_S, DURATION_S, MIN_DURATION_S = 0.3, 1.5, 0.3
BASELINE = "torch-eager"
# Which way each LoadGen scenario's headline is better (see bench/loadgen.HEADLINE)
HIGHER_IS_BETTER = {"single-stream": False, "multi-stream": False, "server": True, "offline": True}


def recommend(manifest: Manifest, target: str = "cpu", threads: int | None = None,
              warmup_s: float = WARMUP_S, duration_s: float = DURATION_S,
              latency_ms: float | None = None, max_accuracy_drop: float | None = None,
              scenario: str | None = None, data_dir: str | os.PathLike | None = None,
              images: int = GATE_IMAGES, backends: list[str] | None = None) -> dict[str, Any]:
    """Gate the candidates of `manifest` through validate, time those that pass, and return the
    recommendation (see the module's docstring); nothing is written. `backends`: only these runners
    are candidates (the runtimes a deployment can ship); None: every one that applies."""
    from alexnet_deploy.bench import benchmark
    from alexnet_deploy.runtimes import runners_for

    check_options(target, latency_ms, max_accuracy_drop, scenario)
    # runners_for: an unknown name in `backends` is one line naming the registered ones
    choices = [c for c in runners_for(manifest, backends) if c.available and c.artifact.precision in PRECISIONS
               and c.runner_cls.device == target]
    if backends and not choices:
        raise UserError(f"--backends {','.join(backends)}: none of them runs a {target} artifact of "
                        f"{manifest.root}; name others, or export a format they run")
    checks = gate(manifest, sorted({c.runner for c in choices}), max_accuracy_drop, data_dir, images)
    checks = {k: v for k, v in checks.items() if k in {_key(c.runner, c.artifact.path, c.artifact.precision)
                                                       for c in choices}}
    passed = {k for k, v in checks.items() if not v["failures"]}
    cap = min((c.artifact.batch.max for c in choices if c.artifact.format != "weights"),
              default=max(BATCH_SIZES))
    sizes = sorted({min(b, cap) for b in BATCH_SIZES})
    report = benchmark(manifest.root, batch_sizes=sizes, warmup_s=warmup_s, duration_s=duration_s,
                       min_duration_s=min(MIN_DURATION_S, duration_s), threads=threads, device=target,
                       scenarios=[scenario] if scenario else [], latency_ms=latency_ms if scenario else None,
                       only=lambda c: _key(c.runner, c.artifact.path, c.artifact.precision) in passed)
    section = summarise(report, checks, sizes, target, manifest)
    section["gate"] = {"check": "validate", "images": next(iter(checks.values()), {}).get("images"),
                       "max_accuracy_drop": max_accuracy_drop}
    if scenario:
        section["budget"] = scenario_pick(report.scenarios, checks, scenario, latency_ms)
    elif latency_ms is not None:
        section["budget"] = budget_pick(report.results, checks, latency_ms)
    return section


def check_options(target: str, latency_ms: float | None, max_accuracy_drop: float | None,
                  scenario: str | None) -> None:
    from alexnet_deploy.bench.loadgen import check_scenarios

    if target not in TARGETS:
        raise UserError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < 1:
        raise UserError(f"--max-accuracy-drop takes a fraction: 0.01 is one percentage point "
                        f"(got {max_accuracy_drop:g})")
    check_scenarios([scenario] if scenario else [], latency_ms)


def gate(manifest: Manifest, runners: list[str], max_accuracy_drop: float | None,
         data_dir: str | os.PathLike | None, images: int) -> dict[str, dict[str, Any]]:
    """validate's verdict per candidate key: what it measured, and its failures (empty: passed)."""
    from alexnet_deploy.validate import validate

    source = data_dir if data_dir is not None else manifest.card.data.get("val")
    if max_accuracy_drop is not None and (source is None or not Path(source).is_dir() or images < 1):
        raise UserError("--max-accuracy-drop needs labelled images and the card's val data is not here: "
                        "pass --data DIR (class folders, or an ImageFolder root with val/)")
    log.info(f"validating {len(runners)} runners' candidates before timing them")
    report = validate(manifest.root, data_dir=data_dir, images=images, backends=runners,
                      max_accuracy_drop=max_accuracy_drop)
    keep = ("status", "top1_agreement", "max_abs", "cosine", "accuracy_top1", "accuracy_drop",
            "computes_in", "limits", "images")
    return {_key(r.backend, r.artifact, r.precision): {"runner": r.backend, **{k: getattr(r, k) for k in keep},
                                                       "failures": list(r.failures) or
                                                       ([r.reason] if r.passed is False else [])}
            for r in report.results if r.passed is not None}


def recommend_export(export_dir: str | os.PathLike, target: str = "cpu", threads: int | None = None,
                     warmup_s: float = WARMUP_S, duration_s: float = DURATION_S, show: bool = False,
                     latency_ms: float | None = None, max_accuracy_drop: float | None = None,
                     scenario: str | None = None, data_dir: str | os.PathLike | None = None,
                     images: int = GATE_IMAGES, report: str | os.PathLike | None = None,
                     backends: list[str] | None = None) -> dict[str, Any]:
    """Recommend for an export folder (just exported, or copied to another machine) and write the
    recommendation to `report` (default DIR/recommendation.json, Markdown beside it). `show`: print
    the picks."""
    from alexnet_deploy.files import check_output_file
    from alexnet_deploy.report import write_report

    manifest = Manifest.read(export_dir)
    path = Path(report) if report is not None else Path(manifest.root) / FILE
    for p in (path, path.with_suffix(".md")):
        check_output_file(p, "--report" if report is not None else "report",
                          hint="choose another --report" if report is not None else "pass --report elsewhere")
    log.info(f"checking and timing the {target} candidates of {manifest.root} ...")
    section = recommend(manifest, target, threads, warmup_s, duration_s, latency_ms, max_accuracy_drop,
                        scenario, data_dir, images, backends)
    write_report(path, section, to_markdown(section))
    if show:
        print_recommended(section)
        print(f"recommendation: {path} and {path.with_suffix('.md')}")
    return section


def _key(runner: str, path: str, precision: str) -> str:
    return f"{runner}|{path}|{precision}"


def _who(key: str) -> dict[str, str]:
    runner, artifact, precision = key.split("|")
    return {"runner": runner, "artifact": artifact, "precision": precision}


def summarise(report, checks: dict[str, dict], sizes: list[int], target: str, manifest: Manifest) -> dict[str, Any]:
    """Per precision the candidate with the smallest geometric mean of its p50 ratios to torch eager
    fp32 over the batch sizes (so batch 1 and batch 32 weigh alike). Each row carries its
    artifact's sha256, so a reader can tell a recommendation made for other files."""
    shas = {a.path: a.sha256 for a in [manifest.weights_artifact(), *manifest.artifacts]}
    rows: dict[str, dict[str, Any]] = {}
    for r in report.results:
        if r.concurrency != 1:
            continue
        row = rows.setdefault(_key(r.backend, r.artifact, r.precision), {
            "runner": r.backend, "format": r.format, "precision": r.precision, "artifact": r.artifact,
            "sha256": shas.get(r.artifact, ""), "inference_precision": r.inference_precision,
            "p50_ms": {}, "efficiency": {}})
        row["p50_ms"][str(r.batch_size)] = round(r.latency_ms.p50, 3)
        row["efficiency"][str(r.batch_size)] = round(r.efficiency, 3)
    base = next((v for v in rows.values() if v["runner"] == BASELINE), None)
    for key, row in rows.items():
        if base:
            row["ratio_to_torch_eager_fp32"] = {b: round(ms / base["p50_ms"][b], 3)
                                                for b, ms in row["p50_ms"].items() if b in base["p50_ms"]}
        row["check"] = _brief(checks.get(key, {}))
    complete = [v for v in rows.values() if len(v["p50_ms"]) == len(sizes)]
    picks, missing = {}, {}
    for p in PRECISIONS:
        mine = [v for v in complete if v["precision"] == p]
        if mine:
            picks[p] = min(mine, key=lambda v: _score(v, base))
        elif p not in OPTIONAL or any(a.precision == p for a in manifest.artifacts):
            missing[p] = _why_missing(p, checks, report)
    failed = [{"candidate": k.replace("|", " "), "failures": v["failures"]}
              for k, v in checks.items() if v["failures"]]
    return {"export_dir": str(manifest.root), "target": target,
            "machine": {k: report.machine.get(k) for k in ("cpu", "cores_logical", "isa")},
            "threads": report.settings["threads"], "batch_sizes": sizes,
            "load_avg": report.machine.get("load_avg_start"), "created": report.created,
            "versions": report.versions,
            "method": f"validate's gate, then p50 over {report.settings['min_duration_s']}.."
                      f"{report.settings['duration_s']} s (at least {report.settings['min_calls']} calls) per "
                      f"batch size after {report.settings['warmup_s']} s warm-up; pick = smallest geometric mean "
                      "of p50 / torch eager fp32 p50 over the batch sizes",
            "baseline": base, "picks": picks, "missing": missing, "failed_checks": failed,
            "candidates": sorted(rows.values(), key=lambda v: (v["precision"], _score(v, base)))}


def _accuracy(check: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy_top1": check.get("accuracy_top1"), "accuracy_drop": check.get("accuracy_drop")}


def _failed_runners_up(checks: dict[str, dict]) -> list[dict[str, Any]]:
    return [{**_who(k), "lost_because": "failed validate's gate: " + "; ".join(c["failures"])}
            for k, c in checks.items() if c["failures"]]


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
        row = {**_who(key), "batch": r.batch_size, "p99_ms": round(r.latency_ms.p99, 3),
               "images_per_s": round(r.wall_throughput_ips or r.throughput_ips, 1),
               "within": r.latency_ms.p99 <= latency_ms, **_accuracy(checks.get(key, {}))}
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
        runners_up.append({**{k: v[k] for k in v if k != "within"}, "lost_because": why})
    return {"latency_ms": latency_ms, "scenario": None, "pick": pick and {k: pick[k] for k in pick if k != "within"},
            "none_because": None if pick else f"no candidate's p99 is within {latency_ms:g} ms at any timed "
                                              "batch size", "runners_up": runners_up + _failed_runners_up(checks)}


def scenario_pick(scenarios: list, checks: dict[str, dict], scenario: str,
                  latency_ms: float | None) -> dict[str, Any]:
    """Among the LoadGen runs of `scenario` (each on a candidate that passed the gate), the best
    VALID headline (server and offline: the most samples/s; single- and multi-stream: the lowest
    latency percentile); every other candidate with why it lost (INVALID and why, or its figure)."""
    higher = HIGHER_IS_BETTER[scenario]
    rows = []
    for s in scenarios:
        if s.scenario != scenario:
            continue
        key = _key(s.backend, s.artifact, s.precision)
        rows.append({**_who(key), "valid": s.valid, "headline": round(s.headline, 3), "unit": s.unit,
                     "p99_ms": s.latency_ms.get("p99"), "why_invalid": s.why_invalid,
                     **_accuracy(checks.get(key, {}))})
    valid = sorted((r for r in rows if r["valid"]), key=lambda r: -r["headline"] if higher else r["headline"])
    pick = valid[0] if valid else None
    runners_up = []
    for r in valid[1:]:
        runners_up.append({**r, "lost_because": f"{r['headline']} {r['unit']} against the pick's {pick['headline']}"})
    for r in rows:
        if not r["valid"]:
            runners_up.append({**r, "lost_because": "LoadGen INVALID: " + "; ".join(r["why_invalid"] or
                                                                                     ["see its summary"])})
    budget = f" with p99 <= {latency_ms:g} ms" if scenario == "server" else ""
    return {"latency_ms": latency_ms if scenario == "server" else None, "scenario": scenario, "pick": pick,
            "none_because": None if pick else f"no candidate ran the {scenario} scenario VALID{budget}",
            "runners_up": runners_up + _failed_runners_up(checks)}


def _score(row: dict[str, Any], base: dict[str, Any] | None) -> float:
    ratios = row.get("ratio_to_torch_eager_fp32") if base else None
    values = list((ratios or row["p50_ms"]).values())
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


def _brief(check: dict[str, Any]) -> dict[str, Any]:
    keep = ("status", "runner", "top1_agreement", "max_abs", "cosine", "accuracy_top1", "accuracy_drop",
            "computes_in", "limits")
    return {k: check[k] for k in keep if k in check}


def _why_missing(precision: str, checks: dict[str, dict], report) -> str:
    tried = [k for k in checks if k.endswith("|" + precision)]
    if not tried:
        skips = [f"{s.backend}: {s.reason}" for s in report.skipped if s.precision == precision]
        return "no runner here executes a " + precision + " artifact" + (f" ({'; '.join(skips)})" if skips else "")
    return "no candidate passed validate's gate and was timed: " + "; ".join(
        f"{k.split('|')[0]} {k.split('|')[1]}: {'; '.join(checks[k]['failures'] or ['not timed'])}"
        for k in tried)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def budget_line(budget: dict[str, Any]) -> str:
    pick, limit, scenario = budget["pick"], budget["latency_ms"], budget.get("scenario")
    ask = f"p99 <= {limit:g} ms" if limit is not None else f"the {scenario} scenario"
    if scenario == "server" and limit is not None:
        ask = f"p99 <= {limit:g} ms (LoadGen server)"
    if pick is None:
        return f"for {ask}: nothing to ship ({budget['none_because']})"
    acc = "" if pick.get("accuracy_top1") is None else f", top-1 {pick['accuracy_top1']:.1%}"
    if scenario:
        return (f"for {ask} ship {pick['runner']} {pick['artifact']} ({pick['precision']}): "
                f"{pick['headline']} {pick['unit']} (LoadGen VALID){acc}")
    return (f"for {ask} ship {pick['runner']} {pick['artifact']} ({pick['precision']}) at batch {pick['batch']}: "
            f"{pick['images_per_s']} images/s, p99 {pick['p99_ms']} ms{acc}")


def runner_up_lines(budget: dict[str, Any]) -> list[str]:
    return [f"  {r['runner']} {r['artifact']} ({r['precision']}): {r['lost_because']}" for r in budget["runners_up"]]


def to_markdown(section: dict[str, Any]) -> str:
    from alexnet_deploy.report import markdown_table

    sizes = [str(b) for b in section["batch_sizes"]]
    lines = [f"# Recommendation for {section['export_dir']}", "",
             f"- Machine: {section['machine'].get('cpu')}, {section['threads']} threads, load average at "
             f"start {section.get('load_avg')}", f"- Method: {section['method']}",
             f"- Gate: validate on {section['gate'].get('images')} labelled images"
             + (f", max accuracy drop {section['gate']['max_accuracy_drop']:g}"
                if section["gate"].get("max_accuracy_drop") is not None else ""), ""]
    if "budget" in section:
        lines += [f"**{budget_line(section['budget'])}**", ""]
        lines += [f"- {line.strip()}" for line in runner_up_lines(section["budget"])] + [""]
    rows = [[p, v["runner"], v["artifact"], *(v["p50_ms"].get(b) for b in sizes),
             _pct(v["check"].get("accuracy_top1"))] for p, v in section["picks"].items()]
    lines.append(markdown_table(["precision", "runner", "artifact", *(f"p50 ms b{b}" for b in sizes), "top-1"], rows))
    lines += [f"- no {p} pick: {why}" for p, why in section["missing"].items()]
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.1%}"


def print_recommended(section: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from alexnet_deploy.console import make_console

    sizes = [str(b) for b in section["batch_sizes"]]
    table = Table(title=f"recommended for this {section['target']} ({section['machine'].get('cpu')}, "
                        f"{section['threads']} threads)")
    for col in ("precision", "runner", "artifact", *(f"p50 ms b{b}" for b in sizes),
                *(f"vs eager b{b}" for b in sizes), "top-1"):
        table.add_column(col, justify="left" if col in ("precision", "runner", "artifact") else "right")
    base = section.get("baseline")
    rows = [("fp32 (torch eager, baseline)", base)] if base else []
    rows += list(section["picks"].items())
    for label, v in rows:
        ratios = v.get("ratio_to_torch_eager_fp32", {})
        table.add_row(escape(label), escape(v["runner"]), escape(v["artifact"]),
                      *(f"{v['p50_ms'].get(b, float('nan')):.2f}" for b in sizes),
                      *(f"{ratios[b]:.2f}x" if b in ratios else "-" for b in sizes),
                      _pct(v["check"].get("accuracy_top1")))
    console = make_console()
    console.print(table)
    for p, why in section["missing"].items():
        console.print(escape(f"no {p} recommendation: {why}"), highlight=False)
    if "budget" in section:
        for line in [budget_line(section["budget"]), *runner_up_lines(section["budget"])]:
            console.print(escape(line), highlight=False)
