"""The table `export` prints when it is done: one row per artifact with its smoke check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet_deploy.manifest import Manifest


def check_text(check: dict[str, Any]) -> str:
    """One cell for the record checks.post_export_check kept in artifact.extra["check"]."""
    if check.get("status") != "ok":
        return f"not run: {check.get('reason')}"
    if (check.get("limits") or {}).get("atol") is None:  # judged on the logits' direction
        return f"ok {check['runner']}, cosine {check.get('cosine', float('nan')):.3f}"
    return f"ok {check['runner']}, max abs {check['max_abs']:.0e}"


def print_summary(manifest: Manifest, out: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from alexnet_deploy.console import make_console

    console = make_console()
    table = Table(title=escape(f"exported to {out}"))
    for col in ("format", "precision", "file", "MB", "seconds", "check"):
        table.add_column(col, justify="right" if col in ("MB", "seconds") else "left",
                         no_wrap=col != "check")
    for a in manifest.artifacts:
        table.add_row(a.format, a.precision, escape(a.path), f"{a.bytes / 1e6:.1f}", f"{a.export_s:.1f}",
                      escape(check_text(a.extra.get("check", {}))))
    console.print(table)
    for s in manifest.skipped:
        console.print(escape(f"skipped {s.format}: {s.reason}"), highlight=False)
