"""predict and info on every kind of target: weights, an export folder, single artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli

from alexnet_deploy.data import preprocess_files
from alexnet_deploy.errors import UserError
from alexnet_deploy.info import describe
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.models import build_model, load_weights
from alexnet_deploy.predict import run_predict
from alexnet_deploy.runtimes import runners_for


@pytest.fixture(scope="module")
def images(demo_data) -> list[Path]:
    return [sorted((demo_data / "val" / c).glob("*.png"))[0] for c in ("circle", "star", "ring")]


def eager_top1(weights: Path, images: list[Path]) -> list[str]:
    model, card = load_weights(weights)
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess_files(images, card))).numpy()
    return [card.classes[i] for i in logits.argmax(1)]


def test_predict_an_export_folder_prints_top_k_per_image(exported_dir, images, capsys):
    manifest = Manifest.read(exported_dir)
    preds = run_predict(exported_dir, images, top=3)
    out = capsys.readouterr().out
    assert [p.image for p in preds] == [str(i) for i in images]
    for p in preds:
        assert len(p.top) == 3
        probs = [prob for _, prob in p.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(name in manifest.card.classes for name, _ in p.top)
        assert p.image in out and f"1. {p.top[0][0]}" in out
    weights = exported_dir / manifest.weights_artifact().path
    assert [p.top[0][0] for p in preds] == eager_top1(weights, images)


@pytest.mark.slow
def test_predict_with_each_artifact_agrees_with_eager(exported_dir, images, capsys):
    manifest = Manifest.read(exported_dir)
    expected = eager_top1(exported_dir / manifest.weights_artifact().path, images)
    choices = [c for c in runners_for(manifest) if c.available and c.runner_cls.device == "cpu"]
    assert choices
    for c in choices:
        preds = run_predict(manifest.path_of(c.artifact), images, top=2, backend=c.runner)
        assert f"{c.runner} [{c.artifact.precision}]" in capsys.readouterr().out
        if c.artifact.precision != "int8":  # int8 may flip a near tie; validate judges it on 20+ images
            assert [p.top[0][0] for p in preds] == expected, c


def test_predict_with_bare_weights(random_weights, images, capsys):
    preds = run_predict(random_weights, images[:1], top=20)
    assert len(preds[0].top) == 10  # top is capped at the number of classes
    assert sum(p for _, p in preds[0].top) == pytest.approx(1.0, abs=1e-5)
    assert preds[0].top[0][0] == eager_top1(random_weights, images[:1])[0]
    assert f"torch-eager [fp32] {random_weights.name}" in capsys.readouterr().out


def test_bare_weights_become_a_runner_from_the_file_and_its_card(random_weights):
    """No manifest is made up for a weights file outside an export: the runner is built from the
    file and the card it carries, and there is no listed hash to check it against."""
    from alexnet_deploy.backends.torch.runner import TorchEagerRunner
    from alexnet_deploy.models import read_card
    from alexnet_deploy.predict import resolve_target

    target = resolve_target(random_weights)
    assert type(target.runner) is TorchEagerRunner and target.integrity is None
    assert target.runner.path == random_weights.resolve() and target.runner.card == read_card(random_weights)
    assert not target.runner.active  # loaded only when predict runs it


def test_predict_bad_inputs_exit_2(exported_dir, images, tmp_path):
    assert_user_error(run_cli("predict", exported_dir, tmp_path / "missing.png"), "image not found")


@pytest.mark.parametrize("case, message", [
    ("missing target", "not found"),
    ("image as target", "not inside an export folder"),
    ("unknown backend", "unknown backend 'nope'; choose from: torch-eager"),
    ("not an image", "cannot read image"),
    ("backend for another format", "backend torch-eager cannot run"),
])
def test_predict_bad_inputs_are_user_errors(case, message, exported_dir, images, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    onnx = Manifest.read(exported_dir).find("onnx", "fp32")
    if case == "backend for another format" and not onnx:
        pytest.skip("the export has no fp32 ONNX artifact")
    target, imgs, backend = {
        "missing target": (tmp_path / "nothing", images, None),
        "image as target": (images[1], images, None),
        "unknown backend": (exported_dir, images, "nope"),
        "not an image": (exported_dir, [not_an_image], None),
        "backend for another format": (exported_dir / (onnx[0].path if onnx else ""), images, "torch-eager"),
    }[case]
    with pytest.raises(UserError, match=message):
        run_predict(target, imgs, backend=backend)


def test_info_on_weights_counts_tensors_and_parameters(random_weights):
    info = describe(random_weights)
    model = build_model("alexnet", 10)
    assert info["kind"] == "weights"
    assert info["parameters"] == sum(p.numel() for p in model.state_dict().values())
    assert info["tensors"] == len(model.state_dict())
    assert info["card"]["num_classes"] == 10 and len(info["sha256"]) == 64


def test_info_on_an_export_folder_as_json(exported_dir):
    proc = run_cli("info", exported_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    manifest = Manifest.read(exported_dir)
    assert info["kind"] == "export"
    assert [a["path"] for a in info["artifacts"]] == [a.path for a in manifest.artifacts]
    onnx = [row for row in info["artifacts"] if (row["format"], row["precision"]) == ("onnx", "fp32")]
    if onnx:  # each artifact names the runners that accept it, None meaning "runs here"
        assert onnx[0]["runs_here"]["onnxruntime-cpu"] is None
        assert "onnxruntime-cuda" in onnx[0]["runs_here"]
    assert info["card"]["classes"] == manifest.card.classes


def test_info_rich_output_on_an_export_folder(exported_dir):
    proc = run_cli("info", exported_dir)
    assert proc.returncode == 0, proc.stderr
    for a in Manifest.read(exported_dir).artifacts:
        assert a.sha256[:12] in proc.stdout


def test_info_on_an_onnx_artifact_shows_dynamic_batch_and_the_card(exported_dir):
    manifest = Manifest.read(exported_dir)
    arts = manifest.find("onnx", "fp32")
    if not arts:
        pytest.skip("the export has no fp32 ONNX artifact")
    info = describe(manifest.path_of(arts[0]))
    [inp] = info["inputs"]
    assert inp["name"] == arts[0].input_name and inp["dynamic"] == [0]
    assert inp["shape"][1:] == manifest.card.input.shape
    assert info["opsets"]["ai.onnx"] >= 7
    assert info["card"]["classes"] == manifest.card.classes  # from metadata_props
    assert info["manifest"]["sha256"] == arts[0].sha256


def test_info_on_every_other_artifact_reads_its_manifest_entry(exported_dir):
    manifest = Manifest.read(exported_dir)
    for art in manifest.artifacts:
        if art.format == "onnx":
            continue
        info = describe(manifest.path_of(art))
        assert info["kind"] == "artifact"
        assert (info["format"], info["precision"], info["sha256"]) == (art.format, art.precision, art.sha256)


def test_info_bad_inputs(tmp_path, images):
    assert_user_error(run_cli("info", tmp_path / "nothing"), "not found")
    with pytest.raises(UserError, match="cannot describe"):
        describe(images[0])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="not a readable safetensors"):
        describe(broken)
    fake_onnx = tmp_path / "model.onnx"
    fake_onnx.write_text("not protobuf")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        describe(fake_onnx)
