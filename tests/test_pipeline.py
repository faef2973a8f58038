"""The whole job at a tiny size, through the real CLI, including resume after a failed step."""

import json

import pytest
from conftest import assert_user_error, run_cli

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_step_and_resumes_after_a_failure(tmp_path, demo_data):
    out = tmp_path / "pipe"
    # A step that fails (an unknown export format) stops the pipeline and names the step and log.
    failed = run_cli("pipeline", "--data", demo_data, "--out", out, "--quick", "--formats", "nonsense")
    assert_user_error(failed, "pipeline step 'export' failed", "log.txt")
    state = json.loads((out / "pipeline.json").read_text())
    assert state["steps"]["train"]["status"] == "OK"
    assert state["steps"]["export"]["status"] == "FAIL"
    assert "unknown format" in (out / "export" / "log.txt").read_text()
    weights = out / "train" / "weights.safetensors"
    trained_at = weights.stat().st_mtime_ns

    # The rerun resumes after the last completed step: training is not repeated.
    ok = run_cli("pipeline", "--data", demo_data, "--out", out, "--quick", "--formats", "torchscript,torch-export")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "train already done" in ok.stdout
    assert weights.stat().st_mtime_ns == trained_at

    report = json.loads((out / "report.json").read_text())
    assert report["train"]["epochs"] == 1
    assert report["train"]["test_top1"] is not None  # the final test figures reach the report
    assert {a["format"] for a in report["export"]["artifacts"]} == {"torchscript", "torch-export"}
    assert report["validate"]["passed"] is True
    assert {r["backend"] for r in report["benchmark"]["results"]} >= {"torchscript", "torch-export"}
    md = (out / "report.md").read_text()
    for section in ("## Training", "## Formats and validation", "## Benchmark", "## Machine"):
        assert section in md
    assert "train/curves.png" in md and (out / "train" / "curves.png").is_file()


def test_pipeline_bad_data_is_one_line(tmp_path):
    proc = run_cli("pipeline", "--data", tmp_path / "missing", "--out", tmp_path / "o", "--quick")
    assert_user_error(proc, "data folder not found")
