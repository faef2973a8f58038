"""export/cpp: the C++ programs build against the installed wheels, load the exported artifacts and
give the same logits as PyTorch; and `alexnet-deploy preprocess`, which feeds them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, assert_user_error, cli

from alexnet_deploy.data import preprocess_files
from alexnet_deploy.models import read_card
from alexnet_deploy.tolerances import limits_for

CPP_DIR = REPO / "export" / "cpp"
PROGRAMS = ("alexnet_infer_torch", "alexnet_infer_openvino")


def _demo_images(demo_data: Path, n: int) -> list[Path]:
    """n validation images from different classes (n <= the export's max batch)."""
    classes = sorted(p for p in (demo_data / "val").iterdir() if p.is_dir())
    return [sorted(c.iterdir())[0] for c in classes[:n]]


# ---------------------------------------------------------------------------------------------
# alexnet-deploy preprocess
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_preprocess_writes_the_cards_batch(tmp_path, random_weights, demo_data):
    images = _demo_images(demo_data, 3)
    out = tmp_path / "batch.npy"
    proc = cli("preprocess", *images, "--card", random_weights, "--out", out)
    assert proc.returncode == 0, proc.stderr
    batch = np.load(out, allow_pickle=False)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    card = read_card(random_weights)
    assert batch.shape == (3, *card.input.shape)
    np.testing.assert_array_equal(batch, preprocess_files(images, card))
    assert [p.name for p in tmp_path.iterdir()] == ["batch.npy"], "temporary files left behind"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing image", "not an image", "missing card", "not .npy"])
def test_preprocess_bad_input_is_one_line(tmp_path, random_weights, demo_data, case):
    image = _demo_images(demo_data, 1)[0]
    args, needle = {
        "missing image": ([tmp_path / "nope.png", "--card", random_weights, "--out", tmp_path / "x.npy"],
                          "image not found"),
        "not an image": ([random_weights, "--card", random_weights, "--out", tmp_path / "x.npy"],
                         "cannot read image"),
        "missing card": ([image, "--card", tmp_path / "none", "--out", tmp_path / "x.npy"], "not found"),
        "not .npy": ([image, "--card", random_weights, "--out", tmp_path / "x.txt"], ".npy"),
    }[case]
    assert_user_error(cli("preprocess", *args), needle)
    assert not any(tmp_path.glob("*.npy")), "a failed run must not leave an output file"


# ---------------------------------------------------------------------------------------------
# Building the programs (once per session)
# ---------------------------------------------------------------------------------------------
def _toolchain_missing() -> str | None:
    if not shutil.which("cmake"):
        return "cmake is not installed"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) is installed"
    return None


@pytest.fixture(scope="session")
def cpp_bin(tmp_path_factory) -> Path:
    """Configure and build the torch and OpenVINO programs; -O1 because compile time dominates."""
    reason = _toolchain_missing()
    if reason:
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("cpp-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(CPP_DIR), "-B", str(build), *generator,
                 f"-DALEXNET_PYTHON={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
                 "-DCMAKE_CXX_FLAGS_RELEASE=-O1"]
    started = time.perf_counter()
    log = _run_or_fail(configure, "configure")
    targets = [p for p in PROGRAMS if f"{p}: not built" not in log]
    if not targets:
        pytest.fail(f"CMake found neither libtorch nor OpenVINO:\n{log}")
    _run_or_fail(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *targets],
                 "build")
    print(f"C++ programs {targets} built in {time.perf_counter() - started:.0f} s")
    return build


def _run_or_fail(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"C++ {what} failed ({' '.join(cmd)}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def _program(cpp_bin: Path, name: str) -> Path:
    exe = cpp_bin / name
    if not exe.exists():
        pytest.skip(f"{name} was not built: CMake did not find its runtime (see the configure output)")
    return exe


# ---------------------------------------------------------------------------------------------
# Running them against the export
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cpp_export(exported_dir) -> Path:
    """conftest's export of every CPU format (max batch 8, with manifest.json)."""
    return exported_dir


@pytest.fixture(scope="session")
def cpp_batch(tmp_path_factory, cpp_export, demo_data) -> Path:
    """3 demo images through the real `alexnet-deploy preprocess` with the export's card."""
    out = tmp_path_factory.mktemp("cpp-input") / "batch.npy"
    proc = cli("preprocess", *_demo_images(demo_data, 3), "--card", cpp_export, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def reference_logits(cpp_export, cpp_batch) -> np.ndarray:
    """torch eager fp32 on the export's own weights: the reference validate uses."""
    import torch

    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.models import load_weights

    manifest = Manifest.read(cpp_export)
    model, _ = load_weights(manifest.path_of(manifest.weights_artifact()))
    with torch.inference_mode():
        return model(torch.from_numpy(np.load(cpp_batch))).numpy()


def _artifact(export: Path, fmt: str) -> Path:
    manifest = json.loads((export / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["format"] == fmt and a["precision"] == "fp32" and a["device"] == "cpu":
            return export / a["path"]
    reasons = [s["reason"] for s in manifest.get("skipped", []) if s["format"] == fmt]
    pytest.skip(f"the export has no fp32 cpu {fmt} artifact ({'; '.join(reasons) or 'not exported'})")


@pytest.mark.cpp
@pytest.mark.slow
@pytest.mark.parametrize("program, fmt", [
    ("alexnet_infer_torch", "aoti"),
    ("alexnet_infer_torch", "torchscript"),
    ("alexnet_infer_openvino", "onnx"),
    ("alexnet_infer_openvino", "openvino"),
])
def test_program_matches_pytorch(cpp_bin, cpp_export, cpp_batch, reference_logits, tmp_path, program, fmt):
    exe = _program(cpp_bin, program)
    model = _artifact(cpp_export, fmt)
    dump = tmp_path / "logits.npy"
    proc = subprocess.run([str(exe), str(model), str(cpp_batch), "--repeat", "2", "--top", "3",
                           "--dump-logits", str(dump)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    logits = np.load(dump)
    assert logits.dtype == np.float32 and logits.shape == reference_logits.shape
    lim = limits_for("fp32")
    np.testing.assert_allclose(logits, reference_logits, atol=lim.atol, rtol=lim.rtol)

    # Top-1 by class name, as a user reads it; images whose top two logits are closer than the
    # tolerance are a legitimate tie and are not compared.
    classes = read_card(cpp_export).classes
    lines = proc.stdout.splitlines()
    checked = 0
    for i, ref in enumerate(reference_logits):
        top2 = np.sort(ref)[-2:]
        if top2[1] - top2[0] <= lim.atol + lim.rtol * abs(top2[1]):
            continue
        first = lines[lines.index(f"image {i}:") + 1].split()
        assert first[:2] == ["1.", classes[int(ref.argmax())]], proc.stdout
        checked += 1
    assert checked, "every image was a near-tie: nothing compared"
    assert f"time per batch of {len(reference_logits)}:" in proc.stdout
    assert "card: " in proc.stdout and "none found" not in proc.stdout, "the card was not found"


@pytest.mark.cpp
@pytest.mark.slow
@pytest.mark.parametrize("program, fmt", [("alexnet_infer_torch", "aoti"),
                                          ("alexnet_infer_openvino", "onnx")])
def test_program_refuses_bad_input(cpp_bin, cpp_export, tmp_path, program, fmt):
    """Each failure: non-zero exit, one "error:" line naming the problem, no crash."""
    exe = str(_program(cpp_bin, program))
    model = _artifact(cpp_export, fmt)
    c, h, w = read_card(cpp_export).input.shape
    max_batch = next(a["batch"]["max"] for a in json.loads((cpp_export / "manifest.json").read_text())["artifacts"]
                     if a["path"] == str(model.relative_to(cpp_export)))
    np.save(tmp_path / "small.npy", np.zeros((1, c, h // 2, w // 2), np.float32))
    np.save(tmp_path / "rank3.npy", np.zeros((c, h, w), np.float32))
    np.save(tmp_path / "f64.npy", np.zeros((1, c, h, w), np.float64))
    np.save(tmp_path / "big.npy", np.zeros((max_batch + 1, c, h, w), np.float32))
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((1, c, h, w), np.float32))
    corrupt = tmp_path / f"corrupt{model.suffix}"
    corrupt.write_bytes(b"not a model")

    cases = [
        ([str(model), str(tmp_path / "small.npy")], 2, "expects"),
        ([str(model), str(tmp_path / "rank3.npy")], 2, "4 dimensions"),
        ([str(model), str(tmp_path / "f64.npy")], 2, "float32"),
        ([str(model), str(tmp_path / "big.npy")], 2, f"at most {max_batch}"),
        ([str(model), str(tmp_path / "missing.npy")], 2, "not found"),
        ([str(tmp_path / "missing.pt2"), str(ok)], 2, "not found"),
        ([str(model), str(ok), "--top", "0"], 2, "--top"),
        ([str(corrupt), str(ok)], 1, "cannot"),
    ]
    for args, code, needle in cases:
        proc = subprocess.run([exe, *args, "--repeat", "1"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and needle in errors[0], (args, proc.stderr)


@pytest.mark.cpp
@pytest.mark.slow
@pytest.mark.parametrize("program, fmt", [("alexnet_infer_torch", "torchscript"),
                                          ("alexnet_infer_openvino", "onnx")])
def test_program_runs_a_resnet18_export(cpp_bin, resnet18_export, demo_data, tmp_path, program, fmt):
    """The programs take the shapes and class names from the artifact and its card: a ResNet-18 with
    10 classes at 64 px gives eager PyTorch's logits and names its classes."""
    import torch

    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.models import load_weights

    exe = _program(cpp_bin, program)
    batch = tmp_path / "batch.npy"
    proc = cli("preprocess", *_demo_images(demo_data, 3), "--card", resnet18_export, "--out", batch)
    assert proc.returncode == 0, proc.stderr
    manifest = Manifest.read(resnet18_export)
    model, card = load_weights(manifest.path_of(manifest.weights_artifact()))
    assert card.arch == "resnet18" and np.load(batch).shape == (3, 3, 64, 64)
    with torch.inference_mode():
        reference = model(torch.from_numpy(np.load(batch))).numpy()

    dump = tmp_path / "logits.npy"
    proc = subprocess.run([str(exe), str(_artifact(resnet18_export, fmt)), str(batch), "--repeat", "1",
                           "--top", "2", "--dump-logits", str(dump)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lim = limits_for("fp32")
    np.testing.assert_allclose(np.load(dump), reference, atol=lim.atol, rtol=lim.rtol)
    named = [line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("1. ")]
    assert len(named) == 3 and set(named) <= set(card.classes), proc.stdout
