"""Running the CLI from tests, and the checks every CLI test shares.

`cli()` runs the real entry point (alexnet_deploy.cli.main) in this process, the way the console
script runs it, and captures stdout and stderr at the file-descriptor level, so output written by
native libraries and by forked DataLoader workers is seen exactly as a user's terminal would see
it. It saves and restores the process-wide state a command may change (cwd, environment, argv,
torch threads and determinism, RNG states, logging and warning set-up, signal handlers), so cases
do not depend on their order. Importing torch costs 2-3 s per child process; in-process it is
paid once per session.

`cli_subprocess()` is the console script in a child process: for what only a process boundary
shows (signals, kill -9, races, memory caps, interpreter start-up) and a few end-to-end checks
that the real script prints no traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "alexnet-deploy"
TEST_IMAGE_SIZE = 64  # AlexNet's smallest comfortable input; the classifier is unchanged


@dataclass
class Result:
    """What a user sees: the exit code and both streams (also under subprocess's names, so a test
    reads the same whichever runner produced it)."""

    code: int
    out: str
    err: str

    @property
    def returncode(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def stderr(self) -> str:
        return self.err

    def lines(self) -> list[str]:
        """The non-blank lines of stderr."""
        return [ln for ln in self.err.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------
# in this process
# ---------------------------------------------------------------------------------------------
def cli(*args, cwd: Path | str | None = None, env: dict | None = None) -> Result:
    """`alexnet-deploy ARGS` through alexnet_deploy.cli.main in this process.

    An exception that escapes main() is what a user would see as a traceback: it is written to
    stderr with the word Traceback and exit code 1, as the interpreter would."""
    from alexnet_deploy import cli as cli_mod

    with _fd_capture() as streams, _process_state(cwd, env):
        sys.argv = [str(EXE), *map(str, args)]
        cli_mod._debug["on"] = _debug_from_env(cli_mod)  # as a new process reads it at start-up
        code = 0
        try:
            cli_mod.main()
        except SystemExit as e:
            code = _exit_code(e.code)
        except BaseException:  # noqa: BLE001 - an escaped exception is the failure tests look for
            traceback.print_exc()
            code = 1
        finally:
            cli_mod._debug["on"] = _debug_from_env(cli_mod)
    return Result(code, *streams())


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("text") prints the text and exits 1
    return 1


def _debug_from_env(cli_mod) -> bool:
    return os.environ.get(cli_mod.DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def _fd_capture():
    """Point fds 1 and 2 (and sys.stdout / sys.stderr, which write through to them) at temporary
    files for the duration; yields a function returning (stdout, stderr) once the block ends."""
    got: dict[str, str] = {}
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = (sys.stdout, sys.stderr)
    try:
        for fd, f in zip((1, 2), files, strict=True):
            os.dup2(f.fileno(), fd)
        # Never closed: a handler that kept a reference during the call must not break later.
        sys.stdout = _fd_text(1, "strict")
        sys.stderr = _fd_text(2, "backslashreplace")
        yield lambda: (got["out"], got["err"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        for key, f in zip(("out", "err"), files, strict=True):
            f.seek(0)
            got[key] = f.read().decode("utf-8", errors="backslashreplace")
            f.close()


def _fd_text(fd: int, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(os.dup(fd), "w", closefd=True)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors=errors, write_through=True,
                            line_buffering=True)


@contextlib.contextmanager
def _process_state(cwd, env):
    """Give the command a fresh interpreter's view of global state, and put ours back after."""
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    torch_state = _torch_state()
    py_rng, np_rng = random.getstate(), _numpy_rng_state()
    try:
        if env:
            os.environ.update({k: str(v) for k, v in env.items()})
        if cwd is not None:
            os.chdir(cwd)
        root.handlers[:] = []  # pytest's capture handler would swallow what a user sees
        root.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            _fresh_warning_filters()
            yield
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            for s, handler in saved_signals.items():
                signal.signal(s, handler)
        root.handlers[:], _ = saved_logging
        root.setLevel(saved_logging[1])
        _restore_torch(torch_state)
        random.setstate(py_rng)
        _restore_numpy_rng(np_rng)


def _fresh_warning_filters() -> None:
    """The filters and printing of a new interpreter (pytest records warnings instead)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _torch_state():
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_rng_state(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)


def _restore_torch(state) -> None:
    if state is None:
        return
    import torch

    threads, deterministic, grad, dtype, rng, cudnn_benchmark, cudnn_deterministic = state
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    torch.set_rng_state(rng)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.deterministic = cudnn_deterministic


def _numpy_rng_state():
    np = sys.modules.get("numpy")
    return None if np is None else np.random.get_state()


def _restore_numpy_rng(state) -> None:
    if state is not None:
        sys.modules["numpy"].random.set_state(state)


# ---------------------------------------------------------------------------------------------
# in a child process
# ---------------------------------------------------------------------------------------------
def cli_subprocess(*args, cwd: Path | str | None = None, timeout: float = 300, mem_bytes: int | None = None,
                   env: dict | None = None) -> Result:
    """The console script in a child process; `mem_bytes` caps its address space (ulimit -v) so a
    case that asks for too much memory fails instead of swapping the machine."""
    import resource

    def limit():
        if mem_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    p = subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=limit if mem_bytes else None,
                       env={**os.environ, **{k: str(v) for k, v in (env or {}).items()}})
    return Result(p.returncode, p.stdout, p.stderr)


# ---------------------------------------------------------------------------------------------
# the error contract
# ---------------------------------------------------------------------------------------------
def assert_user_error(r, *needles: str, code: int = 2) -> None:
    """The expected exit code, no traceback, and each needle on stderr (any Result, or a
    subprocess.CompletedProcess)."""
    assert r.returncode == code, (r.returncode, r.stdout[-800:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n.lower() in r.stderr.lower(), (n, r.stderr)


def assert_one_line(err: str, *needles: str) -> None:
    """stderr is exactly one line, without a traceback, naming each needle."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


def run_main(*args, debug_env: bool = False) -> tuple[int, str, str]:
    """cli(ARGS) as a tuple (exit code, stdout, stderr); `debug_env` sets ALEXNET_DEPLOY_DEBUG=1."""
    from alexnet_deploy import cli as cli_mod

    r = cli(*args, env={cli_mod.DEBUG_ENV: "1"} if debug_env else None)
    return r.code, r.out, r.err
