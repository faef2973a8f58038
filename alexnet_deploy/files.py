"""Small helpers shared by every module: atomic writes, output checks, locks, hashing, versions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import UserError, os_error_from

log = logging.getLogger(__name__)


class NotRegularFile(UserError):
    """A path that was to be hashed is not a regular file (a FIFO, a device, a folder)."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    # O_NONBLOCK: a FIFO swapped in after a caller's checks must not hang the read
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NotRegularFile(f"{path} is not a regular file; refusing to read it")
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    Readers never see a half-written file: either the old one, the new one, or none. The
    temporary name keeps the final suffix because some writers (onnx, torch) look at it, and
    holds our pid so that a later run can tell a dead process's leftover from a live one's.
    Failures of the file system (full, read-only) arrive as an OSError naming `final`.
    """
    final = Path(final)
    suffix = final.suffix if suffix is None else suffix
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(final, suffix)
    except OSError as e:
        raise (os_error_from(e, final) or e) from None
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)  # the rename itself survives a power cut
    except Exception as e:
        converted = os_error_from(e, final)
        if converted is not None and converted is not e:
            raise converted from e
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _new_temp_file(final: Path, suffix: str) -> Path:
    """An empty `.STEM.PID.RANDOM.tmpSUFFIX` beside `final`, created with mode 0666 so that the
    kernel applies the process umask as it does for any new file. (mkstemp's 0600 would hide
    artifacts from other users; fixing that with chmod needs the umask, which is read either from
    a snapshot that goes stale when the process changes it, or by setting it, a process-wide change
    that races with other threads.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = final.parent / f".{final.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {final}")


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------------------------
# Output checks: run before any work, so nothing runs for minutes and then fails to write
# ---------------------------------------------------------------------------------------------
def _existing_above(path: Path) -> Path:
    """The nearest existing path at or above `path` (the one a write would start from)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(path.anchor or ".")


def _check_writable(folder: Path, what: str, target: Path, hint: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{what} {target}: {folder} is a file, not a folder; {hint}")
    if os.access(folder, os.W_OK | os.X_OK):
        return
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            raise UserError(f"{what} {target}: {folder} is on a read-only file system; {hint}")
    raise UserError(f"{what} {target}: permission denied writing in {folder}; {hint}")


def check_output_file(path: str | os.PathLike, what: str = "--out", hint: str | None = None) -> Path:
    """Refuse, before any work, a file output that is a folder, lies below a file, or cannot be
    written (read-only, no permission)."""
    p = Path(path)
    hint = hint or f"choose another {what}"
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; pass a file name")
    if os.path.lexists(p) and not p.is_file():
        raise UserError(f"{what} {p} exists and is not a regular file; {hint}")
    _check_writable(_existing_above(p.absolute().parent), what, p, hint)
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p}: permission denied; {hint}")
    return p


def check_output_dir(path: str | os.PathLike, what: str = "--out", staged: bool = False,
                     hint: str | None = None) -> Path:
    """Refuse, before any work, a folder output that is a file, lies below a file, or cannot be
    written. `staged`: the folder is built beside itself and renamed, so its parent must be
    writable too."""
    p = Path(path)
    hint = hint or f"choose another {what}"
    if os.path.lexists(p) and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder; pass a folder")
    full = p.absolute()
    if p.is_dir():
        _check_writable(p, what, p, hint)
    if staged or not p.is_dir():
        _check_writable(_existing_above(full.parent), what, p, hint)
    return p


def check_not_cwd(path: str | os.PathLike, what: str = "--out") -> None:
    """A folder that will be renamed must not be (or hold) the current folder: `--out .`."""
    full, cwd = Path(os.path.abspath(path)), Path.cwd().resolve()
    if full.resolve() == cwd or cwd.is_relative_to(full.resolve()):
        raise UserError(f"{what} {path} is the current folder (or holds it); pass a new folder name, "
                        f"e.g. {what} export")


def overlap(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How folder/file `a` relates to `b` when one holds the other: 'is', 'holds', 'lies inside'."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    if ra == rb:
        return "is"
    if rb.is_relative_to(ra):
        return "holds"
    if ra.is_relative_to(rb):
        return "lies inside"
    return None


def is_our_export(folder: Path) -> bool:
    """A folder whose manifest.json was written by this tool (any schema version)."""
    m = folder / "manifest.json"
    if m.is_symlink() or not m.is_file():
        return False
    try:
        d = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and {"schema", "artifacts", "weights"} <= d.keys()


# ---------------------------------------------------------------------------------------------
# Locks and leftovers of killed runs
# ---------------------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, what: str = "export") -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on `out` (the file .NAME.lock beside it) for the
    whole block: a second writer into the same folder fails at once with the holder's pid."""
    import fcntl

    full = Path(os.path.abspath(out))
    lock = full.parent / f".{full.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as for any new file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another {what} is writing {out} (pid {holder}); wait for it to finish "
                            "or choose another --out") from None
        # The holder before us may have removed the file after we opened it: lock the live one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _pid_in(name: str, marker: str) -> int | None:
    tail = name.rpartition(marker)[2]
    return int(tail) if tail.isdigit() else None


def remove_stale_staging(out: str | os.PathLike, say: Callable[[str], None] | None = None) -> list[Path]:
    """Remove `.NAME.partial-PID` / `.NAME.old-PID` folders beside `out` whose process is gone
    (kill -9, power cut), saying so in one line. A dead run's `.old-` folder while `out` is
    missing is the previous result, interrupted mid-replace: it is put back, not deleted."""
    say = say or log.info
    full = Path(os.path.abspath(out))
    removed = []
    if not full.parent.is_dir():
        return removed
    for marker in (".old-", ".partial-"):
        for p in sorted(full.parent.glob(f".{full.name}{marker}*")):
            pid = _pid_in(p.name, marker)
            if pid is None or pid == os.getpid() or pid_alive(pid) or not p.is_dir() or p.is_symlink():
                continue
            if marker == ".old-" and not os.path.lexists(full):
                os.replace(p, full)
                say(f"restored {full} from {p.name}, left by an interrupted run (pid {pid})")
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        say(f"removed {len(removed)} staging folder(s) of killed runs: "
            + ", ".join(p.name for p in removed))
    return removed


def remove_stale_temp_files(folder: str | os.PathLike, stem: str,
                            say: Callable[[str], None] | None = None) -> list[Path]:
    """Remove atomic_path's temporary files `.STEM.*.tmp*` in `folder` left by dead processes
    (names without a pid are from older versions and are also leftovers)."""
    say = say or log.info
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".{stem}.*.tmp*"):
        pid_part = p.name[len(stem) + 2:].split(".", 1)[0]
        if pid_part.isdigit() and pid_alive(int(pid_part)) and int(pid_part) != os.getpid():
            continue
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    if removed:
        say(f"removed {len(removed)} temporary file(s) of killed runs in {folder}: "
            + ", ".join(p.name for p in removed))
    return removed


def image_path_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be an image file (missing, a folder, a FIFO or device), or None.
    Checked before opening: reading a FIFO would block forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"image not found: {path}"
    except OSError as e:
        return f"cannot read image {path}: {e.strerror or e.__class__.__name__}"
    if stat.S_ISDIR(mode):
        return f"{path} is a folder, not an image; pass image files"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a pipe or device?); pass image files"
    return None
