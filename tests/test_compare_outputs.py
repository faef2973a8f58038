"""`alexnet-deploy compare`: logits another program computed, judged by validate's rules against the
export's torch eager reference (the C++ tests use it on the programs' --dump-logits)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_user_error, cli

from alexnet_deploy.manifest import Manifest
from alexnet_deploy.runtimes import get_runner


@pytest.fixture(scope="module")
def computed_elsewhere(random_export, tmp_path_factory):
    """5 inputs (not a batch size anyone picked) and the ONNX Runtime runner's logits for them, saved
    as another program would save them."""
    folder = tmp_path_factory.mktemp("elsewhere")
    manifest = Manifest.read(random_export)
    x = np.random.default_rng(7).standard_normal((5, *manifest.card.input.shape)).astype(np.float32)
    onnx = next(a for a in manifest.find("onnx", "fp32"))
    with get_runner("onnxruntime-cpu").from_artifact(manifest, onnx) as runner:
        y = np.concatenate([runner.infer(x[:4]), runner.infer(x[4:])])  # the export's max batch is 4
    np.save(folder / "inputs.npy", x)
    np.save(folder / "outputs.npy", y)
    return folder, x, y


def test_outputs_computed_elsewhere_pass_with_validates_figures(random_export, computed_elsewhere, tmp_path):
    folder, _, _ = computed_elsewhere
    report = tmp_path / "comparison.json"
    r = cli("compare", random_export, "--inputs", folder / "inputs.npy", "--outputs", folder / "outputs.npy",
            "--label", "ort elsewhere", "--report", report)
    assert r.returncode == 0, r.stderr
    assert "PASSED: ort elsewhere against torch eager fp32 on the 5 inputs" in r.stdout
    data = json.loads(report.read_text())
    (row,) = data["results"]
    assert data["passed"] and row["status"] == "OK" and row["backend"] == "ort elsewhere"
    assert row["max_abs"] < 1e-4 and row["top1_agreement"] == 1.0 and row["limits"]["atol"] == 1e-4
    assert report.with_suffix(".md").exists()


def test_a_planted_fault_fails_with_the_limit_it_broke(random_export, computed_elsewhere, tmp_path):
    """Two classes swapped in one row: exit 1, the elementwise and top-1 limits named."""
    folder, _, y = computed_elsewhere
    bad = y.copy()
    top, second = np.argsort(bad[2])[-2:][::-1]
    bad[2, [top, second]] = bad[2, [second, top]]
    np.save(tmp_path / "swapped.npy", bad)
    r = cli("compare", random_export, "--inputs", folder / "inputs.npy", "--outputs", tmp_path / "swapped.npy")
    assert_user_error(r, "FAILED: swapped.npy", "elementwise", "top-1 agreement 80.00%", code=1)


def test_limits_are_the_precisions_row(random_export, computed_elsewhere, tmp_path):
    """A perturbation fp32 refuses and fp16's limits accept: the --precision row decides."""
    folder, _, y = computed_elsewhere
    np.save(tmp_path / "noisy.npy", y + np.float32(1e-3))
    args = ["compare", random_export, "--inputs", folder / "inputs.npy", "--outputs", tmp_path / "noisy.npy"]
    assert cli(*args).returncode == 1
    assert cli(*args, "--precision", "fp16").returncode == 0


@pytest.mark.parametrize("case, needle", [
    ("wrong input shape", "the model takes (N, 3, 64, 64)"),
    ("rows differ", "expected (5, 10)"),
    ("pickle", "not a readable .npy array"),
    ("integers", "not floating-point"),
    ("missing", "no such file"),
    ("nan inputs", "NaN or Inf"),
])
def test_bad_files_are_one_line_and_write_nothing(random_export, computed_elsewhere, tmp_path, case, needle):
    folder, x, y = computed_elsewhere
    inputs, outputs = folder / "inputs.npy", folder / "outputs.npy"
    if case == "wrong input shape":
        np.save(tmp_path / "x.npy", x[:, :, :32])
        inputs = tmp_path / "x.npy"
    elif case == "rows differ":
        np.save(tmp_path / "y.npy", y[:4])
        outputs = tmp_path / "y.npy"
    elif case == "pickle":
        np.save(tmp_path / "y.npy", np.array([{"not": "logits"}], dtype=object), allow_pickle=True)
        outputs = tmp_path / "y.npy"
    elif case == "integers":
        np.save(tmp_path / "y.npy", y.astype(np.int64))
        outputs = tmp_path / "y.npy"
    elif case == "missing":
        outputs = tmp_path / "y.npy"
    else:
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        np.save(tmp_path / "x.npy", bad)
        inputs = tmp_path / "x.npy"
    report = tmp_path / "report.json"
    r = cli("compare", random_export, "--inputs", inputs, "--outputs", outputs, "--report", report)
    assert_user_error(r, needle)
    assert len([line for line in r.stderr.splitlines() if line.startswith("error: ")]) == 1, r.stderr
    assert not report.exists()


def test_the_python_api_returns_validates_report(random_export, computed_elsewhere):
    import alexnet_deploy as ad

    folder, _, _ = computed_elsewhere
    report = ad.compare_outputs(random_export, folder / "inputs.npy", folder / "outputs.npy")
    assert report.passed and report.results[0].top1_agreement == 1.0
    with pytest.raises(ad.UserError, match="choose from"):
        ad.compare_outputs(random_export, folder / "inputs.npy", folder / "outputs.npy", precision="fp8")
