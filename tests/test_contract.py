"""The typed contract at the boundary (card.py, manifest.py): hostile cards and manifests get one
field-path line; every path a manifest names is contained in its export folder before anything
is opened; every command that loads an artifact checks its sha256; NaN logits, a card that does
not match its artifact, and control characters in untrusted names are caught."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from trial_support import mkex, sha

from alexnet_deploy.card import InputSpec, ModelCard, printable
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import SCHEMA_FILE, Manifest, json_schema_text, verify_integrity

# ---------------------------------------------------------------------------------------------
# Fixtures: the session's untrained export, copied (hard links + a fresh manifest) per test
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(random_export) -> Path:
    """conftest's random_export: torchscript and onnx fp32 / fp16 / int8 of untrained weights."""
    return random_export


def art(m: dict, path: str) -> dict:
    return next(a for a in m["artifacts"] if a["path"] == path)


def read_error(folder: Path) -> str:
    with pytest.raises(UserError) as e:
        Manifest.read(folder)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# Field-path messages for hostile manifests and cards
# ---------------------------------------------------------------------------------------------
HOSTILE_MANIFESTS = {
    "artifacts a dict": (lambda m: m.update(artifacts={"a": 1}), "artifacts: must be a list"),
    "weights a string": (lambda m: m.update(weights="weights.safetensors"), "weights: must be an object"),
    "batch big": (lambda m: m["artifacts"][0].update(batch="big"), "artifacts.0.batch: must be an object"),
    "batch min > max": (lambda m: m["artifacts"][0].update(batch={"min": 5, "max": 2}),
                        "artifacts.0.batch: max (2) must be >= min (5)"),
    "batch huge": (lambda m: m["artifacts"][0].update(batch={"min": 1, "max": 10**9}),
                   "artifacts.0.batch.max: must be <= 65536"),
    "schema a string": (lambda m: m.update(schema="1"), "schema: must be the integer 1 (got '1')"),
    "card a string": (lambda m: m.update(card="just a string"), "card: must be an object"),
    "card input null": (lambda m: m["card"].update(input=None), "card.input: must be an object"),
    "negative crop": (lambda m: m["card"]["input"].update(crop=-5, resize=-5), "card.input.resize: must be >= 1"),
    "giga classes": (lambda m: m["card"].update(num_classes=10**9, classes=[]),
                     "card.num_classes: must be <= 100000"),
    "traversal": (lambda m: m["artifacts"][0].update(path="../../outside/secret.txt"),
                  "artifacts.0.path: must not contain '..'"),
    "absolute": (lambda m: m["artifacts"][0].update(path="/etc"), "artifacts.0.path: must be a path relative"),
    "absolute weights": (lambda m: m["weights"].update(path="/tmp/w.safetensors"), "weights: path must be"),
    "extra files escaping": (lambda m: m["artifacts"][0].update(extra={"files": {"../x": "0" * 64}}),
                             "extra.files entry '../x' must not contain '..'"),
    "unknown format": (lambda m: m["artifacts"][0].update(format="exe"), "artifacts.0.format: must be one of"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_one_field_path_line(export, tmp_path, case):
    edit, needle = HOSTILE_MANIFESTS[case]
    ex = mkex(export, tmp_path / "ex", lambda m, _d: edit(m))
    msg = read_error(ex)
    assert needle in msg and "manifest.json" in msg and "\n" not in msg, msg


def test_schema_2_is_a_version_message(export, tmp_path):
    ex = mkex(export, tmp_path / "ex", lambda m, _d: m.update(schema=2))
    assert "has manifest schema 2; this version reads schema 1" in read_error(ex)


def test_unknown_keys_are_kept_and_written_back(export, tmp_path):
    def edit(m, _d):
        m["future"] = {"x": 1}
        m["card"]["colour"] = "blue"
        m["artifacts"][0]["batch"]["opt"] = 2
    ex = mkex(export, tmp_path / "ex", edit)
    again = Manifest.read(ex).to_dict()
    assert again["future"] == {"x": 1} and again["card"]["colour"] == "blue"
    assert again["artifacts"][0]["batch"]["opt"] == 2


def test_ten_to_the_nine_classes_is_refused_before_any_name_is_built():
    # without the bound this builds 10^9 strings (tens of GB): the test would die of MemoryError
    with pytest.raises(UserError, match=r"model card: num_classes: must be <= 100000 \(got 1000000000\)"):
        ModelCard.from_json(json.dumps({"num_classes": 10**9}))


@pytest.mark.parametrize("text, needle", [
    ('"just a string"', "model card: must be an object (got 'just a string')"),
    ('{"input": null}', "model card: input: must be an object (got None)"),
    ('{"input": {"crop": -5}}', "model card: input.crop: must be >= 1 (got -5)"),
    ('{"input": {"crop": 64, "std": [0, 1, 1]}}', "model card: input.std: must be 3 numbers > 0"),
    ('{"input": {"crop": 64, "mean": [1, 2]}}', "model card: input.mean: must have at least 3 items"),
    ('{"num_classes": 2, "classes": ["a"]}', "model card: lists 1 class names for 2 classes"),
    ('{"num_classes": "3"}', "model card: num_classes: must be an integer"),
    ('{"input": {"crop": 64, "shape": [3, 32, 32]}}', "does not match crop 64"),
])
def test_hostile_card_is_one_field_path_line(text, needle):
    with pytest.raises(UserError) as e:
        ModelCard.from_json(text)
    assert needle in str(e.value), str(e.value)


def test_card_round_trips_and_defaults_names():
    card = ModelCard(num_classes=3, input=InputSpec.for_size(64), extra_key=[1])
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.classes == ["class_0", "class_1", "class_2"]
    assert again.to_dict()["extra_key"] == [1] and again.image_size == 64


def test_schema_file_is_the_generated_one():
    assert SCHEMA_FILE.read_text() == json_schema_text(), \
        "schema/manifest.schema.json is stale: run python -m alexnet_deploy.manifest --schema --write"


def test_card_and_manifest_do_not_import_torch():
    code = ("import sys, alexnet_deploy.card, alexnet_deploy.manifest; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# Containment: nothing outside the export folder is opened
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fifo_outside(tmp_path) -> Path:
    """A FIFO outside the export: opening it for reading blocks, so a test that opened it would
    hang; the watchdog below writes to it after a timeout to unblock and flag the failure."""
    p = tmp_path / "outside" / "trap.fifo"
    p.parent.mkdir()
    os.mkfifo(p)
    return p


def no_open(fifo: Path, fn, timeout: float = 20.0):
    """Run fn(); fail if it opened `fifo` (the watchdog's write succeeds only when a reader has it open)."""
    opened = threading.Event()

    def watchdog():
        import time
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only with a reader
            except OSError:
                time.sleep(0.05)
                continue
            opened.set()
            os.close(fd)
            return

    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    try:
        return fn()
    finally:
        assert not opened.is_set(), f"{fifo} was opened"


def test_symlink_out_is_refused_without_opening_the_target(export, tmp_path, fifo_outside):
    def edit(m, d):
        (d / "alexnet.onnx").unlink()
        (d / "alexnet.onnx").symlink_to(fifo_outside)
    ex = mkex(export, tmp_path / "ex", edit)
    manifest = Manifest.read(ex)
    problem = no_open(fifo_outside, lambda: verify_integrity(manifest, art_obj(manifest, "alexnet.onnx")))
    assert "alexnet.onnx is a symlink pointing outside the export folder" in problem


def art_obj(manifest: Manifest, path: str):
    return next(a for a in manifest.artifacts if a.path == path)


def test_extra_files_symlink_out_is_refused(export, tmp_path, fifo_outside):
    def edit(m, d):
        (d / "side.bin").symlink_to(fifo_outside)
        art(m, "alexnet.onnx")["extra"]["files"] = {"side.bin": "0" * 64}
    manifest = Manifest.read(mkex(export, tmp_path / "ex", edit))
    problem = no_open(fifo_outside, lambda: verify_integrity(manifest, art_obj(manifest, "alexnet.onnx")))
    assert "side.bin is a symlink pointing outside" in problem


def test_fifo_and_folder_inside_are_refused(export, tmp_path):
    def edit(m, d):
        (d / "alexnet.onnx").unlink()
        os.mkfifo(d / "alexnet.onnx")
        os.mkdir(d / "dir.pt")
        m["artifacts"].append({**art(m, "alexnet.torchscript.pt"), "path": "dir.pt"})
    manifest = Manifest.read(mkex(export, tmp_path / "ex", edit))
    assert "not a regular file" in verify_integrity(manifest, art_obj(manifest, "alexnet.onnx"))
    assert "is a folder where the manifest lists a file" in verify_integrity(manifest, art_obj(manifest, "dir.pt"))


def test_info_on_a_fifo_does_not_hang(tmp_path):
    from alexnet_deploy.info import describe

    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(UserError, match="not a regular file"):
        describe(tmp_path / "fifo.onnx")


def test_predict_a_symlinked_artifact_says_symlink_outside(export, tmp_path, demo_data, fifo_outside):
    from alexnet_deploy.predict import run_predict

    def edit(m, d):
        (d / "alexnet.onnx").unlink()
        (d / "alexnet.onnx").symlink_to(fifo_outside)
    ex = mkex(export, tmp_path / "ex", edit)
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(UserError, match="symlink pointing outside the export folder"):
        no_open(fifo_outside, lambda: run_predict(ex / "alexnet.onnx", [image]))


def test_predict_manifest_json_means_the_folder(export, demo_data, capsys):
    from alexnet_deploy.predict import run_predict

    image = next((demo_data / "test").rglob("*.png"))
    assert len(run_predict(export / "manifest.json", [image], top=1)) == 1


# ---------------------------------------------------------------------------------------------
# Integrity in every loading command, NaN, class counts, card vs artifact
# ---------------------------------------------------------------------------------------------
def test_benchmark_refuses_a_swapped_artifact(export, tmp_path):
    from alexnet_deploy.bench import benchmark

    def edit(m, d):
        (d / "alexnet.onnx").unlink()
        shutil.copy(d / "alexnet.int8.onnx", d / "alexnet.onnx")
    ex = mkex(export, tmp_path / "ex", edit)
    with pytest.raises(CheckFailed, match="integrity: alexnet.onnx has sha256"):
        benchmark(ex, backends=["onnxruntime-cpu"], batch_sizes=[1], warmup_s=0, duration_s=0.05, threads=1)


def _swapped_for(runner_name: str, export: Path, dst: Path) -> Path:
    """A copy of `export` in which the file `runner_name` would run is not the one its manifest
    entry hashes: the weights copy for the weights runner, else an added entry of the runner's
    first format whose file holds other bytes than its listed sha256 (integrity is checked before
    anything is loaded, so the bytes need not be a real model)."""
    from alexnet_deploy.runtimes import RUNNERS

    cls = RUNNERS[runner_name]
    fmt = cls.formats[0]

    def edit(m, d):
        if fmt == "weights":
            (d / m["weights"]["path"]).unlink()
            (d / m["weights"]["path"]).write_bytes(b"not the weights the manifest lists")
            return
        (d / f"swapped.{fmt}").write_bytes(b"swapped bytes")
        listed = {**art(m, "alexnet.onnx"), "format": fmt, "precision": "fp32", "device": cls.device,
                  "path": f"swapped.{fmt}", "sha256": hashlib.sha256(b"the exported bytes").hexdigest(),
                  "bytes": len(b"swapped bytes"), "extra": {}}
        m["artifacts"] = [listed]
    return mkex(export, dst, edit)


def _runner_names() -> list[str]:
    from alexnet_deploy.runtimes import RUNNERS

    return list(RUNNERS)


def _runnable_here(name: str) -> None:
    from alexnet_deploy.runtimes import RUNNERS

    reason = RUNNERS[name].unavailable_reason()
    if reason:
        pytest.skip(f"{name} cannot run on this machine: {reason}")


@pytest.mark.parametrize("runner", _runner_names())
def test_every_runner_refuses_a_swapped_file_before_loading_it(runner, export, tmp_path, demo_data):
    """From the runner registry: benchmark and predict check the sha256 of whatever file a runner
    would load, for every runner, so a new backend is covered without a new test."""
    from alexnet_deploy.bench import benchmark
    from alexnet_deploy.predict import run_predict

    _runnable_here(runner)
    ex = _swapped_for(runner, export, tmp_path / "ex")
    with pytest.raises(CheckFailed, match=r"integrity: .* has sha256"):
        benchmark(ex, backends=[runner], batch_sizes=[1], warmup_s=0, duration_s=0.05, threads=1)
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(UserError, match=r"integrity: .* has sha256 .* \(refusing to load it\)"):
        run_predict(ex, [image], backend=runner)


@pytest.mark.parametrize("runner", _runner_names())
def test_every_runner_runs_formats_the_manifest_can_list(runner):
    from alexnet_deploy.manifest import FORMATS
    from alexnet_deploy.runtimes import RUNNERS

    cls = RUNNERS[runner]
    assert cls.formats and set(cls.formats) <= {*FORMATS, "weights"}, cls.formats
    assert cls.device in ("cpu", "cuda")


def _format_names() -> list[str]:
    from alexnet_deploy.exporters import EXPORTERS

    return list(EXPORTERS)


@pytest.mark.parametrize("fmt", _format_names())
def test_every_exported_format_reads_back_from_a_manifest(fmt, export, tmp_path):
    """From the exporter registry: a manifest listing an artifact of each format a user can
    export reads back with that format (an export the reader refused would be unusable)."""
    def edit(m, d):
        m["artifacts"] = [{**art(m, "alexnet.onnx"), "format": fmt, "path": f"x.{fmt}"}]
        (d / f"x.{fmt}").write_bytes(b"x")
    manifest = Manifest.read(mkex(export, tmp_path / "ex", edit))
    assert [a.format for a in manifest.artifacts] == [fmt]


def test_card_with_fewer_classes_than_the_artifact_is_one_line(export, tmp_path, demo_data):
    from alexnet_deploy.predict import run_predict

    def edit(m, d):
        m["card"].update(num_classes=2, classes=["a", "b"])
    ex = mkex(export, tmp_path / "ex", edit)
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(CheckFailed, match="the card lists 2 classes but alexnet.onnx outputs 10 logits"):
        run_predict(ex / "alexnet.onnx", [image], top=3)


def test_card_input_size_unlike_the_artifact_is_one_line(export, tmp_path, demo_data):
    from alexnet_deploy.predict import run_predict

    ex = mkex(export, tmp_path / "ex", lambda m, d: m["card"].update(input=InputSpec.for_size(96).to_dict()))
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(CheckFailed, match="the card's input is 3x96x96 but alexnet.onnx takes 3x64x64"):
        run_predict(ex / "alexnet.onnx", [image], backend="onnxruntime-cpu")


def test_junk_artifact_with_matching_sha_is_one_line(export, tmp_path, demo_data):
    from alexnet_deploy.predict import run_predict

    def edit(m, d):
        (d / "alexnet.torchscript.pt").unlink()
        (d / "alexnet.torchscript.pt").write_bytes(os.urandom(2000))
        art(m, "alexnet.torchscript.pt")["sha256"] = sha(d / "alexnet.torchscript.pt")
    ex = mkex(export, tmp_path / "ex", edit)
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(CheckFailed, match="alexnet.torchscript.pt failed to load or run on torchscript"):
        run_predict(ex / "alexnet.torchscript.pt", [image])


def test_predict_refuses_nan_logits(tmp_path, random_weights, demo_data):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from alexnet_deploy.predict import run_predict

    with safe_open(str(random_weights), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(random_weights))
    state["classifier.6.bias"][0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(state, str(bad), metadata=meta)
    image = next((demo_data / "test").rglob("*.png"))
    with pytest.raises(CheckFailed, match="NaN or Inf logits"):
        run_predict(bad, [image])


def test_validate_bounds_its_inputs_before_allocating(export):
    from alexnet_deploy.validate import batch_sizes_for, validate

    # the weights accept batches up to 65536: 60000 inputs of 3x64x64 would be 2.7 GiB
    with pytest.raises(UserError, match=r"60,000 inputs of 3x64x64 \(2.7 GiB"):
        validate(export, images=0, batch_sizes=[60000], backends=["torch-eager"])
    weights = Manifest.read(export).weights_artifact()
    assert max(batch_sizes_for(weights, None, cap=65536)) == 64  # the default stays small


# ---------------------------------------------------------------------------------------------
# Untrusted text on the terminal
# ---------------------------------------------------------------------------------------------
def test_control_characters_are_escaped():
    assert printable("red\x1b[31m\nline\r\x9b\u202e") == "red\\x1b[31m\\nline\\r\\x9b\\u202e"
    assert printable("ünïcödé 🙂 name") == "ünïcödé 🙂 name"


def test_predict_prints_escaped_class_names(export, tmp_path, demo_data, capsys):
    from alexnet_deploy.predict import run_predict

    evil = [f"c{i}\x1b[31m\nRED" for i in range(10)]
    ex = mkex(export, tmp_path / "ex", lambda m, d: m["card"].update(classes=evil))
    image = next((demo_data / "test").rglob("*.png"))
    run_predict(ex / "alexnet.onnx", [image], top=3)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m\\nRED" in out
    assert all(line.startswith((str(image)[:5], "  ")) for line in out.splitlines())


def test_deepcopy_of_card_is_equal():
    card = ModelCard(num_classes=2)
    assert copy.deepcopy(card) == card and np.array_equal(card.input.shape, [3, 224, 224])
