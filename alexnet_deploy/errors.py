"""The exceptions that reach users as one line, and the one place that turns the expected failures
of a run (disk full, read-only folders, permissions, out of memory) into such a line.

Torch-free: the CLI's error boundary imports this before any command runs.
"""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it (exit 2)."""

    exit_code = 2


class CheckFailed(Exception):
    """An artifact or a run did not meet its limits, or the run itself failed (exit 1)."""

    exit_code = 1


# Failures that are the machine's, not the user's input: exit 1, like a failed check.
RUNTIME_EXIT = 1

# Libraries that write files report a full disk in their own words, without an errno.
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "unexpected pos")
_ALLOC_BYTES = re.compile(r"tried to allocate (\d+) bytes")


def os_error_from(exc: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """`exc` as an OSError naming `path` when it is one or is a disk-full error in a library's
    words (safetensors' "os error 28", torch's zip writer's "unexpected pos"); else None."""
    if isinstance(exc, OSError) and exc.errno is not None:
        if path is not None and (exc.filename is None or _is_temp_name(exc.filename)):
            return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))
        return exc
    text = str(exc).lower()
    if any(t in text for t in _DISK_FULL_TEXT):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else os.fspath(path))
    return None


def _is_temp_name(name: object) -> bool:
    """A name of our own atomic writes' temporary files (.NAME.PID.xxxx.tmp.EXT)."""
    return ".tmp" in os.path.basename(str(name))


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation, by errno; says what to do."""
    path = e.filename if e.filename is not None else "a file"
    code = e.errno
    if code == errno.ENOSPC:
        return f"no space left on the device writing {path}; free some space or write elsewhere"
    if code == errno.EROFS:
        return f"{path} is on a read-only file system; write elsewhere"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}"
    if code == errno.EEXIST:
        return f"{path} is a file, not a folder; choose another path"
    if code == errno.ENOTDIR:
        return f"a parent of {path} is a file, not a folder; choose another path"
    if code == errno.EISDIR:
        return f"{path} is a folder; pass a file name"
    if code == errno.ENOENT:
        return f"not found: {path}"
    return f"{e.strerror or type(e).__name__}: {path}"


def memory_error_line(exc: BaseException) -> str | None:
    """One line for running out of memory (Python's MemoryError or torch's allocator), else None."""
    text = str(exc)
    if isinstance(exc, MemoryError):
        first = (text.strip().splitlines() or [""])[0]
        return f"out of memory ({first or 'an allocation failed'}); use smaller inputs or batches"
    if "can't allocate memory" in text or "DefaultCPUAllocator" in text:
        m = _ALLOC_BYTES.search(text)
        size = f"{int(m.group(1)) / 1e9:.1f} GB were asked for" if m else "an allocation failed"
        return f"out of memory: {size}; use smaller inputs or batches"
    return None


def expected_failure(exc: BaseException) -> tuple[str, int] | None:
    """(line, exit code) for a failure a user can act on; None for a bug (an internal error)."""
    if isinstance(exc, (UserError, CheckFailed)):
        return str(exc), exc.exit_code
    line = memory_error_line(exc)
    if line is not None:
        return line, RUNTIME_EXIT
    oserr = os_error_from(exc)
    if oserr is not None:
        return os_error_line(oserr), RUNTIME_EXIT
    return None


def first_line(exc: BaseException, empty: str = "(no message)") -> str:
    """The first line of an exception's message: runtimes raise messages of many lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else empty


def exception_line(exc: BaseException) -> str:
    """`TypeName: first line`, how a runtime's failure is reported in one line."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def internal_error_line(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {first_line(exc, '')[:300]}; rerun with --debug for the traceback"
