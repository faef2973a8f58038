"""The CLI's one error boundary: expected failures are one specific line with the right exit code,
anything unexpected is one 'internal error' line, and --debug (or the environment variable)
shows the traceback."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from alexnet_deploy import cli
from alexnet_deploy.errors import expected_failure, internal_error_line, os_error_from


def run_main(capsys, *args: str, debug_env: bool = False) -> tuple[int, str, str]:
    """alexnet-deploy ARGS in this process: (exit code, stdout, stderr)."""
    old_argv = sys.argv
    sys.argv = ["alexnet-deploy", *map(str, args)]
    cli._debug["on"] = debug_env
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old_argv
        cli._debug["on"] = False
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


@pytest.mark.parametrize(("code", "needle"), [
    (errno.ENOSPC, "no space left on the device writing /x/out"),
    (errno.EROFS, "/x/out is on a read-only file system"),
    (errno.EACCES, "permission denied: /x/out"),
    (errno.EPERM, "permission denied: /x/out"),
    (errno.EEXIST, "/x/out is a file, not a folder"),
    (errno.ENOTDIR, "a parent of /x/out is a file"),
    (errno.EISDIR, "/x/out is a folder; pass a file name"),
])
def test_os_errors_become_one_line_by_errno(code, needle):
    line, exit_code = expected_failure(OSError(code, os.strerror(code), "/x/out"))
    assert needle in line
    assert exit_code == 1


def test_library_disk_full_texts_are_the_disk_full_line():
    # safetensors (trial case 117) and torch's zip writer (case 97) say it without an errno
    for text in ("Error while serializing: I/O error: No space left on device (os error 28)",
                 "[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 5678"):
        converted = os_error_from(RuntimeError(text), "/x/run/checkpoint.pt")
        assert converted is not None and converted.errno == errno.ENOSPC
        line, code = expected_failure(converted)
        assert line.startswith("no space left on the device writing /x/run/checkpoint.pt")
        assert code == 1


def test_torch_allocator_failure_names_the_size():
    e = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                     "memory: you tried to allocate 15987000000 bytes. Error code 12")
    line, code = expected_failure(e)
    assert line.startswith("out of memory: 16.0 GB were asked for")
    assert code == 1
    assert expected_failure(MemoryError())[0].startswith("out of memory")


def test_a_bug_is_not_an_expected_failure():
    assert expected_failure(ZeroDivisionError("division by zero")) is None
    assert internal_error_line(ZeroDivisionError("division by zero\nmore")) == (
        "internal error: ZeroDivisionError: division by zero; rerun with --debug for the traceback")


def _boom(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_internal_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    import alexnet_deploy.info

    # A deterministic bug inside a command: the boundary is what is tested, not info itself.
    monkeypatch.setattr(alexnet_deploy.info, "run_info", _boom(ZeroDivisionError("division by zero")))
    code, _, err = run_main(capsys, "info", tmp_path)
    assert code == 1
    assert_one_line(err, "internal error: ZeroDivisionError: division by zero", "--debug")

    code, _, err = run_main(capsys, "--debug", "info", tmp_path)
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error")

    code, _, err = run_main(capsys, "info", tmp_path, debug_env=True)  # ALEXNET_DEPLOY_DEBUG=1
    assert code == 1 and "Traceback" in err


@pytest.mark.parametrize(("exc", "needle", "code"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.onnx"),
     "no space left on the device writing /data/out/x.onnx", 1),
    (MemoryError("cannot allocate"), "out of memory", 1),
    (KeyboardInterrupt(), "aborted", 130),  # click turns Ctrl-C into its Abort
])
def test_expected_failures_through_the_boundary(capsys, monkeypatch, tmp_path, exc, needle, code):
    import alexnet_deploy.info

    monkeypatch.setattr(alexnet_deploy.info, "run_info", _boom(exc))
    got, _, err = run_main(capsys, "info", tmp_path)
    assert got == code
    assert_one_line(err, needle)


def test_debug_env_variable_is_read_at_start(monkeypatch):
    import importlib

    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    try:
        assert importlib.reload(cli)._debug["on"] is True
    finally:
        monkeypatch.delenv(cli.DEBUG_ENV)
        importlib.reload(cli)
