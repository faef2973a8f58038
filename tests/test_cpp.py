"""export/cpp: the C++ programs build against the installed wheels and packaged image libraries,
decode and preprocess images exactly as the Python path does, load the exported artifacts and give
the same logits and classes as the Python runners; and `alexnet-deploy preprocess`."""

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
PROGRAMS = ("alexnet_preprocess", "alexnet_infer_torch", "alexnet_infer_openvino")


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
    if "no program built" in log:  # `make test` installs the packages; a skip would hide a broken set-up
        pytest.fail(next(line for line in log.splitlines() if "no program built" in line))
    targets = [p for p in PROGRAMS if f"{p}: not built" not in log]
    if targets == ["alexnet_preprocess"]:
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
    # judged as any outputs computed elsewhere are: `alexnet-deploy compare`, validate's rules
    report = tmp_path / "comparison.json"
    judged = cli("compare", cpp_export, "--inputs", cpp_batch, "--outputs", dump, "--label", program,
                 "--report", report)
    assert judged.returncode == 0, judged.stderr
    (row,) = json.loads(report.read_text())["results"]
    assert row["status"] == "OK" and row["precision"] == "fp32" and row["max_abs"] <= row["limits"]["atol"]
    lim = limits_for("fp32")

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
    """The programs take the shapes, preprocessing and class names from the artifact and its card: a
    ResNet-18 with 10 classes at 64 px, given image files, preprocesses them as Python does, gives eager
    PyTorch's logits and names its classes."""
    import torch

    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.models import load_weights

    exe = _program(cpp_bin, program)
    images = _demo_images(demo_data, 3)
    manifest = Manifest.read(resnet18_export)
    model, card = load_weights(manifest.path_of(manifest.weights_artifact()))
    batch = preprocess_files(images, card)
    assert card.arch == "resnet18" and batch.shape == (3, 3, 64, 64)
    with torch.inference_mode():
        reference = model(torch.from_numpy(batch)).numpy()

    dump_in, dump = tmp_path / "input.npy", tmp_path / "logits.npy"
    proc = subprocess.run([str(exe), str(_artifact(resnet18_export, fmt)), *map(str, images), "--repeat", "1",
                           "--top", "2", "--dump-input", str(dump_in), "--dump-logits", str(dump)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(dump_in) - batch).max() <= _one_level(card) * 1.0001
    lim = limits_for("fp32")
    np.testing.assert_allclose(np.load(dump), reference, atol=lim.atol, rtol=lim.rtol)
    named = [line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("1. ")]
    assert len(named) == 3 and set(named) <= set(card.classes), proc.stdout


# ---------------------------------------------------------------------------------------------
# From the image file: decoding and the card's preprocessing in C++ against the Python path
# ---------------------------------------------------------------------------------------------
def _photo() -> Path:
    """A real photograph (Grace Hopper, 512 x 600 JPEG) that ships with matplotlib."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory, demo_data) -> list[Path]:
    """Inputs not designed for the code: the photograph, its JPEG re-encodes at two qualities and odd
    sizes and aspect ratios, grayscale / RGBA / palette / 16-bit PNGs, BMPs, 1 x 1, a thin strip and
    a demo image. 14 files: more than one batch of the export's 8."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("odd-images")
    photo = Image.open(_photo()).convert("RGB")
    gray16 = np.asarray(photo.convert("L").resize((90, 70)), np.uint32) * 257
    gray16 = (gray16 + np.arange(gray16.size).reshape(gray16.shape) % 257).astype(np.uint16)  # low bytes used
    made = {
        "q95.jpg": (photo.resize((333, 217)), {"quality": 95}),
        "q40.jpg": (photo.resize((97, 300)), {"quality": 40}),
        "gray.jpg": (photo.convert("L").resize((150, 151)), {"quality": 80}),
        "gray.png": (photo.convert("L").resize((64, 80)), {}),
        "rgba.png": (photo.convert("RGBA").resize((200, 120)), {}),
        "palette.png": (photo.convert("P").resize((77, 55)), {}),
        "gray16.png": (Image.fromarray(gray16), {}),
        "rgb.bmp": (photo.resize((123, 99)), {}),
        "palette.bmp": (photo.convert("P").resize((61, 81)), {}),
        "one.png": (Image.new("RGB", (1, 1), (200, 10, 30)), {}),
        "strip.png": (photo.resize((1000, 3)), {}),
        "small.png": (photo.resize((20, 21)), {}),
    }
    paths = [_photo(), _demo_images(demo_data, 1)[0]]
    for name, (img, kw) in made.items():
        img.save(folder / name, **kw)
        paths.append(folder / name)
    assert Image.open(folder / "gray16.png").mode.startswith("I"), "not a 16-bit PNG"
    return paths


def _one_level(card) -> float:
    """One 8-bit step after normalisation: the parity the issue asks for."""
    return 1 / 255 / min(card.input.std)


@pytest.mark.cpp
@pytest.mark.slow
def test_cpp_preprocessing_equals_python(cpp_bin, cpp_export, odd_images, tmp_path):
    """alexnet_preprocess (the library alone) against `alexnet-deploy preprocess` of the same files."""
    exe = _program(cpp_bin, "alexnet_preprocess")
    ours, theirs = tmp_path / "cpp.npy", tmp_path / "python.npy"
    proc = subprocess.run([str(exe), *map(str, odd_images), "--card", str(cpp_export), "--out", str(ours)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = cli("preprocess", *odd_images, "--card", cpp_export, "--out", theirs)
    assert proc.returncode == 0, proc.stderr
    cpp, python = np.load(ours), np.load(theirs)
    card = read_card(cpp_export)
    assert cpp.dtype == np.float32 and cpp.shape == python.shape == (len(odd_images), *card.input.shape)
    worst = np.abs(cpp - python).reshape(len(odd_images), -1).max(axis=1)
    levels = dict(zip((p.name for p in odd_images), worst / _one_level(card), strict=True))
    assert worst.max() <= _one_level(card) * 1.0001, levels
    assert float(python.std()) > 0.1, "the images preprocessed to a constant: nothing was compared"


def _python_runner_logits(export: Path, fmt: str, batch: np.ndarray) -> np.ndarray:
    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.runtimes import get_runner

    manifest = Manifest.read(export)
    artifact = next(a for a in manifest.find(fmt, "fp32") if a.device == "cpu")
    runner_name = {"onnx": "openvino", "openvino": "openvino", "aoti": "aoti", "torchscript": "torchscript"}[fmt]
    with get_runner(runner_name).from_artifact(manifest, artifact) as runner:
        return runner.infer(batch)


@pytest.mark.cpp
@pytest.mark.slow
@pytest.mark.parametrize("program, fmt", [
    ("alexnet_infer_openvino", "onnx"),
    ("alexnet_infer_openvino", "openvino"),
    ("alexnet_infer_torch", "aoti"),
    ("alexnet_infer_torch", "torchscript"),
])
def test_program_from_images_matches_the_python_runner(cpp_bin, cpp_export, odd_images, tmp_path, program, fmt):
    """Image files in, the preprocessed batch and logits out: the batch within one 8-bit level of
    Python's, the logits those of the same artifact's Python runner on Python's batch (top-1
    identical, cosine >= 0.9999, max abs within 1e-3 of the logit range)."""
    exe = _program(cpp_bin, program)
    images = odd_images[:8]  # the export's max batch
    dump_in, dump_out = tmp_path / "input.npy", tmp_path / "logits.npy"
    proc = subprocess.run([str(exe), str(_artifact(cpp_export, fmt)), *map(str, images), "--repeat", "2",
                           "--dump-input", str(dump_in), "--dump-logits", str(dump_out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = read_card(cpp_export)
    python_batch = preprocess_files(images, card)
    assert python_batch.flags.c_contiguous  # what every runner and the C++ programs read
    assert np.abs(np.load(dump_in) - python_batch).max() <= _one_level(card) * 1.0001

    ours, reference = np.load(dump_out), _python_runner_logits(cpp_export, fmt, python_batch)
    assert ours.shape == reference.shape == (len(images), card.num_classes)
    np.testing.assert_array_equal(ours.argmax(axis=1), reference.argmax(axis=1))
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert np.abs(ours - reference).max() <= 1e-3 * float(np.ptp(reference)), np.abs(ours - reference).max()

    # what a user reads: each image named, its top class, and the two timings apart
    for i, path in enumerate(images):
        assert f"image {i}: {path}" in proc.stdout
    assert "decode + preprocess per batch of 8: decode" in proc.stdout
    assert "time per batch of 8:" in proc.stdout and "end to end per image:" in proc.stdout


def _top5(text: str) -> list[str]:
    """Class names of the ranked lines ('  1. name ...') in a program's or predict's output."""
    return [line.split()[1] for line in text.splitlines() if line.strip()[:2] in {f"{r}." for r in range(1, 6)}]


@pytest.mark.cpp
@pytest.mark.slow
def test_predict_and_the_cpp_program_name_the_same_top5(cpp_bin, cpp_export, tmp_path):
    """The photograph through `alexnet-deploy predict` and through the C++ program: the same five classes,
    in the same order."""
    exe = _program(cpp_bin, "alexnet_infer_openvino")
    onnx = _artifact(cpp_export, "onnx")
    python = cli("predict", onnx, _photo(), "--top", "5", "--backend", "openvino")
    assert python.returncode == 0, python.stderr
    proc = subprocess.run([str(exe), str(onnx), str(_photo()), "--top", "5", "--repeat", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(_top5(python.stdout)) == 5 and _top5(proc.stdout) == _top5(python.stdout), (python.stdout, proc.stdout)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height and holds one tiny IDAT: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def cardless_onnx(tmp_path_factory, resnet18_export) -> Path:
    """The ResNet-18 ONNX file with its card removed, in a folder with no manifest.json."""
    import onnx

    model = onnx.load(str(_artifact(resnet18_export, "onnx")))
    del model.metadata_props[:]
    path = tmp_path_factory.mktemp("cardless") / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.cpp
@pytest.mark.slow
def test_program_refuses_bad_images(cpp_bin, cpp_export, cardless_onnx, odd_images, tmp_path):
    """Each bad image: exit 2, one "error:" line naming the problem, no dump written."""
    from PIL import Image

    exe = str(_program(cpp_bin, "alexnet_infer_openvino"))
    onnx = str(_artifact(cpp_export, "onnx"))
    photo = _photo().read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.jpg").write_bytes(photo[: len(photo) // 2])
    (bad / "corrupt.jpg").write_bytes(photo[:2] + b"\xff\xdb" + bytes(range(256)) * 4)
    png = (odd_images[2].parent / "rgba.png").read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "notes.jpg").write_text("not an image\n")
    Image.open(_photo()).save(bad / "photo.gif")
    _png_header_only(bad / "bomb.png", 20000, 20000)
    Image.new("RGB", (1, 200000)).save(bad / "needle.png")
    np.save(bad / "batch.npy", np.zeros((1, 3, 64, 64), np.float32))
    good = str(odd_images[0])
    cases = [
        ([onnx, str(bad / "truncated.jpg")], "truncated"),
        ([onnx, str(bad / "corrupt.jpg")], "corrupt"),
        ([onnx, str(bad / "truncated.png")], "truncated"),
        ([onnx, str(bad / "notes.jpg")], "not a JPEG, PNG or BMP"),
        ([onnx, str(bad / "photo.gif")], "GIF is not supported"),
        ([onnx, str(bad / "bomb.png")], "over the limit"),
        ([onnx, str(bad / "needle.png")], "aspect ratio"),
        ([onnx, good, str(bad / "missing.jpg")], "not found"),
        ([onnx, good, str(bad / "batch.npy")], "not both"),
        ([onnx, *map(str, odd_images[:9])], "at most 8"),
        ([str(cardless_onnx), good], "has no preprocessing"),
    ]
    for args, needle in cases:
        dumps = [tmp_path / "in.npy", tmp_path / "out.npy"]
        proc = subprocess.run([exe, *args, "--repeat", "1", "--dump-input", str(dumps[0]), "--dump-logits",
                               str(dumps[1])], capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], (args, proc.returncode, proc.stderr)
        assert not any(d.exists() for d in dumps), f"{args}: a failed run wrote a dump"
        assert not list(tmp_path.glob("*.partial-*")), "a temporary file was left behind"
