"""The recommendation's file, as `benchmark` reads it back to mark the recommended rows.

recommend writes DIR/recommendation.json (bench/recommend.py); this module only reads its picks,
apart from recommend so the harness that recommend drives does not import it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from alexnet_deploy.manifest import Manifest

log = logging.getLogger(__name__)

FILE = "recommendation.json"
MAX_FILE_BYTES = 8 << 20  # a recommendation is kilobytes; anything bigger was not written by us


def read_picks(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The per-precision picks of DIR/recommendation.json that still name the manifest's files (same
    path and sha256), else those of a manifest written before recommend had its own file. The file
    is untrusted: anything unreadable or stale is left out with a warning."""
    path = Path(manifest.root) / FILE
    if not path.is_file() or path.is_symlink():
        return {p: v for p, v in manifest.recommended.get("picks", {}).items() if isinstance(v, dict)}
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes")
        picks = json.loads(path.read_bytes()).get("picks", {})
        if not isinstance(picks, dict):
            raise ValueError("its picks are not an object")
    except (OSError, ValueError, AttributeError) as e:
        log.warning(f"{path} is not a recommendation this tool wrote ({e}): no row is marked recommended")
        return {}
    shas = {a.path: a.sha256 for a in [manifest.weights_artifact(), *manifest.artifacts]}
    fresh = {p: v for p, v in picks.items() if isinstance(v, dict) and v.get("artifact") in shas
             and v.get("sha256") == shas[v["artifact"]]}
    if len(fresh) < len(picks):
        log.warning(f"{path} names files that are not the manifest's any more: rerun `alexnet-deploy "
                    "recommend` to mark them")
    return fresh
