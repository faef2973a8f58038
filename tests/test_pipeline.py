"""The whole job at a tiny size, through the real CLI, including resume after a failed step."""

import json

import pytest
from conftest import assert_user_error, run_cli

from alexnet_deploy.errors import UserError


@pytest.mark.slow
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

    # Resumed with the same settings: nothing runs again.
    same = run_cli("pipeline", "--data", demo_data, "--out", out, "--quick", "--formats", "torchscript,torch-export")
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    for step in ("train", "export", "validate", "benchmark"):
        assert f"{step} already done" in same.stdout
    # Resumed with other settings: which steps rerun is test_resume_reruns_a_step_whose_settings_changed_...
    # below (the step commands faked: a third real run would only repeat it at a minute's cost).


@pytest.mark.slow
def test_pipeline_bad_data_is_one_line(tmp_path):
    proc = run_cli("pipeline", "--data", tmp_path / "missing", "--out", tmp_path / "o", "--quick")
    assert_user_error(proc, "data folder not found")


# ---------------------------------------------------------------------------------------------
# Resume keyed on settings: which steps a rerun repeats (the step commands themselves faked)
# ---------------------------------------------------------------------------------------------
ALL = ["data", "train", "export", "validate", "benchmark"]


@pytest.fixture
def fake_steps(monkeypatch):
    """Every step's command replaced by one that only writes its log: returns the argv of each
    step run, in order, and the exit code each step's command gives."""
    import alexnet_deploy.pipeline.steps as steps

    ran: list[list[str]] = []
    codes: dict[str, int] = {}

    def run_logged(argv, log):
        ran.append(argv)
        log.write_text(steps.LOG_HEAD + " ".join(argv) + "\n")
        return codes.get(argv[0], 0)

    monkeypatch.setattr(steps, "run_logged", run_logged)
    return ran, codes


def _steps_run(ran) -> list[str]:
    names = {"demo": "data", "train": "train", "export": "export", "validate": "validate",
             "benchmark": "benchmark"}
    done = [names[a[1] if a[0] == "data" else a[0]] for a in ran]
    ran.clear()
    return done


def _flag(ran, command: str, flag: str) -> str:
    (argv,) = [a for a in ran if a[0] == command]
    return argv[argv.index(flag) + 1]


def test_resume_reruns_a_step_whose_settings_changed_and_the_steps_that_consume_it(tmp_path, fake_steps,
                                                                                   monkeypatch):
    import alexnet_deploy.pipeline.steps as steps
    from alexnet_deploy.pipeline import run_pipeline

    ran, codes = fake_steps
    out = tmp_path / "pipe"
    run_pipeline(out, formats=["torchscript"], quick=True)
    assert _steps_run(ran) == ALL
    run_pipeline(out, formats=["torchscript"], quick=True)
    assert _steps_run(ran) == [], "unchanged settings resume: nothing is redone"

    run_pipeline(out, formats=["torchscript"], epochs=2, quick=True)
    assert _flag(ran, "train", "--epochs") == "2"
    assert _steps_run(ran) == ["train", "export", "validate", "benchmark"]
    run_pipeline(out, formats=["onnx"], epochs=2, quick=True)
    assert _flag(ran, "export", "--formats") == "onnx"
    assert _steps_run(ran) == ["export", "validate", "benchmark"]

    # a step's own sizes: only that step, since nothing consumes validate's or benchmark's output
    monkeypatch.setitem(steps.QUICK_STEPS, "validate_images", 7)
    run_pipeline(out, formats=["onnx"], epochs=2, quick=True)
    assert _flag(ran, "validate", "--images") == "7"
    assert _steps_run(ran) == ["validate"]
    monkeypatch.setitem(steps.QUICK_STEPS, "bench_duration_s", 0.2)
    run_pipeline(out, formats=["onnx"], epochs=2, quick=True)
    assert _steps_run(ran) == ["benchmark"]

    # another architecture is a training setting: train and what consumes it rerun
    run_pipeline(out, formats=["onnx"], epochs=2, quick=True, arch="resnet18")
    assert _flag(ran, "train", "--arch") == "resnet18"
    assert _steps_run(ran) == ["train", "export", "validate", "benchmark"]

    # the data recipe (--quick off) regenerates the data, and everything after it reruns
    run_pipeline(out, formats=["onnx"], epochs=2, arch="resnet18")
    assert _steps_run(ran) == ALL
    state = json.loads((out / "pipeline.json").read_text())
    assert state["steps"]["train"]["settings"]["epochs"] == 2
    assert state["steps"]["export"]["settings"]["formats"] == ["onnx"]
    assert state["steps"]["export"]["inputs"] == {"train": state["steps"]["train"]["run"]}


def test_a_step_redone_after_a_failure_reruns_the_steps_after_it(tmp_path, fake_steps):
    from alexnet_deploy.pipeline import run_pipeline

    ran, codes = fake_steps
    out = tmp_path / "pipe"
    run_pipeline(out, formats=["torchscript"], quick=True)
    _steps_run(ran)
    codes["export"] = 2  # the new formats fail to export: validate's record is now stale
    with pytest.raises(UserError, match="pipeline step 'export' failed"):
        run_pipeline(out, formats=["onnx"], quick=True)
    assert _steps_run(ran) == ["export"]
    del codes["export"]
    # back to the first settings: export's folder is rebuilt, so what read it runs again too
    run_pipeline(out, formats=["torchscript"], quick=True)
    assert _steps_run(ran) == ["export", "validate", "benchmark"]


def test_records_without_settings_are_redone(tmp_path, fake_steps):
    """A pipeline.json of a version that did not record settings cannot vouch for its steps."""
    from alexnet_deploy.pipeline import run_pipeline

    ran, _ = fake_steps
    out = tmp_path / "pipe"
    run_pipeline(out, formats=["torchscript"], quick=True)
    _steps_run(ran)
    state = json.loads((out / "pipeline.json").read_text())
    for rec in state["steps"].values():
        for key in ("settings", "inputs", "run"):
            rec.pop(key)
    (out / "pipeline.json").write_text(json.dumps(state))
    run_pipeline(out, formats=["torchscript"], quick=True)
    assert _steps_run(ran) == ALL
