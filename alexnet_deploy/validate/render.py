"""validate's presentation: the one-line summary, the Markdown report, the rich tables.
Fractions become percentages (and accuracy drops points) here, at render time only."""

from __future__ import annotations

import math
from typing import Any

from alexnet_deploy.tolerances import LAYER_DEPTH
from alexnet_deploy.validate.results import FAIL, OK, SKIPPED, ValidationReport, ValidationResult


def summarise(report: ValidationReport) -> str:
    checked = [r for r in report.results if r.status != SKIPPED]
    skipped = len(report.results) - len(checked)
    inputs = f"{report.images} images + {report.random_inputs} random inputs"
    tail = f", {skipped} skipped" if skipped else ""
    if not checked:
        return f"nothing was validated: every runner was skipped{tail}"
    if report.passed:
        return f"PASSED: {len(checked)} of {len(checked)} checks match torch eager fp32 on {inputs}{tail}"
    first = report.failed[0]
    return (f"FAILED: {len(report.failed)} of {len(checked)} checks failed on {inputs}{tail}; "
            f"first: {first.backend} [{first.precision}] {first.artifact}: {first.reason}")


COLUMNS = ("backend", "format", "precision", "computes in", "status", "max abs", "p99 abs", "min atol", "cosine",
           "top-1 agree", "top-5 overlap", "top-1 acc", "acc drop (pts)")


def _num(v: float | None, fmt: str = "{:.2e}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _pct(v: float | None) -> str:
    return _num(v, "{:.1%}")


def _points(v: float | None) -> str:
    """A fraction shown in percentage points, signed (+0.10 = a tenth of a point lower)."""
    return _num(None if v is None else v * 100, "{:+.2f}")


def _row(r: ValidationResult) -> list[str]:
    return [r.backend, r.format, r.precision, r.computes_in or "-", r.status, _num(r.max_abs), _num(r.p99_abs),
            _num(r.min_atol), _num(r.cosine, "{:.6f}"), _pct(r.top1_agreement), _pct(r.top5_overlap),
            _pct(r.accuracy_top1), _points(r.accuracy_drop)]


LAYER_COLUMNS = ("module", "kind", "status", "rel L2", "max abs", "cosine", "depth", "limit")
SHOWN_AFTER_DIVERGENCE = 3  # the console shows this many modules past the first divergence


def divergence_line(r: ValidationResult) -> str | None:
    """One line per artifact whose layers were asked for."""
    if r.layers is None:
        return f"{r.label}: {r.layers_note}" if r.layers_note else None
    fd = r.first_divergence
    where = (f"first diverges at {fd['module']} (rel L2 {_num(fd['rel_l2'])}, cosine "
             f"{_num(fd['cosine'], '{:.4f}')})" if fd else "no layer past its limit")
    return f"{r.label}: {where}; {r.layers_note}"


def _layer_row(layer: dict[str, Any]) -> list[str]:
    return [layer["module"], layer["kind"], layer["status"], _num(layer["rel_l2"]), _num(layer["max_abs"]),
            _num(layer["cosine"], "{:.6f}"), _count(layer.get("depth")), _num(layer["limit"], "{:.3g}")]


def _count(v: int | None) -> str:
    return "-" if v is None else str(v)


def layers_markdown(report: ValidationReport, picture: str | None) -> list[str]:
    from alexnet_deploy.report import markdown_table

    compared = [r for r in report.results if r.layers is not None or r.layers_note]
    if not compared:
        return []
    lines = ["## Layers\n", "The first module in execution order whose output's relative L2 error "
             "passes its limit: the precision's per-layer limit, scaled by the square root of its depth (the "
             "convolutions and Linears run up to it) and capped; \"fused\" modules left no tensor in the artifact.\n"]
    if picture:
        lines.append(f"![per-layer error]({picture})\n")
    for r in compared:
        lines.append(f"- {divergence_line(r)}")
    lines.append("")
    for r in compared:
        if r.layers:
            lines += [f"### `{r.backend}` [{r.precision}] `{r.artifact}`\n",
                      markdown_table(LAYER_COLUMNS, [_layer_row(layer) for layer in r.layers])]
    return lines


def write_layer_plot(report: ValidationReport, path) -> str | None:
    """validation.png: per artifact, relative L2 error against depth (log scale) with its limit;
    None (nothing written) when no layers were compared."""
    compared = [r for r in report.results if r.layers]
    if not compared:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    from alexnet_deploy.files import atomic_path

    names = [layer["module"] for layer in compared[0].layers]
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(names)), 5))
    for i, r in enumerate(compared):
        color = f"C{i % 10}"
        points = [(k, max(layer["rel_l2"], 1e-12)) for k, layer in enumerate(r.layers)
                  if layer["rel_l2"] is not None and math.isfinite(layer["rel_l2"])]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color=color, markersize=3, label=r.label)
        limits = [(k, layer["limit"]) for k, layer in enumerate(r.layers) if layer["limit"] is not None]
        if limits:  # each module's own: it grows with depth
            ax.step(*zip(*limits, strict=True), where="mid", color=color, linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    ax.set(xlabel="module, in execution order", ylabel="relative L2 error against torch eager",
           title="per-layer error (dashed: each artifact's limit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path.name


def to_markdown(report: ValidationReport, picture: str | None = None) -> str:
    from alexnet_deploy.report import markdown_table

    ref = report.results[0].reference_accuracy_top1 if report.results else None
    lines = [f"# Validation of `{report.export_dir}`\n", f"**{report.summary}**\n",
             f"Reference: torch eager fp32 on `{report.reference.get('weights')}`"
             + (f" (top-1 {ref:.1%} on {report.images} images of `{report.data}`)" if ref is not None else "")
             + ".\n", markdown_table(COLUMNS, [_row(r) for r in report.results])]
    notes = [f"- {r.status} `{r.backend}` [{r.precision}] `{r.artifact}`: {r.reason}"
             for r in report.results if r.reason]
    notes += [f"- note `{r.backend}` [{r.precision}] `{r.artifact}`: {r.precision_note}"
              for r in report.results if r.precision_note]
    if notes:
        lines += ["## Failures and skips\n", "\n".join(notes) + "\n"]
    lines += layers_markdown(report, picture)
    lines += ["## Limits\n", limits_text(report)]
    return "\n".join(lines)


def limits_text(report: ValidationReport) -> str:
    seen: dict[str, dict[str, Any]] = {}
    for r in report.results:
        seen.setdefault(r.precision, r.limits)
    return "".join(f"- {precision}: {limits_line(lim)}\n" for precision, lim in seen.items())


def limits_line(lim: dict[str, Any]) -> str:
    """One precision's limits in words (fractions as percentages, accuracy drop in points)."""
    parts = [f"|y-ref| <= {lim['atol']:g} + {lim['rtol']:g}*|ref|" if lim.get("atol") is not None
             else "no elementwise limit"]
    if lim.get("min_cosine") is not None:
        parts.append(f"logits cosine >= {lim['min_cosine']:g}")
    if lim.get("min_top1_agreement") is not None:
        parts.append(f"top-1 agreement >= {lim['min_top1_agreement']:.1%}")
    if lim.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop <= {lim['max_accuracy_drop'] * 100:g} pts")
    if lim.get("max_layer_rel_l2") is not None:
        parts.append(f"per layer (--layers) rel L2 <= {layer_limit_text(lim)}")
    return ", ".join(parts)


def layer_limit_text(lim: dict[str, Any]) -> str:
    text = f"{lim['max_layer_rel_l2']:g} x sqrt(depth / {LAYER_DEPTH})"
    if lim.get("max_layer_rel_l2_floor") is not None:
        text += f", at least {lim['max_layer_rel_l2_floor']:g}"
    if lim.get("max_layer_rel_l2_cap") is not None:
        text += f", at most {lim['max_layer_rel_l2_cap']:g}"
    return text


def print_report(report: ValidationReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"validation of {report.export_dir}"))
    for c in COLUMNS:
        left = c in ("backend", "format", "precision", "computes in", "status")
        table.add_column(c, justify="left" if left else "right", no_wrap=left)
    style = {OK: "green", FAIL: "bold red", SKIPPED: "dim"}
    for r in report.results:
        row = [escape(c) for c in _row(r)]
        row[4] = f"[{style[r.status]}]{r.status}[/]"
        table.add_row(*row)
    console.print(table)
    for r in report.results:
        if r.reason:
            console.print(f"[{style[r.status]}]{r.status}[/] {escape(r.label)}: {escape(r.reason)}",
                          highlight=False)
    for r in report.results:
        if r.precision_note:
            console.print(f"[yellow]note[/] {escape(r.label)}: {escape(r.precision_note)}", highlight=False)
    for r in report.results:
        print_layers(r, console)


def print_layers(r: ValidationResult, console) -> None:
    """The divergence line; for an artifact that diverges, its modules up to a few past it."""
    from rich.markup import escape
    from rich.table import Table

    line = divergence_line(r)
    if line is None:
        return
    console.print(("[bold red]layers[/] " if r.first_divergence else "[green]layers[/] ") + escape(line),
                  highlight=False)
    if not r.first_divergence or not r.layers:
        return
    at = next(i for i, layer in enumerate(r.layers) if layer["module"] == r.first_divergence["module"])
    table = Table(title=escape(f"layers of {r.label}"))
    for c in LAYER_COLUMNS:
        table.add_column(c, justify="left" if c in ("module", "kind", "status") else "right")
    for layer in r.layers[: at + 1 + SHOWN_AFTER_DIVERGENCE]:
        table.add_row(*(escape(c) for c in _layer_row(layer)))
    console.print(table)


def print_list(rows: list[dict], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="runners")
    for c in ("backend", "format", "precision", "device", "artifact", "available", "reason"):
        table.add_column(c)
    for r in rows:
        avail = "[green]yes[/]" if r["available"] else "[red]no[/]"
        table.add_row(*(escape(r[k]) for k in ("backend", "format", "precision", "device", "artifact")),
                      avail, escape(r["reason"]))
    console.print(table)
