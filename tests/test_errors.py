"""The CLI's one error boundary: expected failures are one specific line with the right exit code,
anything unexpected is one 'internal error' line, and --debug (or the environment variable)
shows the traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from helpers import assert_one_line, cli_subprocess, run_main

from alexnet_deploy import cli
from alexnet_deploy.errors import expected_failure, internal_error_line, os_error_from


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


def test_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    import alexnet_deploy.info

    # A deterministic bug inside a command: the boundary is what is tested, not info itself.
    monkeypatch.setattr(alexnet_deploy.info, "run_info", _boom(ZeroDivisionError("division by zero")))
    code, _, err = run_main("info", tmp_path)
    assert code == 1
    assert_one_line(err, "internal error: ZeroDivisionError: division by zero", "--debug")

    code, _, err = run_main("--debug", "info", tmp_path)
    assert code == 1
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error")

    code, _, err = run_main("info", tmp_path, debug_env=True)  # ALEXNET_DEPLOY_DEBUG=1
    assert code == 1 and "Traceback" in err


@pytest.mark.parametrize(("exc", "needle", "code"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.onnx"),
     "no space left on the device writing /data/out/x.onnx", 1),
    (MemoryError("cannot allocate"), "out of memory", 1),
    (KeyboardInterrupt(), "aborted", 130),  # click turns Ctrl-C into its Abort
])
def test_expected_failures_through_the_boundary(monkeypatch, tmp_path, exc, needle, code):
    import alexnet_deploy.info

    monkeypatch.setattr(alexnet_deploy.info, "run_info", _boom(exc))
    got, _, err = run_main("info", tmp_path)
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


# ---------------------------------------------------------------------------------------------
# The same boundary in a real child process: the console script as installed, a fresh interpreter
# (the in-process runner above stands in for it everywhere else)
# ---------------------------------------------------------------------------------------------
_BUG = ("import sys, alexnet_deploy.info as info; from alexnet_deploy.cli import main; "
        "info.run_info = lambda *a, **k: 1 / 0; sys.argv[0] = 'alexnet-deploy'; main()")


def test_console_script_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    r = cli_subprocess("info", tmp_path / "nothing")
    assert r.code == 2
    assert_one_line(r.err, "not found")
    r = cli_subprocess("--debug", "info", tmp_path / "nothing")
    assert r.code == 2 and "Traceback" in r.err
    assert r.err.strip().splitlines()[-1].startswith("error: ") and "not found" in r.err


def test_console_script_usage_error_has_no_traceback(tmp_path):
    r = cli_subprocess("validate", tmp_path, "--atol", "-1")
    assert r.code == 2 and "Traceback" not in r.err and "--atol" in r.err


def test_internal_error_in_a_fresh_interpreter(tmp_path):
    def run(*args, **env):
        return subprocess.run([sys.executable, "-c", _BUG, *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})

    p = run("info", str(tmp_path))
    assert p.returncode == 1
    assert_one_line(p.stderr, "internal error: ZeroDivisionError", "--debug")
    p = run("info", str(tmp_path), **{cli.DEBUG_ENV: "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "ZeroDivisionError" in p.stderr
