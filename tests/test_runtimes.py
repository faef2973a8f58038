"""The runners validate, benchmark and predict share: each CPU runner answers for batch 1, 3 and
the artifact's max batch as eager PyTorch does, refuses wrong input clearly, and says why it cannot
run when it cannot; a runner is built from a file and a card (no manifest), declares what it can
do, checks the input its model declares against the card, and puts back the process-wide torch
settings it changed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from standins import CARD, MAX_BATCH, tiny_onnx, tiny_onnx_export

from alexnet_deploy.backends.torch.runner import CudaMixin, TorchEagerRunner, TorchExportRunner
from alexnet_deploy.backends.torch.util import TorchGlobals
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import BatchRange, Manifest
from alexnet_deploy.models import InputSpec, ModelCard, read_card
from alexnet_deploy.runtimes import RUNNERS, Runner, get_runner, runners_for
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
            for n in (1, 3, art.batch.max if art.format != "weights" else 8):
                y = runner.infer(np.ascontiguousarray(x[:n]))
                assert y.shape == (n, manifest.card.num_classes) and y.dtype == np.float32
                if limits.atol is not None:
                    np.testing.assert_allclose(y, ref[:n], atol=limits.atol, rtol=limits.rtol,
                                               err_msg=f"{name} {art.key} batch {n}")
                else:  # int8 has no elementwise limit; batching must still not change a row
                    row = runner.infer(np.ascontiguousarray(x[n - 1:n]))
                    np.testing.assert_allclose(y[n - 1:n], row, atol=1e-3, rtol=1e-2)
            # the same batch held channels-last in memory (as torchvision's transforms leave images):
            # the same answer, never a misread buffer
            channels_last = np.ascontiguousarray(x[:n].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            assert not channels_last.flags.c_contiguous
            np.testing.assert_allclose(runner.infer(channels_last), y, atol=1e-5, rtol=1e-5,
                                       err_msg=f"{name} {art.key}: a channels-last batch")
            if runner.device_tensors:
                on_device = runner.infer_device(torch.from_numpy(channels_last).to(runner.device))
                np.testing.assert_allclose(on_device.float().cpu().numpy(), y, atol=1e-5, rtol=1e-5,
                                           err_msg=f"{name} {art.key}: a channels-last device tensor")


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
            assert runner.runtime_precision() == "f32" and runner.effective_precision == "fp32"
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


# -- built from what it runs -------------------------------------------------------------------
def test_a_runner_needs_a_file_and_a_card_not_a_manifest(random_weights):
    from alexnet_deploy.models import load_weights

    model, card = load_weights(random_weights)
    x = np.random.default_rng(1).standard_normal((2, *card.input.shape)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    runner = TorchEagerRunner(random_weights, card, BatchRange(1, 4))
    assert runner.label == "torch-eager [fp32]" and runner.shown == random_weights.name
    with runner:
        np.testing.assert_allclose(runner.infer(x), ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(UserError, match="batch size 5 is outside the artifact's range 1..4"):
            runner.infer(np.zeros((5, *card.input.shape), np.float32))


def test_from_artifact_passes_what_the_manifest_entry_says(tmp_path):
    manifest, art = tiny_onnx_export(tmp_path)
    runner = get_runner("onnxruntime-cpu").from_artifact(manifest, art, threads=3)
    assert runner.path == tmp_path / art.path and runner.card == CARD and runner.threads == 3
    assert (runner.batch.min, runner.batch.max) == (1, MAX_BATCH) and runner.shown == art.path
    # openvino-bf16 computes an fp32 file in bf16: labelled bf16, told the file holds fp32
    bf16 = RUNNERS["openvino-bf16"]
    executed = bf16.as_executed(art)
    assert executed.precision == "bf16" and executed.extra["stored_precision"] == "fp32"
    runner = bf16.from_artifact(manifest, executed)
    assert (runner.precision, runner.effective_precision, runner.label) == ("fp32", "bf16", "openvino-bf16 [bf16]")


def test_choices_carry_the_runner_class(tmp_path):
    manifest, _ = tiny_onnx_export(tmp_path)
    choices = runners_for(manifest)
    assert choices
    for c in choices:
        assert c.runner_cls is RUNNERS[c.runner] and c.runner == c.runner_cls.name


# -- declared capabilities ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RUNNERS))
def test_declared_device_tensors_come_with_an_implementation(name):
    cls = RUNNERS[name]
    assert isinstance(cls.device_tensors, bool)
    assert cls.device_tensors == (cls.infer_device_impl is not Runner.infer_device_impl), name


def test_torch_cuda_runners_take_device_tensors():
    """What the benchmark relies on to time their CUDA compute apart from the copies."""
    cuda_torch = [cls for cls in RUNNERS.values() if issubclass(cls, CudaMixin)]
    assert cuda_torch and all(cls.device == "cuda" and cls.device_tensors for cls in cuda_torch)


def test_infer_device_on_cpu_tensors_matches_infer(random_weights):
    """The device-tensor path of torch runners, on the CPU (the CUDA one differs only in the device)."""
    card = read_card(random_weights)
    x = np.random.default_rng(2).standard_normal((3, *card.input.shape)).astype(np.float32)
    with TorchEagerRunner(random_weights, card) as runner:
        out = runner.infer_device(torch.from_numpy(x))
        assert isinstance(out, torch.Tensor) and out.shape == (3, card.num_classes)
        np.testing.assert_array_equal(out.numpy(), runner.infer(x))
        with pytest.raises(UserError, match=r"expected a float32 torch tensor on cpu, got torch.float64"):
            runner.infer_device(torch.zeros((1, *card.input.shape), dtype=torch.float64))
        with pytest.raises(UserError, match=r"expected input of shape \(N, 3, 64, 64\)"):
            runner.infer_device(torch.zeros((1, 3, 32, 32)))


def test_infer_device_is_refused_by_runners_that_take_host_arrays(tmp_path):
    manifest, art = tiny_onnx_export(tmp_path)
    with get_runner("onnxruntime-cpu").from_artifact(manifest, art) as runner:
        with pytest.raises(TypeError, match="onnxruntime-cpu takes host arrays only"):
            runner.infer_device(torch.zeros((1, *CARD.input.shape)))


# -- the loaded model's input against the card -------------------------------------------------
ONNX_CPU_RUNNERS = [n for n, cls in RUNNERS.items() if "onnx" in cls.formats and cls.device == "cpu"]


@pytest.mark.parametrize("name", ONNX_CPU_RUNNERS)
def test_declared_input_unlike_the_card_is_refused_at_activation(name, tmp_path):
    if reason := RUNNERS[name].unavailable_reason():
        pytest.skip(f"{name} cannot run here: {reason}")
    path = tmp_path / "model.onnx"
    tiny_onnx(path)  # takes 3x64x64
    card = ModelCard(num_classes=10, input=InputSpec.for_size(32))
    runner = RUNNERS[name](path, card)
    with pytest.raises(CheckFailed, match="the card's input is 3x32x32 but model.onnx takes 3x64x64"):
        runner.activate()
    assert not runner.active


def test_torch_export_program_input_is_checked_against_the_card(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, stride=8), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    net(torch.zeros(1, 3, 64, 64))
    program = torch.export.export(net.eval(), (torch.zeros(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=8)},))
    torch.export.save(program, tmp_path / "net.pt2")
    with TorchExportRunner(tmp_path / "net.pt2", CARD) as runner:  # 64 px: the program's own size
        assert runner.infer(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 10)
    small = ModelCard(num_classes=10, input=InputSpec.for_size(32))
    with pytest.raises(CheckFailed, match="the card's input is 3x32x32 but net.pt2 takes 3x64x64"):
        TorchExportRunner(tmp_path / "net.pt2", small).activate()


# -- process-wide torch settings ----------------------------------------------------------------
def test_torch_runner_puts_the_thread_count_back(random_weights):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with TorchEagerRunner(random_weights, read_card(random_weights), threads=wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before


class _CudaPolicyOnCpu(CudaMixin, TorchEagerRunner):
    """The CUDA runners' settings (CudaMixin) on the CPU device, so they can be checked without a GPU."""

    name = "torch-eager-cuda-policy-on-cpu"
    device = "cpu"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None


@pytest.fixture
def tf32_on():
    """The user's process allows TF32 (the legacy flags, as most scripts set them); put back after."""
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True
    yield
    b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved


def _tf32_switches() -> list[str]:
    b = torch.backends
    return [b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.cudnn.rnn.fp32_precision]


def test_cuda_runners_turn_tf32_off_while_active_and_back_on_after(tf32_on, random_weights):
    before = TorchGlobals.capture()
    with _CudaPolicyOnCpu(random_weights, read_card(random_weights)):
        assert _tf32_switches() == ["ieee"] * 3  # true fp32 while the runner is active
    assert TorchGlobals.capture() == before
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_settings_come_back_when_loading_fails(tf32_on, tmp_path):
    before = TorchGlobals.capture()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    runner = _CudaPolicyOnCpu(broken, CARD, threads=1 if before.threads != 1 else 2)
    with pytest.raises(UserError):
        runner.activate()
    assert TorchGlobals.capture() == before
