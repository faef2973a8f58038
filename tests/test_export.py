"""`alexnet-deploy export`: every CPU format, its post-export check, the manifest, the model card
inside the artifacts, the LRN variant, and every bad input the issue lists."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TEST_IMAGE_SIZE, assert_user_error, run_cli

from alexnet_deploy import cli
from alexnet_deploy.calibration import split_sizes
from alexnet_deploy.data import check_class_folders, resolve_split
from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import EXPORTERS, ordered, plan_formats
from alexnet_deploy.files import sha256_file
from alexnet_deploy.manifest import Manifest, verify_integrity
from alexnet_deploy.models import ModelCard, load_weights

CPU_ARTIFACTS = {("torchscript", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                 ("torch-export", "fp32"), ("aoti", "fp32"), ("openvino", "fp32")}


@pytest.fixture(scope="module")
def manifest(exported_dir) -> Manifest:
    return Manifest.read(exported_dir)


# ---------------------------------------------------------------------------------------------
# What `export --formats all` wrote
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_cpu_format_is_exported_and_passed_its_check(manifest):
    got = {(a.format, a.precision) for a in manifest.artifacts}
    assert CPU_ARTIFACTS <= got
    for a in manifest.artifacts:
        if (a.format, a.precision) in CPU_ARTIFACTS:
            check = a.extra["check"]
            assert check["status"] == "ok" and check["batch"] == 2, (a.key, check)
            assert a.batch == {"min": 1, "max": 8} and a.export_s > 0 and a.bytes > 0


def test_all_exports_every_format_or_says_why_not(manifest):
    exported = {a.format for a in manifest.artifacts}
    skipped = {s.format: s.reason for s in manifest.skipped}
    assert set(EXPORTERS) == exported | set(skipped)
    assert all(skipped.values()), skipped
    if "tensorrt" in skipped:  # every machine without TensorRT and a GPU
        assert "tensorrt" in skipped["tensorrt"] or "CUDA" in skipped["tensorrt"]


def test_manifest_hashes_match_the_files_and_nothing_temporary_is_left(exported_dir, manifest):
    assert manifest.weights["sha256"] == sha256_file(exported_dir / manifest.weights["path"])
    for a in manifest.artifacts:
        assert verify_integrity(manifest, a) is None, a.key
    for a in manifest.find("openvino"):
        assert list(a.extra["files"]) == [a.path.removesuffix(".xml") + ".bin"]
    leftovers = [p for p in exported_dir.rglob("*") if ".tmp" in p.name or ".partial" in p.name]
    assert not leftovers
    assert not list(exported_dir.parent.glob(f".{exported_dir.name}.*"))


def test_int8_records_calibration_and_heldout_agreement(manifest):
    (a,) = manifest.find("onnx", "int8")
    q = a.extra["quantization"]
    assert (q["format"], q["activations"], q["weights"]) == ("QDQ", "int8", "int8 per-channel")
    # calibration images come from the card's val split; a disjoint part of it is held out
    n_val = sum(1 for p in Path(manifest.card.data["val"]).rglob("*.png"))
    assert (q["calibration_images"], a.extra["heldout_images"]) == split_sizes(n_val, 32)
    # the session's model learned the demo (>= 90 %): int8 must keep its decisions
    assert a.extra["heldout_top1_agreement"] >= 0.98
    # int8's smoke row: the logits' direction only (two images cannot measure agreement)
    assert a.extra["check"]["limits"]["atol"] is None and a.extra["check"]["limits"]["min_cosine"] == 0.95
    assert a.extra["check"]["cosine"] >= 0.95


def test_calibration_split_never_overlaps_and_keeps_both_parts():
    assert split_sizes(10_000, 256) == (256, 64)
    assert split_sizes(40, 32) == (32, 8)
    calib, held = split_sizes(5, 256)
    assert calib >= 1 and held >= 1 and calib + held <= 5
    with pytest.raises(UserError, match="at least 2 images"):
        split_sizes(1, 256)


# ---------------------------------------------------------------------------------------------
# The model card inside the artifacts
# ---------------------------------------------------------------------------------------------
def test_card_round_trips_through_onnx_metadata(exported_dir, manifest):
    from alexnet_deploy.backends.onnx.export import read_card_metadata

    for a in manifest.find("onnx"):
        meta = read_card_metadata(exported_dir / a.path)
        assert ModelCard.from_json(meta["card"]) == manifest.card
        assert json.loads(meta["classes"]) == manifest.card.classes
        assert json.loads(meta["mean"]) == manifest.card.input.mean
        assert json.loads(meta["std"]) == manifest.card.input.std
        assert int(meta["num_classes"]) == manifest.card.num_classes
        assert int(meta["input_size"]) == TEST_IMAGE_SIZE
        assert meta["precision"] == a.precision


def test_card_round_trips_through_torchscript_extra_files(exported_dir, manifest):
    (a,) = manifest.find("torchscript")
    extra = {"card.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(exported_dir / a.path), _extra_files=extra)
    assert ModelCard.from_json(extra["card.json"]) == manifest.card


def test_card_travels_in_torch_export_aoti_and_openvino(exported_dir, manifest):
    import openvino as ov
    from torch._inductor import aoti_load_package

    extra = {"card.json": ""}
    torch.export.load(str(exported_dir / manifest.find("torch-export")[0].path), extra_files=extra)
    assert ModelCard.from_json(extra["card.json"]) == manifest.card
    aoti = aoti_load_package(str(exported_dir / manifest.find("aoti")[0].path))
    assert ModelCard.from_json(aoti.get_metadata()["card"]) == manifest.card
    ir = ov.Core().read_model(str(exported_dir / manifest.find("openvino")[0].path))
    assert ModelCard.from_json(ir.get_rt_info(["framework", "card"]).astype(str)) == manifest.card


# ---------------------------------------------------------------------------------------------
# Choosing formats
# ---------------------------------------------------------------------------------------------
def test_required_formats_come_first_and_are_added():
    order, skipped = plan_formats(["openvino"])
    assert order == ["onnx", "openvino"] and skipped == []
    order, _ = plan_formats(["openvino", "torchscript", "openvino"])
    assert order.index("onnx") < order.index("openvino") and order.count("openvino") == 1


def test_every_plan_puts_dependencies_first_and_keeps_registry_order():
    """Every subset of the registry: required formats added, each format after what it requires
    (and after its `after` formats when they are exported too), registry order otherwise."""
    names = list(EXPORTERS)
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(names, r):
            order = ordered(list(reversed(subset)))  # plan_formats' order, availability aside
            assert set(subset) <= set(order)
            for n in order:
                for dep in (*EXPORTERS[n].requires, *(a for a in EXPORTERS[n].after if a in order)):
                    assert order.index(dep) < order.index(n), (subset, order)
            # the registry lists every format after its dependencies, so the plan is registry order
            assert order == [n for n in names if n in order], (subset, order)


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(UserError) as e:
        plan_formats(["onnx", "tflite"])
    assert "tflite" in str(e.value) and all(n in str(e.value) for n in EXPORTERS)


# ---------------------------------------------------------------------------------------------
# --force and failure: nothing half-written
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_force_replaces_a_folder_and_a_failed_export_leaves_it_untouched(random_weights, tmp_path,
                                                                          demo_data):
    from alexnet_deploy.exporters import export_all

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # --force replaces only an export folder of ours (one holding our manifest.json)
    (out / "manifest.json").write_text('{"schema": 1, "artifacts": [], "weights": {}}')
    export_all(random_weights, out, formats=["torch-export"], max_batch=2, force=True, show=False)
    assert not (out / "old.txt").exists()
    assert [a.format for a in Manifest.read(out).artifacts] == ["torch-export"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # calibration images that only fail when int8 reads them: the fp32 and fp16 ONNX files are
    # already written by then
    calib = tmp_path / "calib"
    for i, cls in enumerate(check_class_folders(resolve_split(demo_data, "val"))):
        (calib / cls).mkdir(parents=True)
        src = next((demo_data / "val" / cls).iterdir())
        (calib / cls / "img.png").write_bytes(b"broken" if i == 0 else src.read_bytes())
    with pytest.raises(UserError, match="onnx export failed: cannot read image"):
        export_all(random_weights, out, formats=["onnx"], max_batch=2, calib_data=calib, force=True,
                   show=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "out"]  # no staging folder left


# ---------------------------------------------------------------------------------------------
# A failed smoke check, and --target: through the CLI in this process (monkeypatch reaches it)
# ---------------------------------------------------------------------------------------------
def run_main(capsys, *args) -> tuple[int, str, str]:
    """`alexnet-deploy ARGS` in this process: (exit code, stdout, stderr)."""
    old, sys.argv = sys.argv, ["alexnet-deploy", *map(str, args)]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def skew_the_model_while_exporting(monkeypatch, fmt: str) -> None:
    """`fmt`'s exporter writes a model whose last bias is off by 100 for class 0: the file then
    disagrees with the eager model export compares it with (which is restored after)."""
    real = EXPORTERS[fmt].export

    def skewed(self, ctx):
        last = [m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias[0] += 100.0
        try:
            return real(self, ctx)
        finally:
            with torch.no_grad():
                last.bias[0] -= 100.0

    monkeypatch.setattr(EXPORTERS[fmt], "export", skewed)


def test_a_failed_smoke_check_exits_1_and_writes_nothing(monkeypatch, capsys, random_weights, tmp_path):
    skew_the_model_while_exporting(monkeypatch, "torchscript")
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "export", random_weights, "--out", out, "--formats", "torchscript",
                            "--max-batch", "2")
    assert code == 1, err  # a failed check, not a usage error (2)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "torchscript fp32" in err and "failed its check" in err and "elementwise" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_target_is_export_then_recommend(monkeypatch, capsys, random_weights, tmp_path):
    import alexnet_deploy.bench.recommend as rec

    calls = []
    monkeypatch.setattr(rec, "recommend_export", lambda out, **kw: calls.append(
        (Manifest.read(out).artifacts[0].format, kw)))
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "export", random_weights, "--out", out, "--formats", "torchscript",
                            "--max-batch", "2", "--target", "cpu")
    assert code == 0, err
    # recommend ran on the finished export folder (its gate: validate on the card's val data)
    assert calls == [("torchscript", {"target": "cpu", "show": True})]


# ---------------------------------------------------------------------------------------------
# Bad input through the CLI: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------
def test_help_lists_the_registered_formats():
    proc = run_cli("export", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert all(n in text for n in EXPORTERS)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing-weights", "corrupt-weights", "unknown-format", "opset", "max-batch",
                                  "not-empty", "calib-missing", "calib-no-images"])
def test_bad_input_is_one_clear_line(case, random_weights, tmp_path, demo_data):
    out = tmp_path / "out"
    args = [random_weights, "--out", out, "--formats", "onnx"]
    needles: tuple[str, ...]
    if case == "missing-weights":
        args[0], needles = tmp_path / "nope.safetensors", ("weights file not found",)
    elif case == "corrupt-weights":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"not safetensors at all")
        args[0], needles = bad, ("not a readable safetensors",)
    elif case == "unknown-format":
        args[4], needles = "onnx,tflite", ("unknown format 'tflite'", "torchscript", "openvino")
    elif case == "opset":
        args += ["--opset", "12"]
        needles = ("--opset 12", "18")
    elif case == "max-batch":
        args += ["--max-batch", "0"]
        needles = ("--max-batch must be between 1 and 65536",)
    elif case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        needles = ("not empty", "--force")
    elif case == "calib-missing":
        args += ["--calib-data", tmp_path / "no-such-dir"]
        needles = ("--calib-data", "not found")
    else:  # a folder without images (other class names are fine: calibration needs no labels)
        (tmp_path / "other" / "cls").mkdir(parents=True)
        (tmp_path / "other" / "cls" / "notes.txt").write_text("not an image")
        args += ["--calib-data", tmp_path / "other"]
        needles = ("--calib-data", "holds no images")
    proc = run_cli("export", *args)
    assert_user_error(proc, *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (out / "manifest.json").exists()
    if case == "not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_force_never_deletes_the_weights_it_reads(tmp_path, random_weights):
    from alexnet_deploy.exporters import export_all

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(random_weights, run / "weights.safetensors")
    with pytest.raises(UserError, match="holds .*weights.safetensors, which this export reads"):
        export_all(run / "weights.safetensors", run, formats=["torch-export"], force=True, show=False)
    assert (run / "weights.safetensors").exists()


def test_exported_weights_copy_loads_with_the_card(exported_dir, manifest):
    model, card = load_weights(exported_dir / manifest.weights["path"])
    assert (card.arch, card.classes, card.input) == (manifest.card.arch, manifest.card.classes,
                                                     manifest.card.input)
    assert os.path.isfile(manifest.weights["source"])
