"""validate --layers on networks deeper than AlexNet: each module's limit grows with the square root
of its depth (the convolutions and Linears run up to it) and stops at a cap, so honest deep
artifacts diverge nowhere while a layer reading zeros still does; and an OpenVINO tap that its
CPU plugin computes wrongly beside other marked tensors (MobileNetV3's int8 squeeze-excitation)
is measured again alone instead of being reported as the model's divergence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_deploy.manifest import WEIGHT_COMPRESSED, Manifest, hash_artifact
from alexnet_deploy.tolerances import (
    LAYER_DEPTH,
    LAYER_REL_L2,
    LAYER_REL_L2_CAP,
    LAYER_REL_L2_FLOOR,
    layer_limit,
    limits_for,
)
from alexnet_deploy.validate.layers import (
    FAIL,
    OK,
    compare_layers,
    judge_layer,
    module_order,
    weighted_depths,
)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
FLOAT = ("fp32", "fp16", "bf16")  # rounding that starts near zero and grows with depth


def depths_of(model: torch.nn.Module, size: int) -> dict[str, int]:
    order, _, _ = module_order(model.eval(), torch.randn(1, 3, size, size))
    return weighted_depths(model, order)


def applied(precision: str, depth: int) -> float:
    """The limit validate applies to a module of `precision` at `depth`: its row of the table."""
    lim = limits_for(precision)
    return layer_limit(lim.max_layer_rel_l2, depth, lim.max_layer_rel_l2_cap, lim.max_layer_rel_l2_floor)


# ---------------------------------------------------------------------------------------------
# The limit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_limit_is_the_table_at_alexnets_depth_and_grows_like_the_square_root(precision):
    base = LAYER_REL_L2[precision]
    assert applied(precision, LAYER_DEPTH) == base
    assert applied(precision, 18) == pytest.approx(1.5 * base)  # sqrt(18 / 8)
    assert layer_limit(base, 32) == pytest.approx(2 * base)  # no cap: the square root alone


@pytest.mark.parametrize("precision", FLOAT)
def test_float_limits_shrink_before_alexnets_depth(precision):
    base = LAYER_REL_L2[precision]
    assert precision not in LAYER_REL_L2_FLOOR
    assert applied(precision, 2) == pytest.approx(base / 2)  # sqrt(2 / 8)
    assert applied(precision, 0) == applied(precision, 1) == pytest.approx(base / math.sqrt(8))


def test_int8_limits_never_shrink_below_the_table():
    """int8 rounds each layer's own input to 8 bits: the one-thread demo model's honest conv2 read
    0.127 at depth 2, where sqrt(depth) scaling allowed 0.125."""
    base = LAYER_REL_L2["int8"]
    assert [applied("int8", d) for d in (0, 1, 2, 5, LAYER_DEPTH)] == [base] * 5
    assert applied("int8", 2) > 0.127 and applied("int8", 18) == pytest.approx(1.5 * base)
    assert limits_for("int8").max_layer_rel_l2_floor == base
    assert all(limits_for(p).max_layer_rel_l2_floor == base for p in WEIGHT_COMPRESSED)  # judged as int8


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_layer_reading_zeros_fails_at_any_depth(precision):
    cap = LAYER_REL_L2_CAP[precision]
    assert applied(precision, 10**6) == cap < 1.0
    ref = np.random.default_rng(0).standard_normal((4, 16, 3, 3)).astype(np.float32)
    zeros = judge_layer("layer9.bn3", "BatchNorm2d / Add", np.zeros_like(ref), ref, applied(precision, 10**6))
    assert zeros.status == FAIL and zeros.rel_l2 == pytest.approx(1.0) and zeros.limit == cap


def test_depth_counts_the_convolutions_and_linears_run_up_to_each_module():
    import torchvision

    from alexnet_deploy.models import build_model

    alexnet = depths_of(build_model("alexnet", 10), 64)
    # five convolutions at features.0, 3, 6, 8, 10, then three Linears
    assert [alexnet[m] for m in ("features.0", "features.1", "features.3", "features.8", "classifier.6")] == \
        [1, 1, 2, 4, LAYER_DEPTH]
    resnet = depths_of(torchvision.models.resnet50(num_classes=10), 64)
    assert resnet["conv1"] == resnet["bn1"] == resnet["maxpool"] == 1
    # a block's shortcut runs after its third convolution's batch norm
    assert (resnet["layer1.0.bn3"], resnet["layer1.0.downsample.0"], resnet["layer1.0"]) == (4, 5, 5)
    assert (resnet["layer4.2.bn3"], resnet["fc"]) == (53, 54)


def test_a_module_called_twice_is_placed_and_measured_at_its_last_call():
    """ResNet's blocks apply one ReLU twice; the artifact's tensor for it is the last operation under
    its name, so the reference must be the last call too (the first read as a false divergence)."""
    import torchvision

    from alexnet_deploy.validate.layers import reference_outputs

    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    order, _, _ = module_order(model, x[:1])
    assert order.index("layer1.0.bn2") < order.index("layer1.0.relu") < order.index("layer1.0")
    out = reference_outputs(model, x.numpy(), ["layer1.0.relu", "layer1.0"])
    np.testing.assert_array_equal(out["layer1.0.relu"], out["layer1.0"])  # the block ends with it


def test_honest_resnet50_readings_past_the_flat_limits_pass_at_their_depth():
    """What untrained, honest ResNet-50 exports measured (benchmarks/results/layers-memory-intel-
    xeon-2c-2026-12-04.md): each was a false first divergence against the flat AlexNet limits."""
    import torchvision

    depth = depths_of(torchvision.models.resnet50(num_classes=10), 64)
    readings = [("fp16", "layer4.2.bn3", 0.010565), ("int8", "layer4.1.bn2", 0.261010),
                ("int8", "layer3.3.bn3", 0.252866)]
    for precision, module, rel in readings:
        assert rel > LAYER_REL_L2[precision]
        assert rel < applied(precision, depth[module]), (precision, module, depth[module])
    # while early modules get less than the table: a conv scaled by 1.05 (rel_l2 0.05) stays far past
    assert applied("fp32", depth["conv1"]) < LAYER_REL_L2["fp32"]


@pytest.mark.slow
def test_an_honest_resnet_export_diverges_nowhere_and_each_module_shows_the_limit_applied(resnet18_export):
    from alexnet_deploy.validate import validate

    report = validate(resnet18_export, images=0, backends=["onnxruntime-cpu"], layers=True)
    compared = [r for r in report.results if r.layers]
    assert {r.precision for r in compared} == {"fp32", "fp16", "int8"}, [r.layers_note for r in report.results]
    for r in compared:
        assert r.first_divergence is None, (r.precision, r.first_divergence)
        by_module = {layer["module"]: layer for layer in r.layers}
        deep = by_module["layer4.1.bn2"]  # ResNet-18's 20th convolution
        assert deep["depth"] == 20 and deep["limit"] == applied(r.precision, 20)
        assert all(layer["limit"] == applied(r.precision, layer["depth"]) for layer in r.layers)


# ---------------------------------------------------------------------------------------------
# OpenVINO on MobileNetV3's int8 squeeze-excitation
# ---------------------------------------------------------------------------------------------
MOBILENET_SIZE = 96  # ONNX Runtime's percentile calibration fails at 64 px (a zero-range tensor)


@pytest.fixture(scope="module")
def mobilenet_export(tmp_path_factory) -> Path:
    """An untrained MobileNetV3-Small (squeeze-excitation in 9 of its blocks) exported to ONNX fp32,
    fp16 and int8 at 96 px, its batch norms given the statistics of random inputs so that the
    activations keep a trained network's scale."""
    from alexnet_deploy.exporters import export_all
    from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights

    root = tmp_path_factory.mktemp("mobilenet")
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 10).train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, MOBILENET_SIZE, MOBILENET_SIZE))
    card = ModelCard(arch="mobilenet_v3_small", num_classes=10, classes=[f"c{i}" for i in range(10)],
                     input=InputSpec.for_size(MOBILENET_SIZE), data={})
    save_weights(model.eval(), card, root / "weights.safetensors")
    export_all(root / "weights.safetensors", root / "E", formats=["onnx"], max_batch=8, calib_images=8, show=False)
    return root / "E"


def scale_weight_dequantize(export: Path, module: str, factor: float) -> None:
    """The int8 ONNX with `module`'s weights dequantized `factor` times too large, re-hashed so that
    integrity passes and only the numbers are wrong."""
    import onnx
    from onnx import numpy_helper

    manifest = Manifest.read(export)
    art = next(a for a in manifest.artifacts if a.format == "onnx" and a.precision == "int8")
    path = export / art.path
    model = onnx.load(str(path))
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith(f"{module}.weight"))
    scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    path.unlink()  # never write through to the fixture's file
    onnx.save(model, str(path))
    art.sha256, art.bytes = hash_artifact(path)
    manifest.write(export)


@pytest.mark.slow
def test_openvino_finds_a_fault_in_a_late_squeeze_excitation_and_none_in_the_honest_ones(mobilenet_export, tmp_path):
    """Marking an int8 squeeze-excitation's first convolution made OpenVINO's CPU plugin fold its
    ReLU into the next FakeQuantize, which output zeros: every honest block's fc2 read rel_l2 1.0,
    cosine 0 beside its fc1, and the first was named the model's divergence."""
    import shutil

    from alexnet_deploy.backends.openvino.runner import OpenVinoRunner

    pytest.importorskip("openvino", reason="openvino is not installed")
    export = tmp_path / "E"
    shutil.copytree(mobilenet_export, export, copy_function=shutil.copy)
    planted = "features.9.block.2.fc2"  # the 7th of the 9 blocks: 6 honest ones come first
    scale_weight_dequantize(export, planted, 3.0)
    manifest = Manifest.read(export)
    art = next(a for a in manifest.artifacts if a.format == "onnx" and a.precision == "int8")
    batch = np.random.default_rng(0).standard_normal((8, 3, MOBILENET_SIZE, MOBILENET_SIZE)).astype(np.float32)
    lim = limits_for("int8")

    report = compare_layers(manifest, art, OpenVinoRunner, batch, lim.max_layer_rel_l2, cap=lim.max_layer_rel_l2_cap,
                            floor=lim.max_layer_rel_l2_floor)
    assert report.first_divergence is not None and report.first_divergence["module"] == planted, \
        report.first_divergence
    assert report.first_divergence["rel_l2"] > 2 * lim.max_layer_rel_l2_cap  # 3x the weights it should
    modules = [layer.module for layer in report.layers]
    honest = [layer for layer in report.layers[:modules.index(planted)] if layer.module.endswith(".fc2")]
    assert len(honest) == 6 and all(layer.status == OK and layer.cosine > 0.99 for layer in honest), honest
