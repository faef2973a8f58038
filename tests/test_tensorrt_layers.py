"""validate --layers on TensorRT engines, against the tensorrt stand-in (fake_tensorrt): the tapped twin
is parsed from the engine's source ONNX with the engine's own build settings, outputs the tensors of
the chosen modules, and its figures name a planted fault's module; tensors TensorRT lacks or refuses
leave their modules "fused". The stand-in executes with ONNX Runtime on host memory, so the runner is
pointed at the CPU here; the real library's run is in test_tensorrt.py."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_tensorrt import calls_named, make_tensorrt
from standins import GPU

import alexnet_deploy.backends.tensorrt.export as trt_export
import alexnet_deploy.backends.tensorrt.runner as trt_runner
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.manifest import Manifest, hash_artifact
from alexnet_deploy.tolerances import LAYER_REL_L2, LAYER_REL_L2_FLOOR
from alexnet_deploy.validate.layers import FUSED, OK, compare_layers

DROPOUTS = {"classifier.0", "classifier.3"}  # identity in eval: not in the ONNX, so not in the engine
ROWS = 8


def install(monkeypatch, version="10.9.0", **knobs):
    """The stand-in library, on a machine the runner takes for a GPU whose device is the CPU (the
    stand-in reads host memory) and whose current stream is 0."""
    trt = make_tensorrt(version, **knobs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (trt_export, trt_runner):
        monkeypatch.setattr(module, "gpu_info", lambda: dict(GPU))
    monkeypatch.setattr(trt_runner.TensorRTRunner, "device", "cpu")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    return trt


def engine_export(src, dst, fault=None) -> Manifest:
    """`dst`: the weights and fp32 ONNX of the export `src` (linked; `fault(model)` edits a copy of
    the ONNX first) and the TensorRT engines the installed library builds from that ONNX."""
    import onnx

    manifest = Manifest.read(src)
    dst.mkdir()
    onnx_art = next(a for a in manifest.artifacts if (a.format, a.precision) == ("onnx", "fp32"))
    weights = manifest.weights_artifact().path
    os.link(src / weights, dst / weights)
    if fault is None:
        os.link(src / onnx_art.path, dst / onnx_art.path)
    else:
        model = onnx.load(str(src / onnx_art.path))
        fault(model)
        onnx.save(model, str(dst / onnx_art.path))
    sha, size = hash_artifact(dst / onnx_art.path)
    onnx_art = onnx_art.model_copy(update={"sha256": sha, "bytes": size})
    ctx = ExportContext(model=torch.nn.Identity(), card=manifest.card, out=dst,
                        max_batch=onnx_art.batch.max, artifacts=[onnx_art])
    manifest.artifacts = [onnx_art, *trt_export.TensorRTExporter().export(ctx)]
    manifest.skipped = []
    manifest.write(dst)
    return Manifest.read(dst)


def engine(manifest: Manifest, precision: str):
    return next(a for a in manifest.artifacts if (a.format, a.precision) == ("tensorrt", precision))


def compare(manifest: Manifest, precision: str = "fp32"):
    rows = np.random.default_rng(0).standard_normal((ROWS, *manifest.card.input.shape)).astype(np.float32)
    return compare_layers(manifest, engine(manifest, precision), trt_runner.TensorRTRunner, rows,
                          LAYER_REL_L2[precision], floor=LAYER_REL_L2_FLOOR.get(precision))


def scale_initializer(name: str, factor: float):
    from onnx import numpy_helper

    def fault(model):
        t = next(t for t in model.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), name))
    return fault


def statuses(report) -> dict[str, str]:
    return {layer.module: layer.status for layer in report.layers}


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_honest_engine_diverges_nowhere_and_its_twin_is_built_like_it(random_export, tmp_path,
                                                                        monkeypatch, precision):
    trt = install(monkeypatch)
    manifest = engine_export(random_export, tmp_path / "e")
    art = engine(manifest, precision)
    side = json.loads((tmp_path / "e" / art.extra["sidecar"]).read_text())
    untouched = {p: p.read_bytes() for p in (tmp_path / "e" / "tensorrt").iterdir()}
    trt.calls.clear()

    report = compare(manifest, precision)

    assert report.first_divergence is None, report.first_divergence
    fused = {m for m, s in statuses(report).items() if s == FUSED}
    assert fused == DROPOUTS, fused
    measured = [layer for layer in report.layers if layer.module not in fused]
    # features.0..12, avgpool, the five classifier layers and the two Sequentials around them
    assert measured[0].module == "features.0" and len(measured) == 21, [m.module for m in measured]
    assert all(layer.status == OK and layer.rel_l2 <= layer.limit for layer in measured)
    # the twins: parsed from the engine's source ONNX, one build per slice with the engine's own
    # settings, the slice's tensors outputs besides the logits, each run on the batch range's chunks
    assert set(calls_named(trt, "parse_from_file")) == {(str(tmp_path / "e" / side["source_onnx"]),)}
    builds = [outputs for (outputs,) in calls_named(trt, "build_serialized_network")]
    assert len(builds) == report.slices and all(b[0] == "logits" for b in builds)
    # one tensor per module but the Sequentials, which end in features.12's tensor and the logits
    assert len(set().union(*builds)) == len(measured) - 2, builds
    assert {f.name for (f,) in calls_named(trt, "set_flag")} == set(side["builder_flags"])
    assert {f.name for (f,) in calls_named(trt, "clear_flag")} == set(side["cleared_flags"])
    assert set(calls_named(trt, "profile.set_shape")) == {
        (side["input_name"], *(tuple(side["profile"][k]) for k in ("min", "opt", "max")))}
    assert len(calls_named(trt, "execute_async_v3")) == report.slices * ROWS // art.batch.max
    # validate reads the export's timing cache and writes nothing into the export folder
    assert {p: p.read_bytes() for p in (tmp_path / "e" / "tensorrt").iterdir()} == untouched
    assert calls_named(trt, "create_timing_cache")[-1] == (untouched[tmp_path / "e" / side["timing_cache"]],)


def test_a_scaled_convolution_in_the_engines_source_onnx_is_found_at_its_module(random_export, tmp_path,
                                                                               monkeypatch):
    install(monkeypatch)
    manifest = engine_export(random_export, tmp_path / "e", fault=scale_initializer("features.6.weight", 1.05))

    report = compare(manifest)

    assert report.first_divergence is not None and report.first_divergence["module"] == "features.6", \
        report.first_divergence
    assert 0.02 < report.first_divergence["rel_l2"] < 0.2
    before = statuses(report)
    assert [before[f"features.{i}"] for i in range(6)] == [OK] * 6


def test_tensors_tensorrt_folds_away_or_will_not_output_leave_their_modules_fused(random_export, tmp_path,
                                                                                 monkeypatch):
    trt = install(monkeypatch, fused={"Relu"}, unmarkable={"MaxPool"})
    manifest = engine_export(random_export, tmp_path / "e")

    report = compare(manifest)

    found = statuses(report)
    assert {m for m, s in found.items() if s == FUSED} == DROPOUTS | {
        "features.1", "features.4", "features.7", "features.9", "features.11", "classifier.2", "classifier.5",
        "features.2", "features.5", "features.12"}, found
    assert found["features.0"] == found["features.3"] == found["classifier.6"] == OK
    assert report.first_divergence is None
    # refused tensors are tried on the parsed network, never asked of the twin's build
    marked = {name for (name,) in calls_named(trt, "mark_output")}
    assert "max_pool2d" in marked and "relu" not in marked


def test_a_source_onnx_changed_after_the_build_is_never_tapped(random_export, tmp_path, monkeypatch):
    install(monkeypatch)
    manifest = engine_export(random_export, tmp_path / "e")
    side = json.loads((tmp_path / "e" / engine(manifest, "fp32").extra["sidecar"]).read_text())
    source = tmp_path / "e" / side["source_onnx"]
    data = source.read_bytes()
    source.unlink()  # a link to the shared export: replace it, never write through it
    source.write_bytes(data + b"\0")
    with pytest.raises(CheckFailed, match="alexnet.onnx, the ONNX tensorrt/alexnet_fp32.engine was built "
                                          "from, changed after the build"):
        compare(manifest)


def test_an_engine_without_its_export_folder_or_build_record_says_so(random_export, tmp_path, monkeypatch):
    install(monkeypatch)
    manifest = engine_export(random_export, tmp_path / "e")
    art = engine(manifest, "fp32")
    bare = trt_runner.TensorRTRunner(tmp_path / "e" / art.path, manifest.card, art.batch)
    with pytest.raises(UserError, match="needs its export folder"):
        bare.layer_ops()
    (tmp_path / "e" / art.extra["sidecar"]).unlink()  # an engine built elsewhere has no sidecar
    runner = trt_runner.TensorRTRunner(tmp_path / "e" / art.path, manifest.card, art.batch, root=tmp_path / "e")
    with pytest.raises(UserError, match="no sidecar recording how it was built"):
        runner.layer_ops()
