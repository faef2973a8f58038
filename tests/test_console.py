"""The one logging set-up and console factory: progress on stdout, warnings on stderr as one
`warning: ...` line each (so a failing command's stderr stays its one error line), tables at a
width that does not wrap in logs."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from alexnet_deploy.console import PIPE_WIDTH, make_console, setup_logging


@pytest.fixture
def log():
    yield logging.getLogger("alexnet_deploy.some_module")
    setup_logging()  # back to the default level for the tests after


def test_progress_goes_to_stdout_and_warnings_to_stderr(log, capfd):
    setup_logging()
    log.info("exporting onnx ...")
    log.debug("not shown without --debug")
    log.warning("3 of 10 classes hold a single image")
    out, err = capfd.readouterr()
    assert out == "exporting onnx ...\n"
    assert err == "warning: 3 of 10 classes hold a single image\n"


def test_debug_shows_debug_records(log, capfd):
    setup_logging(debug=True)
    log.debug("details")
    assert capfd.readouterr().out == "details\n"


def test_setting_up_again_keeps_one_handler_per_stream(log, capfd):
    for _ in range(3):  # every in-process command calls it
        setup_logging()
    log.info("once")
    log.error("once too")
    out, err = capfd.readouterr()
    assert out == "once\n" and err == "warning: once too\n"
    ours = [h for h in logging.getLogger("alexnet_deploy").handlers if getattr(h, "_alexnet_deploy", False)]
    assert len(ours) == 2


def test_records_follow_streams_redirected_after_set_up(log, monkeypatch):
    setup_logging()
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    log.info("to the new stdout")
    log.warning("to the new stderr")
    assert out.getvalue() == "to the new stdout\n" and err.getvalue() == "warning: to the new stderr\n"


def test_a_long_record_is_one_line_in_a_pipe(log, capfd):
    setup_logging()
    long_path = "/data/" + "x" * 400 + ".png"
    log.warning(f"{long_path} is 43 x 31 (1333 pixels), over Pillow's limit")
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and long_path in err


def test_console_width_off_a_terminal():
    assert make_console().width == PIPE_WIDTH  # pytest's stdout is no terminal
    assert make_console(min_width=PIPE_WIDTH + 20).width == PIPE_WIDTH + 20
