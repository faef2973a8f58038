"""Every architecture the same way: the AlexNets and torchvision classifiers by name, built,
exported (torchscript, onnx fp32, OpenVINO IR), run by their runtimes at batch 1 and 3 against
the eager module, found again from a bare state dict, and costed from the model itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_one_line, cli

from alexnet_deploy.exporters import EXPORTERS, ExportContext
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.models import InputSpec, ModelCard, build_model, load_weights, save_weights
from alexnet_deploy.runtimes import runners_for
from alexnet_deploy.tolerances import limits_for

# (architecture, input size): small where the architecture allows; alexnet-384 takes 224 only.
ARCHS = [("alexnet", 64), ("alexnet-2012", 64), ("alexnet-384", 224), ("resnet18", 64),
         ("mobilenet_v3_small", 64)]
CPU_RUNNERS = ["torchscript", "torch-export", "onnxruntime-cpu", "openvino"]
# Operators an architecture's ONNX and OpenVINO IR must hold as themselves: alexnet-2012's Local
# Response Normalization is one LRN node each (TensorRT and OpenVINO run it natively), not the
# Pad / AveragePool / Pow / Div that torch.onnx would decompose it into.
NATIVE_OPS = {"alexnet-2012": {"LRN": 2}}


def _export(arch: str, size: int, out) -> tuple[Manifest, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(arch, 6).eval()
    card = ModelCard(arch=arch, num_classes=6, input=InputSpec.for_size(size))
    save_weights(model, card, out / "weights.safetensors")
    ctx = ExportContext(model=model, card=card, out=out, max_batch=3)
    arts = [*EXPORTERS["torchscript"]().export(ctx), *EXPORTERS["torch-export"]().export(ctx),
            EXPORTERS["onnx"]()._export_torch(ctx, model, "fp32")]
    ctx.artifacts.extend(arts)
    arts += EXPORTERS["openvino"]().export(ctx)  # fp32 IR (no int8 ONNX to quantise from here)
    return Manifest(card=card, weights={"path": "weights.safetensors"}, artifacts=arts, root=out), model


@pytest.mark.slow
@pytest.mark.parametrize("arch, size", ARCHS, ids=[a for a, _ in ARCHS])
def test_architecture_exports_and_every_runtime_matches_eager_at_batch_1_and_3(arch, size, tmp_path):
    manifest, model = _export(arch, size, tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    limits = limits_for("fp32")
    ran = set()
    for choice in runners_for(manifest, CPU_RUNNERS):
        with choice.runner_cls.from_artifact(manifest, choice.artifact) as runner:
            for n in (1, 3):
                y = runner.infer(np.ascontiguousarray(x[:n]))
                np.testing.assert_allclose(y, ref[:n], atol=limits.atol, rtol=limits.rtol,
                                           err_msg=f"{arch} {choice.runner} batch {n}")
        ran.add(choice.runner)
    assert ran == set(CPU_RUNNERS)
    _assert_native_ops(manifest, NATIVE_OPS.get(arch, {}))


def _assert_native_ops(manifest: Manifest, expected: dict[str, int]) -> None:
    import onnx
    import openvino as ov

    onnx_ops = [n.op_type for n in onnx.load(str(manifest.path_of(manifest.find("onnx", "fp32")[0]))).graph.node]
    ir = manifest.path_of(manifest.find("openvino", "fp32")[0])
    ir_ops = [op.get_type_name() for op in ov.Core().read_model(str(ir)).get_ops()]
    for op, count in expected.items():
        assert onnx_ops.count(op) == count, onnx_ops
        assert ir_ops.count(op) == count, ir_ops
    if expected:
        assert not {"Pow", "AveragePool", "Pad"} & set(onnx_ops), onnx_ops


@pytest.mark.parametrize("arch", [a for a, _ in ARCHS])
def test_a_bare_state_dict_of_each_architecture_is_detected(arch, tmp_path):
    torch.save(build_model(arch, 11).state_dict(), tmp_path / f"{arch}.pth")
    _, card = load_weights(tmp_path / f"{arch}.pth")
    assert (card.arch, card.num_classes) == (arch, 11)


def test_torchvision_input_defaults_come_from_its_weights_meta(tmp_path):
    torch.save(build_model("inception_v3", 4).state_dict(), tmp_path / "inception.pth")
    _, card = load_weights(tmp_path / "inception.pth")
    assert (card.input.crop, card.input.resize, card.input.shape) == (299, 342, [3, 299, 299])


@pytest.mark.parametrize("arch, size, expected", [("inception_v3", None, (299, 342)), ("inception_v3", 150, (150, 172)),
                                                  ("alexnet", None, (224, 256)), ("resnet18", 64, (64, 73))])
def test_training_takes_the_architectures_own_input_unless_told(arch, size, expected):
    """train without --image-size trains Inception at 299 (342 resize), not at everyone's 224."""
    from alexnet_deploy.training import TrainConfig, training_input

    cfg = TrainConfig(data="unused", out="unused", arch=arch, image_size=size)
    spec = training_input(cfg)
    assert (cfg.image_size, (spec.crop, spec.resize)) == (expected[0], expected)
    assert spec.shape == [3, expected[0], expected[0]]


@pytest.mark.parametrize("arch, weights", [("alexnet", "AlexNet_Weights"), ("resnet18", "ResNet18_Weights"),
                                           ("mobilenet_v3_small", "MobileNet_V3_Small_Weights")])
def test_multiply_adds_and_parameters_match_torchvisions_published_figures(arch, weights):
    import torchvision

    from alexnet_deploy.bench.roofline import model_cost

    meta = getattr(torchvision.models, weights).IMAGENET1K_V1.meta
    cost = model_cost(arch, 1000, 224)
    assert cost.macs / 1e9 == pytest.approx(meta["_ops"], rel=0.01)
    assert cost.params == meta["num_params"]


def test_fine_tuning_a_torchvision_model_replaces_only_its_head(tmp_path):
    theirs = build_model("resnet18", 1000).eval()
    torch.save(theirs.state_dict(), tmp_path / "r18.pth")
    ours, card = load_weights(tmp_path / "r18.pth", num_classes=3)
    assert ours.fc.out_features == 3 and card.num_classes == 3
    torch.testing.assert_close(ours.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight, rtol=0, atol=0)


@pytest.mark.parametrize("arch, size, why", [
    ("vit_b_16", 64, "Wrong image height! Expected 224 but got 64"),  # a fixed patch grid
    ("inception_v3", 64, "Kernel size can't be greater than actual input size"),  # too small for its strides
])
def test_an_input_size_an_architecture_cannot_run_is_refused_before_training(arch, size, why, demo_data, tmp_path):
    r = cli("train", "--data", demo_data, "--out", tmp_path / "run", "--arch", arch, "--image-size", size)
    assert r.code == 2
    assert_one_line(r.err, f"{arch} does not take {size} px inputs", why, "--image-size")
    assert not (tmp_path / "run" / "weights.safetensors").exists()


@pytest.mark.slow
def test_googlenet_trains_with_its_auxiliary_classifiers_and_exports_its_main_logits(demo_data, tmp_path):
    """In training mode GoogLeNet returns main and auxiliary logits (a named tuple): each auxiliary
    loss adds 0.3 of itself; the exported model (eval mode) returns the main logits only."""
    from alexnet_deploy.training import AUX_LOSS_WEIGHT, training_loss

    model = build_model("googlenet", 10).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    out = model(x)
    ce = torch.nn.functional.cross_entropy
    assert len(out) == 3 and isinstance(out.logits, torch.Tensor)
    expected = ce(out.logits, y) + AUX_LOSS_WEIGHT * (ce(out.aux_logits1, y) + ce(out.aux_logits2, y))
    torch.testing.assert_close(training_loss(ce, out, y), expected)

    run, out_dir = tmp_path / "run", tmp_path / "E"
    r = cli("train", "--data", demo_data, "--out", run, "--arch", "googlenet", "--image-size", 64,
            "--epochs", 1, "--batch-size", 16, "--workers", 0)
    assert r.code == 0, r.err[-2000:]
    r = cli("export", run / "weights.safetensors", "--out", out_dir, "--formats", "torchscript", "--max-batch", 2)
    assert r.code == 0, r.err[-2000:]
    scripted = torch.jit.load(str(out_dir / "googlenet.torchscript.pt"))
    assert tuple(scripted(torch.randn(2, 3, 64, 64)).shape) == (2, 10)
