"""Writers shared by train, validate, bench and pipeline: JSON + Markdown side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexnet_deploy.files import write_json, write_text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(json_path: str | os.PathLike, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write `data` as JSON and `markdown` beside it (same stem, .md), both atomically."""
    json_path = Path(json_path)
    md_path = json_path.with_suffix(".md")
    write_json(json_path, data)
    write_text(md_path, markdown)
    return json_path, md_path
