"""validate's presentation: the one-line summary, the Markdown report, the rich tables.
Fractions become percentages (and accuracy drops points) here, at render time only."""

from __future__ import annotations

import math
from typing import Any

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


COLUMNS = ("backend", "format", "precision", "status", "max abs", "p99 abs", "min atol", "cosine",
           "top-1 agree", "top-5 overlap", "top-1 acc", "acc drop (pts)")


def _num(v: float | None, fmt: str = "{:.2e}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _pct(v: float | None) -> str:
    return _num(v, "{:.1%}")


def _points(v: float | None) -> str:
    """A fraction shown in percentage points, signed (+0.10 = a tenth of a point lower)."""
    return _num(None if v is None else v * 100, "{:+.2f}")


def _row(r: ValidationResult) -> list[str]:
    return [r.backend, r.format, r.precision, r.status, _num(r.max_abs), _num(r.p99_abs),
            _num(r.min_atol), _num(r.cosine, "{:.6f}"), _pct(r.top1_agreement), _pct(r.top5_overlap),
            _pct(r.accuracy_top1), _points(r.accuracy_drop)]


def to_markdown(report: ValidationReport) -> str:
    from alexnet_deploy.report import markdown_table

    ref = report.results[0].reference_accuracy_top1 if report.results else None
    lines = [f"# Validation of `{report.export_dir}`\n", f"**{report.summary}**\n",
             f"Reference: torch eager fp32 on `{report.reference.get('weights')}`"
             + (f" (top-1 {ref:.1%} on {report.images} images of `{report.data}`)" if ref is not None else "")
             + ".\n", markdown_table(COLUMNS, [_row(r) for r in report.results])]
    notes = [f"- {r.status} `{r.backend}` [{r.precision}] `{r.artifact}`: {r.reason}"
             for r in report.results if r.reason]
    if notes:
        lines += ["## Failures and skips\n", "\n".join(notes) + "\n"]
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
    return ", ".join(parts)


def print_report(report: ValidationReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"validation of {report.export_dir}"))
    for c in COLUMNS:
        left = c in ("backend", "format", "precision", "status")
        table.add_column(c, justify="left" if left else "right", no_wrap=left)
    style = {OK: "green", FAIL: "bold red", SKIPPED: "dim"}
    for r in report.results:
        row = [escape(c) for c in _row(r)]
        row[3] = f"[{style[r.status]}]{r.status}[/]"
        table.add_row(*row)
    console.print(table)
    for r in report.results:
        if r.reason:
            console.print(f"[{style[r.status]}]{r.status}[/] {escape(r.label)}: {escape(r.reason)}",
                          highlight=False)


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
