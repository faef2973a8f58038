"""`export --weight-compression` (issue 18, item 7): OpenVINO IRs whose weights NNCF compressed
(backends/openvino/compress.py), labelled int8w / int4w / int4w-a8, stored as labelled, checked and
validated with the int8 limits like every other artifact, run by both OpenVINO runners and offered
to `recommend`. No wall-clock figure is asserted (benchmarks/weight_compression.py measures)."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli

from alexnet_deploy.machine import cpu_flags
from alexnet_deploy.manifest import PRECISIONS, Manifest, verify_integrity
from alexnet_deploy.runtimes import runners_for
from alexnet_deploy.tolerances import LIMITS, limits_for

COMPRESSED = ("int8w", "int4w", "int4w-a8")
HAS_BF16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
pytestmark = pytest.mark.skipif(importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino")
                                is None, reason="weight compression needs openvino and nncf")


@pytest.fixture(scope="module")
def compressed(exported_dir, tmp_path_factory) -> Manifest:
    """The trained demo model's OpenVINO export with --weight-compression: export's own steps after
    planning (the openvino exporter, each artifact's smoke check, the manifest) run on the shared
    export's fp32 ONNX (hard-linked, so the ONNX export is not done again) with its calibration
    settings (the card's val images, 32 of them). The exporter is not shown the int8 ONNX, so NNCF's
    int8 IR is not made again: the manifest lists the fp32 IR and the three compressed ones."""
    import os

    from alexnet_deploy.calibration import resolve_calib_data
    from alexnet_deploy.exporters import ExportContext, _export_into
    from alexnet_deploy.models import load_weights

    src = Manifest.read(exported_dir)
    out = tmp_path_factory.mktemp("weight-compression") / "export"
    out.mkdir()
    (onnx,) = src.find("onnx", "fp32")
    os.link(src.path_of(onnx), out / onnx.path)  # read only: the exporter writes its own files
    weights = src.path_of(src.weights_artifact())
    model, card = load_weights(weights)
    ctx = ExportContext(model=model, card=card, out=out, max_batch=onnx.batch.max, calib_images=32,
                        calib_data=resolve_calib_data(card, None), weight_compression=True, artifacts=[onnx])
    manifest = _export_into(ctx, weights, ["openvino"], [])
    manifest.write(out)
    return Manifest.read(out)


def by_precision(manifest: Manifest) -> dict:
    return {a.precision: a for a in manifest.artifacts}


# ---------------------------------------------------------------------------------------------
# What export writes
# ---------------------------------------------------------------------------------------------
def test_three_labelled_irs_each_passed_exports_check(compressed):
    arts = by_precision(compressed)
    assert set(arts) == {"fp32", *COMPRESSED}
    for p in COMPRESSED:
        a = arts[p]
        assert (a.format, a.path, a.device) == ("openvino", f"openvino/alexnet.{p}.xml", "cpu")
        assert a.extra["check"]["status"] == "ok" and a.extra["check"]["runner"] == "openvino"
        assert a.extra["check"]["limits"]["min_cosine"] == limits_for("int8", "smoke").min_cosine
        assert a.extra["weights"] and a.extra["activations"] and a.extra["compression"]["tool"].startswith("nncf")
        assert 0.9 <= a.extra["heldout_top1_agreement"] <= 1
        assert verify_integrity(compressed, a) is None  # the .bin is listed and hashed too
    # the labels say what the graph computes in, not only the weights
    assert arts["int8w"].extra["activations"].startswith("float")
    assert arts["int4w-a8"].extra["activations"].startswith("int8 into every convolution")
    assert "calibration_images" in arts["int4w-a8"].extra["quantization"]


def integer_constants(xml: Path) -> Counter:
    """Elements of every integer constant in the IR by element type, read with OpenVINO itself."""
    import openvino as ov

    counts: Counter = Counter()
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        kind = op.get_output_element_type(0)
        if op.get_type_name() == "Constant" and kind.is_integral() and kind.get_type_name() not in ("i32", "i64"):
            shape = op.get_output_shape(0)
            counts[kind.get_type_name()] += math.prod(shape)
    return counts


def test_the_files_store_the_linears_in_int4_and_the_rest_in_int8(compressed):
    from torch import nn

    from alexnet_deploy.models import load_weights

    model, _ = load_weights(compressed.path_of(compressed.weights_artifact()))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    arts = by_precision(compressed)
    stored = {p: integer_constants(compressed.path_of(arts[p])) for p in COMPRESSED}
    # int8w: every weight in 8 bits (u8 with a zero point per output channel: 1 % is room for those)
    assert linear + conv <= stored["int8w"]["u8"] <= 1.01 * (linear + conv) and "i4" not in stored["int8w"]
    # int4w: every Linear weight in 4 bits, the convolutions' in 8
    assert stored["int4w"]["i4"] == linear and conv <= stored["int4w"]["u8"] <= 1.01 * conv
    # int4w-a8: the same Linears, the convolutions quantized by nncf.quantize (symmetric int8)
    assert stored["int4w-a8"]["i4"] == linear and stored["int4w-a8"]["i8"] == conv
    # ... so they read fewer bytes: about half the int8 file, an eighth of the fp32 one
    assert arts["int4w"].bytes < 0.6 * arts["int8w"].bytes < 0.16 * arts["fp32"].bytes
    assert arts["int4w-a8"].bytes < 0.6 * arts["int8w"].bytes
    # and the manifest says the same
    assert arts["int4w"].extra["stored_weights"] == {"MatMul": {"i4": linear}, "Convolution": {"u8": conv}}


def test_each_ir_carries_its_dynamic_quantization_group_and_openvino_applies_it(compressed):
    import openvino as ov

    core = ov.Core()
    for p in COMPRESSED:
        art = by_precision(compressed)[p]
        assert art.extra["runtime_options"] == {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 1024}  # divides 9216 and 4096
    # what every consumer of the file gets unless it sets the property itself (the runners do not)
    compiled = core.compile_model(str(compressed.path_of(art)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 1024


# ---------------------------------------------------------------------------------------------
# Who runs them, how they are judged, who times them
# ---------------------------------------------------------------------------------------------
def test_both_openvino_runners_take_them_labelled_as_stored(compressed):
    seen = {(c.runner, c.artifact.precision): c for c in runners_for(compressed) if c.artifact.precision in COMPRESSED}
    # int4w-a8 is an int8 graph: the bf16 hint does not change its quantized layers
    assert set(seen) == {("openvino", p) for p in COMPRESSED} | {("openvino-bf16", "int8w"), ("openvino-bf16", "int4w")}
    for p in ("int8w", "int4w"):
        c = seen[("openvino-bf16", p)]
        assert c.artifact.extra["computed_in"] == "bf16 (openvino-bf16)" and "stored_precision" not in c.artifact.extra


@pytest.mark.slow
def test_they_pass_validate_with_the_int8_limits_on_the_trained_model(compressed):
    from alexnet_deploy.validate import validate

    report = validate(compressed.root, images=200, backends=["openvino", "openvino-bf16"])
    rows = {(r.backend, r.precision): r for r in report.results if r.precision in COMPRESSED}
    expected = {("openvino", p) for p in COMPRESSED}
    if HAS_BF16:
        expected |= {("openvino-bf16", "int8w"), ("openvino-bf16", "int4w")}
    assert set(rows) == expected
    int8 = limits_for("int8")
    for r in rows.values():
        assert r.passed, (r.label, r.failures)
        assert r.images == 200 and r.reference_accuracy_top1 >= 0.9, "the trained model learned its classes"
        assert (r.limits["min_top1_agreement"], r.limits["max_accuracy_drop"]) == \
               (int8.min_top1_agreement, int8.max_accuracy_drop)
        assert r.top1_agreement >= int8.min_top1_agreement and r.accuracy_drop <= int8.max_accuracy_drop


def test_recommend_takes_them_as_candidates(compressed):
    from alexnet_deploy.bench import recommend

    candidates = {(c.runner, c.artifact.path) for c in runners_for(compressed)
                  if c.available and c.artifact.precision in recommend.PRECISIONS and c.runner_cls.device == "cpu"}
    for p in COMPRESSED:
        assert ("openvino", f"openvino/alexnet.{p}.xml") in candidates


def test_every_precision_has_limits_a_weight_width_and_a_peak():
    from alexnet_deploy.bench import roofline

    for p in PRECISIONS:
        assert p in LIMITS["validate"] and p in LIMITS["smoke"] and p in roofline.BYTES_PER_WEIGHT
        assert p in roofline.PEAK_KEYS
    for p in COMPRESSED:
        assert limits_for(p) == limits_for("int8") and limits_for(p, "smoke") == limits_for("int8", "smoke")
    assert roofline.BYTES_PER_WEIGHT["int4w"] == roofline.BYTES_PER_WEIGHT["int4w-a8"] == 0.5


def test_the_floor_reads_int4_weights_at_half_a_byte():
    from alexnet_deploy.bench.roofline import LayerGroup, ModelCost, floor

    cost = ModelCost({"fc": LayerGroup(macs=1, params=1_000_000_000)})  # memory-bound: 1 G weights
    roof = {"read_gbps": 10.0, "gops_int8": 1000.0, "gflops_fp32": 100.0}
    assert floor(cost, 1, "int4w", roof).ms == pytest.approx(50.0)  # 0.5 GB at 10 GB/s
    assert floor(cost, 1, "int8w", roof).ms == pytest.approx(100.0)
    assert "gops_int8" in floor(cost, 1, "int4w-a8", roof).basis  # the fastest unit bounds the compute


# ---------------------------------------------------------------------------------------------
# The option
# ---------------------------------------------------------------------------------------------
def test_the_option_reaches_the_exporters(monkeypatch, random_weights, tmp_path):
    import alexnet_deploy.exporters as exporters

    seen = {}

    def fake(ctx, weights, order, skipped):
        seen.update(order=order, weight_compression=ctx.weight_compression)
        return Manifest(card=ctx.card, weights={})

    monkeypatch.setattr(exporters, "_export_into", fake)
    r = run_cli("export", random_weights, "--out", tmp_path / "e", "--formats", "openvino", "--weight-compression")
    assert r.code == 0, r.err[-2000:]
    assert seen == {"order": ["onnx", "openvino"], "weight_compression": True}


def test_the_option_without_openvino_is_one_line(random_weights, tmp_path):
    r = run_cli("export", random_weights, "--out", tmp_path / "e", "--formats", "torchscript", "--weight-compression")
    assert_user_error(r, "--weight-compression applies to the openvino format", "add it to --formats")
    assert len(r.lines()) == 1 and not (tmp_path / "e").exists()


def test_the_option_without_nncf_says_what_to_install(monkeypatch, random_weights, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    r = run_cli("export", random_weights, "--out", tmp_path / "e", "--formats", "openvino", "--weight-compression")
    assert_user_error(r, "--weight-compression", "nncf", "pip install")
    assert len(r.lines()) == 1 and not (tmp_path / "e").exists()
