"""The runners validate, benchmark and predict share: each CPU runner answers for batch 1, 3 and
the artifact's max batch as eager PyTorch does, refuses wrong input clearly, and says why it cannot
run when it cannot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.runtimes import RUNNERS, get_runner, runners_for
from alexnet_deploy.tolerances import limits_for

CPU_RUNNERS = ["torch-eager", "torchscript", "torch-export", "aoti", "onnxruntime-cpu", "openvino"]


@pytest.fixture(scope="module")
def manifest(exported_dir) -> Manifest:
    return Manifest.read(exported_dir)


@pytest.fixture(scope="module")
def reference(manifest):
    """Eager logits for one seeded batch of the artifacts' max size."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, *manifest.card.input.shape)).astype(np.float32)
    with get_runner("torch-eager").from_artifact(manifest, manifest.weights_artifact()) as eager:
        return x, eager.infer(x)


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_RUNNERS)
def test_runner_matches_eager_at_batch_1_3_and_max(name, manifest, reference):
    x, ref = reference
    choices = [c for c in runners_for(manifest, [name]) if c.artifact.format != "weights"
               or name == "torch-eager"]
    if not choices:
        pytest.skip(f"the export holds no artifact {name} runs")
    for choice in choices:
        if not choice.available:
            pytest.skip(f"{name} cannot run here: {choice.reason}")
        art = choice.artifact
        limits = limits_for(art.precision)
        with RUNNERS[name].from_artifact(manifest, art) as runner:
            for n in (1, 3, art.batch["max"] if art.format != "weights" else 8):
                y = runner.infer(np.ascontiguousarray(x[:n]))
                assert y.shape == (n, manifest.card.num_classes) and y.dtype == np.float32
                if limits.atol is not None:
                    np.testing.assert_allclose(y, ref[:n], atol=limits.atol, rtol=limits.rtol,
                                               err_msg=f"{name} {art.key} batch {n}")
                else:  # int8 has no elementwise limit; batching must still not change a row
                    row = runner.infer(np.ascontiguousarray(x[n - 1:n]))
                    np.testing.assert_allclose(y[n - 1:n], row, atol=1e-3, rtol=1e-2)


def test_every_cpu_runner_is_registered_and_available_here():
    assert set(CPU_RUNNERS) <= set(RUNNERS)
    for name in CPU_RUNNERS:
        assert RUNNERS[name].unavailable_reason() is None, name
        assert RUNNERS[name].device == "cpu"


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((1, 3, 32, 32), np.float32), "expected input of shape (N, 3, 64, 64), got (1, 3, 32, 32)"),
    (np.zeros((1, 3, 64, 64), np.float64), "expected a float32 numpy array, got float64"),
    (np.zeros((3, 64, 64), np.float32), "got (3, 64, 64)"),
    (np.zeros((9, 3, 64, 64), np.float32), "batch size 9 is outside the artifact's range 1..8"),
])
def test_wrong_input_gets_a_clear_error(bad, needle, manifest):
    (art,) = manifest.find("onnx", "fp32")
    with get_runner("onnxruntime-cpu").from_artifact(manifest, art) as runner:
        with pytest.raises(UserError) as e:
            runner.infer(bad)
    assert needle in str(e.value) and "onnxruntime-cpu" in str(e.value)


def test_openvino_runs_fp32_in_fp32_and_reads_onnx_directly(manifest, reference):
    x, ref = reference
    for art in (manifest.find("openvino")[0], manifest.find("onnx", "fp32")[0]):
        with get_runner("openvino").from_artifact(manifest, art) as runner:
            assert runner.effective_precision == "f32"
            np.testing.assert_allclose(runner.infer(x[:2]), ref[:2], atol=1e-4, rtol=1e-3)


def test_compiled_torch_artifacts_need_their_device(manifest):
    (aoti,) = manifest.find("aoti")
    assert RUNNERS["aoti"].accepts(aoti) and not RUNNERS["aoti-cuda"].accepts(aoti)


def test_unavailable_runners_say_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the CUDA runners are available")
    for name in ("torch-eager-cuda", "aoti-cuda", "onnxruntime-cuda"):
        assert RUNNERS[name].unavailable_reason(), name


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(UserError, match="onnxruntime-cpu"):
        get_runner("tflite")


def test_listing_runners_imports_no_heavy_runtime():
    code = ("import sys, alexnet_deploy.runtimes; "
            "print(sorted(m for m in ('onnxruntime', 'openvino', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
