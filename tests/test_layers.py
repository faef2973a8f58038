"""validate --layers: planted faults found at the module that holds them, honest artifacts with no
divergence, modules that do not survive named "fused", and the picture and report that show it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from alexnet_deploy.manifest import Manifest, hash_artifact
from alexnet_deploy.validate import validate

IMAGES = 12
DROPOUTS = {"classifier.0", "classifier.3"}  # identity in eval: no operation survives the export


def copy_export(src: Path, dst: Path, keep: list[tuple[str, str]]) -> tuple[Path, Manifest]:
    """`dst` holding the weights (linked) and copies of the (format, precision) artifacts named."""
    manifest = Manifest.read(src)
    arts = [a for a in manifest.artifacts if (a.format, a.precision) in keep]
    if len(arts) < len(keep):
        pytest.skip(f"the export lacks one of {keep} (its manifest skipped it on this machine)")
    dst.mkdir(parents=True)
    weights = manifest.weights_artifact().path
    os.link(src / weights, dst / weights)
    for art in arts:
        for rel in [art.path, *art.extra.get("files", {})]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, dst / rel)
    manifest.artifacts, manifest.skipped = arts, []
    manifest.write(dst)
    return dst, Manifest.read(dst)


def rehash(export: Path, manifest: Manifest) -> None:
    """The manifest re-hashed after a planted edit: integrity passes, only the numbers are wrong."""
    from alexnet_deploy.files import sha256_file

    for art in manifest.artifacts:
        art.sha256, art.bytes = hash_artifact(export / art.path)
        files = art.extra.get("files", {})
        for rel in files:
            files[rel] = sha256_file(export / rel)
            art.bytes += (export / rel).stat().st_size
    manifest.write(export)


def result_for(report, fmt: str, precision: str, backend: str):
    return next(r for r in report.results if r.format == fmt and r.precision == precision
                and r.backend == backend)


def scale_initializer(model, name: str, factor: float) -> None:
    from onnx import numpy_helper

    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), name))


def save_onnx(model, path: Path) -> None:
    import onnx

    path.unlink()
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------------------------
# Honest artifacts, through the command
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def honest(exported_dir, tmp_path_factory):
    report = tmp_path_factory.mktemp("layers") / "validation.json"
    proc = run_cli("validate", exported_dir, "--images", str(IMAGES), "--layers", "--report", report)
    return proc, report


@pytest.mark.slow
def test_honest_artifacts_diverge_nowhere(honest):
    proc, report = honest
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    compared = [r for r in data["results"] if r["layers"] is not None]
    # every runner that declares layer taps and could run here compared its layers
    assert {(r["backend"], r["format"]) for r in compared} >= {
        ("onnxruntime-cpu", "onnx"), ("torch-export", "torch-export")}, [r["backend"] for r in compared]
    for r in compared:
        assert r["first_divergence"] is None, (r["backend"], r["precision"], r["first_divergence"])
        modules = [layer["module"] for layer in r["layers"]]
        assert modules[:3] == ["features.0", "features.1", "features.2"], modules
        fused = {layer["module"] for layer in r["layers"] if layer["status"] == "fused"}
        # the ONNX exporter drops eval-mode dropout; torch.export keeps it as an operation
        assert fused == (set() if r["format"] == "torch-export" else DROPOUTS), (r["artifact"], fused)
        measured = [layer for layer in r["layers"] if layer["status"] == "OK"]
        assert len(measured) == len(modules) - len(fused)
        assert all(layer["rel_l2"] <= layer["limit"] for layer in measured)


@pytest.mark.slow
def test_runners_without_taps_say_why_and_the_rest_is_pictured(honest):
    proc, report = honest
    data = json.loads(report.read_text())
    for r in data["results"]:
        if r["backend"] in ("aoti", "torchscript") and r["status"] == "OK":
            assert r["layers"] is None and r["layers_note"].startswith("layers not compared: "), r
    picture = report.with_suffix(".png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.with_suffix(".md").read_text()
    assert f"![per-layer error]({picture.name})" in md
    assert "| features.3 |" in md and "first diverges" not in md
    assert "no layer past its limit" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Planted faults
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_scaled_convolution_in_the_onnx_file_is_found_at_its_module(exported_dir, tmp_path):
    import onnx

    export, manifest = copy_export(exported_dir, tmp_path / "conv", [("onnx", "fp32")])
    path = export / manifest.artifacts[0].path
    model = onnx.load(str(path))
    scale_initializer(model, "features.6.weight", 1.05)
    save_onnx(model, path)
    rehash(export, manifest)

    proc = run_cli("validate", export, "--images", str(IMAGES), "--backends", "onnxruntime-cpu", "--layers")
    assert proc.returncode == 1, proc.stderr[-2000:]  # the logits fail too: the verdict is theirs
    data = json.loads((export / "validation.json").read_text())
    [r] = [r for r in data["results"] if r["backend"] == "onnxruntime-cpu"]
    assert r["first_divergence"]["module"] == "features.6", r["first_divergence"]
    assert 0.02 < r["first_divergence"]["rel_l2"] < 0.2
    before = [layer for layer in r["layers"] if layer["module"] in ("features.3", "features.5")]
    assert all(layer["status"] == "OK" for layer in before), before
    assert "first diverges at features.6" in proc.stdout


@pytest.mark.slow
def test_a_scaled_convolution_in_the_openvino_ir_is_found_at_its_module(exported_dir, tmp_path):
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    from openvino import opset13 as ops

    export, manifest = copy_export(exported_dir, tmp_path / "ir", [("openvino", "fp32")])
    xml = export / manifest.artifacts[0].path
    model = ov.Core().read_model(str(xml))
    modules = json.loads(model.get_rt_info(["framework", "modules"]).astype(str))
    conv = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"
                and modules.get(op.get_friendly_name().split("/")[0]) == "features.3")
    weights = conv.input_value(1).get_node()
    assert weights.get_type_name() == "Constant"  # fp32 IR: no decompression before the convolution
    scaled = ops.constant(weights.get_data() * np.float32(1.05))
    conv.input(1).replace_source_output(scaled.output(0))
    for f in (xml, xml.with_suffix(".bin")):
        f.unlink()
    ov.save_model(model, str(xml), compress_to_fp16=False)
    rehash(export, manifest)

    report = validate(export, images=IMAGES, backends=["openvino"], layers=True)
    r = result_for(report, "openvino", "fp32", "openvino")
    assert r.first_divergence is not None and r.first_divergence["module"] == "features.3", r.first_divergence
    assert [layer["status"] for layer in r.layers[:3]] == ["OK", "OK", "OK"]  # features.0..2


@pytest.mark.slow
def test_a_corrupted_int8_quantize_scale_is_found_at_its_module(exported_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    from alexnet_deploy.backends.onnx.layers import node_module

    export, manifest = copy_export(exported_dir, tmp_path / "q", [("onnx", "int8")])
    path = export / manifest.artifacts[0].path
    model = onnx.load(str(path))
    conv_out = next(n.output[0] for n in model.graph.node if node_module(n) == "features.8")
    quant = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv_out)
    old = next(t for t in model.graph.initializer if t.name == quant.input[1])
    # the quantize node gets its own scale, 4x too large; its dequantize keeps the true one
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(old) * np.float32(4),
                                                           "planted_scale"))
    quant.input[1] = "planted_scale"
    save_onnx(model, path)
    rehash(export, manifest)

    report = validate(export, images=IMAGES, backends=["onnxruntime-cpu"], layers=True)
    r = result_for(report, "onnx", "int8", "onnxruntime-cpu")
    assert r.first_divergence is not None and r.first_divergence["module"] == "features.8", r.first_divergence
    assert r.first_divergence["rel_l2"] > 0.5  # the layer reads a quarter of what it should


@pytest.mark.slow
def test_a_swapped_pair_of_classes_is_found_in_the_head(exported_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    export, manifest = copy_export(exported_dir, tmp_path / "swap", [("onnx", "fp32")])
    path = export / manifest.artifacts[0].path
    model = onnx.load(str(path))
    for name in ("classifier.6.weight", "classifier.6.bias"):
        t = next(t for t in model.graph.initializer if t.name == name)
        value = numpy_helper.to_array(t).copy()
        value[[0, 1]] = value[[1, 0]]
        t.CopyFrom(numpy_helper.from_array(value, name))
    save_onnx(model, path)
    rehash(export, manifest)

    report = validate(export, images=IMAGES, backends=["onnxruntime-cpu"], layers=True)
    r = result_for(report, "onnx", "fp32", "onnxruntime-cpu")
    assert r.status == "FAIL"
    assert r.first_divergence is not None and r.first_divergence["module"] == "classifier.6", r.first_divergence
    assert all(layer["status"] in ("OK", "fused") for layer in r.layers
               if layer["module"] not in ("classifier.6", "classifier")), r.layers


def test_layers_only_for_failed_artifacts_leaves_passing_ones_alone(random_export):
    report = validate(random_export, images=0, backends=["onnxruntime-cpu"], layers="failed")
    assert report.passed
    assert all(r.layers is None and r.first_divergence is None for r in report.results)


def test_a_file_that_changed_after_export_is_never_tapped(random_export, tmp_path):
    from trial_support import mkex, replace_file

    export = mkex(random_export, tmp_path / "tampered")
    onnx_file = export / "alexnet.onnx"
    replace_file(onnx_file, onnx_file.read_bytes() + b"\0")
    report = validate(export, images=0, backends=["onnxruntime-cpu"], layers=True)
    r = result_for(report, "onnx", "fp32", "onnxruntime-cpu")
    assert r.status == "FAIL" and r.reason.startswith("integrity: ")
    assert r.layers is None and r.first_divergence is None
    assert r.layers_note.startswith("layers not compared: ") and "sha256" in r.layers_note, r.layers_note


@pytest.mark.slow
def test_a_file_whose_module_scopes_were_stripped_says_layers_not_compared(exported_dir, tmp_path):
    """A graph rewritten by a tool that drops node metadata (ONNX Runtime's optimizer does) maps no
    operation to a module: that is "not compared", not a clean bill with every layer "fused"."""
    import onnx

    from alexnet_deploy.backends.onnx.layers import SCOPES_KEY

    export, manifest = copy_export(exported_dir, tmp_path / "bare", [("onnx", "fp32")])
    path = export / manifest.artifacts[0].path
    model = onnx.load(str(path))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != SCOPES_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    save_onnx(model, path)
    rehash(export, manifest)

    report = validate(export, images=IMAGES, backends=["onnxruntime-cpu"], layers=True)
    r = result_for(report, "onnx", "fp32", "onnxruntime-cpu")
    assert r.passed  # the logits are untouched: the verdict stays theirs
    assert r.layers is None and r.first_divergence is None
    assert "layers not compared" in r.layers_note and "names a PyTorch module" in r.layers_note
