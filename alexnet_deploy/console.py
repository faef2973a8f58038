"""One console factory and one logging set-up for every command.

Tables go to stdout through `make_console()`. Progress and notices go through stdlib logging
(`logging.getLogger(__name__).info(...)` / `.warning(...)`); a library user configures them like any
other library's logs. The command line's `setup_logging` routes the package's records as the tool's
output contract has it: progress (INFO, DEBUG with --debug) to stdout beside the tables, warnings and
worse to stderr as `warning: ...` lines, so a failing command's stderr stays one line. On a terminal
rich's handler renders them; a pipe or a log file gets each record as one unwrapped line.
"""

from __future__ import annotations

import logging
import sys

PIPE_WIDTH = 180  # tables in logs and pipes: one row per line instead of 80-column wrapping
PACKAGE = "alexnet_deploy"


def make_console(stderr: bool = False, min_width: int | None = None):
    """A terminal's own width (at least `min_width`); a fixed wide width when not a terminal."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        return Console(stderr=stderr, width=max(PIPE_WIDTH, min_width or 0))
    if min_width and console.width < min_width:
        return Console(stderr=stderr, width=min_width)
    return console


class _Plain(logging.StreamHandler):
    """A record per line on sys.stdout / sys.stderr as they are at emit time (not at set-up: a
    caller that redirects them, as tests and notebooks do, gets the records)."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns one; the attribute is live
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def _handler(stream_name: str) -> logging.Handler:
    stream = getattr(sys, stream_name)
    if getattr(stream, "isatty", lambda: False)():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=make_console(stderr=stream_name == "stderr"), show_time=False, show_level=False,
            show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = _Plain(stream_name)
    handler.setFormatter(_Formatter("%(message)s"))
    return handler


def setup_logging(debug: bool = False) -> None:
    """Route the package's records: INFO (and DEBUG with `debug`) to stdout, WARNING and worse to
    stderr. Calling it again replaces the handlers it installed, so it is safe per command."""
    log = logging.getLogger(PACKAGE)
    for old in [h for h in log.handlers if getattr(h, "_alexnet_deploy", False)]:
        log.removeHandler(old)
    progress = _handler("stdout")
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = _handler("stderr")
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler._alexnet_deploy = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False  # the command line owns the output; no second copy through the root logger
