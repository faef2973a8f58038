"""Where an export is written: the checks on --out, and the staging folder beside it that is
renamed into place only when complete, so a failed or killed export never leaves a folder whose
manifest lists a half-written file (and --force never replaces anything but our own export)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import UserError
from alexnet_deploy.files import is_our_export, overlap


def check_out(out: Path, force: bool, *inputs: Any) -> None:
    """--out must not be, hold or lie inside anything the export reads, and --force replaces only
    an export folder of ours (or an empty one): never a user's data."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    for p in inputs:
        if p is None or not os.path.exists(str(p)):
            continue  # 'torchvision' and other names that are not paths
        how = overlap(out, p)
        if how is not None:
            raise UserError(f"--out {out} {how} {p}, which this export reads; choose another --out "
                            "(an export never replaces its own inputs)")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
        if not is_our_export(out):
            raise UserError(f"--force replaces only an export folder (one holding this tool's "
                            f"manifest.json); {out} is not one: choose another --out")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh `.NAME.partial-PID` folder beside `out` for the block to fill; renamed to `out`
    when the block ends normally, removed when it raises (or is interrupted)."""
    full = Path(os.path.abspath(out))
    stage = full.parent / f".{full.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)  # our own pid's: nobody else's
    stage.mkdir(parents=True)
    try:
        yield stage
        replace_dir(stage, full)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def replace_dir(stage: Path, out: Path) -> None:
    """Put the finished folder at `out`; an old `out` (checked to be ours) is moved aside first,
    then deleted. A kill between the two renames leaves `.NAME.old-PID`, which the next run puts
    back (files.remove_stale_staging)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
