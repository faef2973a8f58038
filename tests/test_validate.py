"""validate: every CPU artifact matches torch eager; wrong or tampered artifacts fail loudly.

Uses the session fixture `exported_dir` (every CPU format of trained demo weights, 64 px,
max batch 8). Broken exports are partial copies of it: the weights are linked, not copied.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Manifest, hash_artifact
from alexnet_deploy.runtimes import RUNNERS, get_runner, runners_for
from alexnet_deploy.validate import batch_sizes_for, list_runners, split_batches, validate

DESIGN_RESULT_KEYS = {"backend", "format", "precision", "passed", "max_abs", "max_rel", "p99_abs",
                      "min_atol", "cosine", "top1_agreement", "top5_overlap", "accuracy_top1",
                      "reference_accuracy_top1", "failures", "status", "reason", "computes_in",
                      "first_divergence"}
IMAGES = "20"


def cpu_choices(export: Path):
    return [c for c in runners_for(Manifest.read(export)) if c.available and RUNNERS[c.runner].device == "cpu"]


def onnx_cpu_runner(export: Path) -> str:
    names = [c.runner for c in cpu_choices(export) if c.artifact.format == "onnx"
             and c.artifact.precision == "fp32"]
    if not names:
        pytest.skip("no CPU runner for an fp32 ONNX artifact is available here")
    return names[0]


def partial_copy(src: Path, dst: Path, fmt: str, precision: str) -> tuple[Path, Manifest]:
    """An export folder at `dst` holding only the weights (linked) and one artifact (copied)."""
    manifest = Manifest.read(src)
    found = manifest.find(fmt, precision)
    if not found:
        pytest.skip(f"the export has no {fmt} {precision} artifact")
    art = found[0]
    dst.mkdir(parents=True)
    weights = manifest.weights_artifact().path
    os.link(src / weights, dst / weights)  # a hard link: a symlink out of the folder is refused
    for rel in [art.path, *art.extra.get("files", {})]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    manifest.artifacts, manifest.skipped = [art], []
    manifest.write(dst)
    return dst, Manifest.read(dst)


# ---------------------------------------------------------------------------------------------
# Every CPU runner against eager, through the real command
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(exported_dir, tmp_path_factory):
    report = tmp_path_factory.mktemp("validate") / "validation.json"
    proc = run_cli("validate", exported_dir, "--images", IMAGES, "--report", report)
    return proc, report


@pytest.mark.slow
def test_every_available_cpu_runner_passes_against_eager(full_run, exported_dir):
    proc, report = full_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["passed"] is True
    checked = {(r["backend"], r["format"], r["precision"]) for r in data["results"] if r["status"] == "OK"}
    expected = {(c.runner, c.artifact.format, c.artifact.precision) for c in cpu_choices(exported_dir)}
    assert expected and checked == expected
    assert all(r["status"] == "SKIPPED" and r["reason"] for r in data["results"] if r["status"] != "OK")


@pytest.mark.slow
def test_report_json_and_markdown_carry_the_design_keys(full_run):
    proc, report = full_run
    data = json.loads(report.read_text())
    assert {"passed", "results"} <= set(data)
    for r in data["results"]:
        assert DESIGN_RESULT_KEYS <= set(r), DESIGN_RESULT_KEYS - set(r)
    ok = [r for r in data["results"] if r["status"] == "OK"]
    assert all(r["images"] == int(IMAGES) and r["accuracy_top1"] is not None for r in ok)
    md = report.with_suffix(".md").read_text()
    assert "| backend | format | precision | computes in | status |" in md
    for r in ok:
        shown = r["computes_in"] or "-"
        assert f"| {r['backend']} | {r['format']} | {r['precision']} | {shown} | OK |" in md
    assert "PASSED" in proc.stdout


@pytest.mark.slow
def test_int8_passes_within_its_limits(full_run):
    _, report = full_run
    int8 = [r for r in json.loads(report.read_text())["results"]
            if r["precision"] == "int8" and r["status"] != "SKIPPED"]
    if not int8:
        pytest.skip("the export has no int8 artifact with a runner available here")
    assert int8[0]["reference_accuracy_top1"] >= 0.9, "exported_dir's model should have learned the demo"
    for r in int8:
        assert r["status"] == "OK", r["failures"]
        assert r["limits"]["atol"] is None  # no elementwise limit for int8
        assert r["limits"]["max_accuracy_drop"] == 0.01  # a fraction: one percentage point
        assert r["top1_agreement"] >= 0.98 and r["accuracy_drop"] <= 0.01


@pytest.mark.slow
def test_accuracy_drop_is_a_fraction_and_shown_in_points(full_run):
    _, report = full_run
    ok = [r for r in json.loads(report.read_text())["results"] if r["status"] == "OK"]
    assert ok
    for r in ok:
        drop = r["reference_accuracy_top1"] - r["accuracy_top1"]
        assert r["accuracy_drop"] == pytest.approx(drop, abs=1e-12), r  # a fraction, not points
        assert 0 <= r["accuracy_top1"] <= 1 and -1 <= r["accuracy_drop"] <= 1
    md = report.with_suffix(".md").read_text()
    assert "acc drop (pts)" in md and "accuracy drop <= 1 pts" in md  # points, made at render time


@pytest.mark.slow
def test_dynamic_batch_is_exercised_with_1_a_non_power_of_two_and_the_max(full_run, exported_dir):
    _, report = full_run
    manifest = Manifest.read(exported_dir)
    for r in json.loads(report.read_text())["results"]:
        if r["status"] == "OK" and r["format"] != "weights":
            art = next(a for a in manifest.artifacts if a.path == r["artifact"])
            hi = art.batch["max"]
            assert r["batch_sizes"] == sorted({1, min(3, hi), hi}), r


# ---------------------------------------------------------------------------------------------
# Broken artifacts
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_artifact_with_one_wrong_weight_fails_elementwise_and_agreement(exported_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    runner = onnx_cpu_runner(exported_dir)
    export, manifest = partial_copy(exported_dir, tmp_path / "wrong", "onnx", "fp32")
    art = manifest.artifacts[0]
    model = onnx.load(str(exported_dir / art.path))  # external data, if any, is read from the source
    n = manifest.card.num_classes
    bias = next(t for t in model.graph.initializer if list(t.dims) == [n])  # the last layer's bias
    value = numpy_helper.to_array(bias).copy()
    value[0] += 100.0  # one number: class 0 now wins every image
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))
    for rel in art.extra.pop("files", {}):
        (export / rel).unlink()
    onnx.save(model, str(export / art.path))  # inline: the hash below covers everything
    art.sha256, art.bytes = hash_artifact(export / art.path)
    manifest.write(export)

    report = validate(export, images=int(IMAGES), backends=[runner])
    [result] = [r for r in report.results if r.backend == runner]
    assert not report.passed and result.status == "FAIL"
    assert any(f.startswith("elementwise") for f in result.failures), result.failures
    assert any(f.startswith("top-1 agreement") for f in result.failures), result.failures
    assert result.max_abs >= 99 and result.top1_agreement < 1.0


@pytest.fixture
def tampered(exported_dir, tmp_path) -> tuple[Path, str]:
    export, manifest = partial_copy(exported_dir, tmp_path / "tampered", "onnx", "fp32")
    rel = manifest.artifacts[0].path
    with open(export / rel, "r+b") as f:  # bytes changed, hash not updated
        f.seek(os.path.getsize(export / rel) // 2)
        f.write(b"\x00tampered\x00")
    return export, rel


def test_a_tampered_file_fails_integrity_naming_it_without_loading(tampered, exported_dir, tmp_path):
    export, rel = tampered
    runner = onnx_cpu_runner(exported_dir)
    report = validate(export, images=0, backends=[runner])
    [result] = [r for r in report.results if r.backend == runner]
    assert result.status == "FAIL"
    assert result.reason.startswith(f"integrity: {rel} has sha256"), result.reason
    assert result.load_s is None  # never loaded


def test_cli_exit_1_on_a_failed_check_with_one_line(tampered, exported_dir, tmp_path):
    export, rel = tampered
    report = tmp_path / "r" / "v.json"
    proc = run_cli("validate", export, "--images", "0", "--backends", onnx_cpu_runner(exported_dir),
                   "--report", report)
    assert_user_error(proc, "integrity", rel, code=1)
    assert json.loads(report.read_text())["passed"] is False
    assert report.with_suffix(".md").is_file()


def test_tampered_reference_weights_stop_validation(exported_dir, tmp_path):
    export = tmp_path / "badweights"
    export.mkdir()
    manifest = Manifest.read(exported_dir)
    manifest.artifacts = []
    manifest.weights = {**manifest.weights, "sha256": "0" * 64}
    os.link(exported_dir / manifest.weights_artifact().path, export / manifest.weights_artifact().path)
    manifest.write(export)
    with pytest.raises(CheckFailed, match="reference weights.*integrity"):
        validate(export, images=0)


def test_fail_fast_stops_after_the_first_failure(tampered, exported_dir):
    export, _ = tampered
    onnx_runners = [c.runner for c in cpu_choices(exported_dir)
                    if c.artifact.format == "onnx" and c.artifact.precision == "fp32"]
    if len(onnx_runners) < 2:
        pytest.skip("needs two CPU runners for ONNX (onnxruntime-cpu and openvino)")
    report = validate(export, images=0, backends=onnx_runners, fail_fast=True)
    statuses = [r.status for r in report.results]
    first = statuses.index("FAIL")
    assert statuses.count("FAIL") == 1
    rest = report.results[first + 1:]
    assert rest and all(r.status == "SKIPPED" and "--fail-fast" in r.reason for r in rest)


# ---------------------------------------------------------------------------------------------
# Usage errors (exit 2), --list, the runner's input checks
# ---------------------------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path):
    # checked against the registry while the options are parsed, before any folder is read
    proc = run_cli("validate", tmp_path, "--backends", "no-such-runner")
    assert_user_error(proc, "unknown backend 'no-such-runner'", *list(RUNNERS)[:3])
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_max_accuracy_drop_takes_a_fraction(tmp_path, value):
    """1 meant one point before accuracies became fractions: now it is refused, not 100 points."""
    proc = run_cli("validate", tmp_path, "--max-accuracy-drop", value)
    assert_user_error(proc, "--max-accuracy-drop", "0.01 is one percentage point")
    with pytest.raises(UserError, match="takes a fraction"):
        validate(tmp_path, max_accuracy_drop=float(value))


def test_backends_help_lists_the_registered_runners():
    proc = run_cli("validate", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert all(name in text for name in RUNNERS)


def test_bad_folders_are_user_errors(exported_dir, tmp_path):
    with pytest.raises(UserError, match="export folder not found"):
        validate(tmp_path / "nowhere")
    with pytest.raises(UserError, match="manifest.json"):
        validate(tmp_path)
    with pytest.raises(UserError, match="not found"):
        validate(exported_dir, data_dir=tmp_path / "missing")


def test_a_named_backend_that_cannot_run_here_is_a_user_error(exported_dir):
    unavailable = [c for c in runners_for(Manifest.read(exported_dir)) if not c.available]
    if not unavailable:
        pytest.skip("every runner that applies to this export can run here")
    c = unavailable[0]
    with pytest.raises(UserError, match=f"backend {c.runner} cannot run here: {c.reason}"):
        validate(exported_dir, backends=[c.runner])


def test_list_shows_every_runner_with_availability(exported_dir):
    rows = list_runners(exported_dir)
    choices = runners_for(Manifest.read(exported_dir))
    assert {(r["backend"], r["artifact"]) for r in rows if "-" not in (r["backend"], r["artifact"])} == \
        {(c.runner, c.artifact.path) for c in choices}
    assert {r["backend"] for r in rows} - {"-"} == set(RUNNERS)  # runners with nothing to run say so
    no_runner = {a.path for a in Manifest.read(exported_dir).artifacts
                 if not any(cls.accepts(a) for cls in RUNNERS.values())}
    assert {r["artifact"] for r in rows if r["backend"] == "-"} == no_runner  # e.g. Triton folders
    assert all(r["available"] == (r["reason"] == "") for r in rows)
    proc = run_cli("validate", exported_dir, "--list")
    assert proc.returncode == 0, proc.stderr
    for name in RUNNERS:
        assert name in proc.stdout


def test_a_wrong_input_shape_gets_the_runners_clear_error(exported_dir):
    manifest = Manifest.read(exported_dir)
    name = onnx_cpu_runner(exported_dir)
    art = manifest.find("onnx", "fp32")[0]
    c, h, w = manifest.card.input.shape
    with get_runner(name).from_artifact(manifest, art) as runner:
        with pytest.raises(UserError, match=rf"expected input of shape \(N, {c}, {h}, {w}\), "
                                            rf"got \(2, {c}, {h // 2}, {w // 2}\)"):
            runner.infer(np.zeros((2, c, h // 2, w // 2), np.float32))
        with pytest.raises(UserError, match="float32"):
            runner.infer(np.zeros((2, c, h, w), np.float64))


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------
def test_batches_cycle_through_the_sizes():
    slices = split_batches(12, [1, 3, 8])
    assert [s.stop - s.start for s in slices] == [1, 3, 8]
    assert [s.stop - s.start for s in split_batches(10, [1, 3])] == [1, 3, 1, 3, 1, 1]


def test_default_batch_sizes_follow_the_artifacts_range():
    from alexnet_deploy.manifest import Artifact

    def art(lo, hi):
        return Artifact("onnx", "fp32", "cpu", "x.onnx", batch={"min": lo, "max": hi})

    assert batch_sizes_for(art(1, 8), None) == [1, 3, 8]
    assert batch_sizes_for(art(1, 1), None) == [1]
    assert batch_sizes_for(art(1, 1 << 16), None) == [1, 3, 64]
    assert batch_sizes_for(art(1, 1 << 16), None, cap=8) == [1, 3, 8]  # the weights: as the export
    assert batch_sizes_for(art(1, 8), [2, 16]) == [2]  # sizes beyond the range are left out
