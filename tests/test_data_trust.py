"""Data sets as a user's disk really looks and images that are hostile or unusual (issue 12, items 4-6).

Every image here is a real file written with Pillow (or by hand, for what Pillow cannot write) in
tmp_path; sizes are small and deliberately not round.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error, cli
from PIL import Image

from alexnet_deploy import data
from alexnet_deploy.calibration import (
    calibration_batches,
    load_calibration,
    resolve_calib_data,
    uniform_batch,
)
from alexnet_deploy.console import setup_logging
from alexnet_deploy.data import (
    MAX_RESIZED_PIXELS,
    image_folder,
    load_image,
    load_labelled,
    make_demo,
    preprocess_files,
    training_splits,
)
from alexnet_deploy.errors import UserError
from alexnet_deploy.models import InputSpec, ModelCard

CARD = ModelCard(arch="alexnet", num_classes=3, classes=["circle", "square", "triangle"],
                 input=InputSpec.for_size(64))


def _png(path: Path, width: int, height: int, colour_type: int, depth: int, rows: bytes | None) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit colour, nor a header without the pixels)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows or b""))
                     + chunk(b"IEND", b""))
    return path


def _batch(path: Path) -> np.ndarray:
    return preprocess_files([path], CARD)


# ---------------------------------------------------------------------------------------------
# Bit depths: scaled into 8 bits, never clipped (trial case 7)
# ---------------------------------------------------------------------------------------------
def test_16_bit_gray_png_is_scaled_not_clipped_to_white(tmp_path):
    v = np.linspace(6682, 56026, 83 * 71).reshape(71, 83).astype(np.uint16)  # the trial's range
    Image.fromarray(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    Image.fromarray(np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)).save(tmp_path / "g8.png")
    got = _batch(tmp_path / "g16.png")
    assert got.min() < got.max(), "a 16-bit gradient must not become a constant image"
    np.testing.assert_array_equal(got, _batch(tmp_path / "g8.png"))


def test_32_bit_integer_image_uses_the_16_bit_rule(tmp_path):
    v = np.linspace(0, 65535, 37 * 29).reshape(29, 37).astype(np.int32)
    img = Image.fromarray(v)
    assert img.mode == "I"
    rgb = data.to_rgb8(img)
    np.testing.assert_array_equal(np.asarray(rgb)[..., 0], np.round(v * 255 / 65535).astype(np.uint8))


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    v = np.random.default_rng(3).integers(0, 65536, (41, 53, 3)).astype(">u2")
    path = _png(tmp_path / "rgb16.png", 53, 41, 2, 16, b"".join(b"\0" + row.tobytes() for row in v))
    rgb = np.asarray(load_image(str(path)))
    np.testing.assert_array_equal(rgb, (v >> 8).astype(np.uint8))  # Pillow's high byte, see to_rgb8
    assert np.abs(rgb.astype(int) - np.round(v.astype(np.float64) * 255 / 65535)).max() <= 1
    assert _batch(path).std() > 0.1


@pytest.mark.parametrize("top, scale", [(1.0, 255), (200.0, 1), (60000.0, 255 / 65535)])
def test_float_tiff_is_scaled_by_its_value_range(tmp_path, top, scale):
    v = np.linspace(0, top, 47 * 31, dtype=np.float32).reshape(31, 47)
    v[3, 5] = np.nan
    Image.fromarray(v).save(tmp_path / "f.tiff")
    assert Image.open(tmp_path / "f.tiff").mode == "F"
    gray = np.asarray(load_image(str(tmp_path / "f.tiff")))[..., 0]
    want = np.clip(np.rint(np.nan_to_num(v, nan=0) * np.float32(scale)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(gray, want)
    assert gray.min() == 0 and gray.max() == round(top * scale) >= 200  # neither clipped nor dark


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "1", "LA", "L"])
def test_other_modes_still_decode(tmp_path, mode):
    src = Image.fromarray(np.random.default_rng(1).integers(0, 256, (23, 37, 3)).astype(np.uint8))
    img = src.convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    rgb = load_image(str(path))
    assert rgb.mode == "RGB" and rgb.size == (37, 23)
    assert _batch(path).shape == (1, 3, 64, 64)


# ---------------------------------------------------------------------------------------------
# Resource bounds: decompression bombs (cases 9, 10), thin giants (11, 12), folders (14)
# ---------------------------------------------------------------------------------------------
def test_decompression_bomb_is_one_line_naming_the_file_and_the_limit(tmp_path):
    # the header claims 20011 x 20011 (over twice Pillow's limit); Pillow refuses at the header
    bomb = _png(tmp_path / "bomb.png", 20011, 20011, 0, 8, None)
    with pytest.raises(UserError) as e:
        load_image(str(bomb))
    msg = str(e.value)
    assert str(bomb) in msg and str(Image.MAX_IMAGE_PIXELS) in msg and "\n" not in msg


def test_image_over_the_warning_limit_gives_our_one_line_warning(tmp_path, monkeypatch, capfd):
    Image.fromarray(np.full((31, 43), 90, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1333 pixels: over 1x, under 2x
    setup_logging()  # as the command line routes warnings
    assert load_image(str(tmp_path / "big.png")).size == (43, 31)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "43 x 31" in err
    assert "DecompressionBombWarning" not in err


def test_thin_giant_image_is_refused_before_the_resize(tmp_path):
    Image.new("L", (20011, 1), 128).save(tmp_path / "thin.png")  # a few hundred bytes
    with pytest.raises(UserError, match="crop it first") as e:
        _batch(tmp_path / "thin.png")
    assert str(tmp_path / "thin.png") in str(e.value) and str(MAX_RESIZED_PIXELS) in str(e.value)


def test_a_panorama_within_the_bound_still_works(tmp_path):
    Image.new("RGB", (1499, 97), (10, 200, 30)).save(tmp_path / "wide.png")
    assert _batch(tmp_path / "wide.png").shape == (1, 3, 64, 64)


def test_a_folder_passed_as_an_image_says_so(tmp_path):
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(UserError, match="is a folder, not an image"):
        _batch(tmp_path / "adir.png")
    from alexnet_deploy.preprocessing import run_preprocess

    with pytest.raises(UserError, match="is a folder, not an image"):
        run_preprocess([tmp_path / "adir.png"], tmp_path, tmp_path / "x.npy")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(UserError, match="not a regular file"):
        load_image(str(tmp_path / "fifo.png"))


# ---------------------------------------------------------------------------------------------
# Folder scans: hidden entries, symlinks, AppleDouble (cases 67-72, 76)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """3 classes, 5 train / 4 val / 4 test per class, 32 px."""
    return make_demo(tmp_path_factory.mktemp("trust") / "d", classes=3, per_class=5, size=32, seed=11)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst, symlinks=True))


def _one_image(folder: Path, name: str = "x.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (33, 35), (200, 10, 10)).save(folder / name)
    return folder / name


def test_hidden_folders_never_become_classes_in_any_split(small_demo, tmp_path):
    root = _copy(small_demo, tmp_path / "d")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # case 67: empty hidden folder
    _one_image(root / "train" / ".cache")  # case 68
    _one_image(root / "val" / ".thumbs")  # case 69: shifted every val label by one
    _one_image(root / "val" / "__MACOSX")
    _one_image(root / "val" / "square" / ".hidden")  # a hidden folder inside a class
    training_splits(root)
    train, val = image_folder(root / "train"), image_folder(root / "val")
    assert train.classes == val.classes == ["circle", "square", "triangle"]
    assert train.class_to_idx == val.class_to_idx
    assert (len(train), len(val)) == (15, 12)
    for path, label in val.samples:
        assert Path(path).parent.name == val.classes[label]
    labelled = load_labelled(root, CARD, split="val")
    assert [CARD.classes[y] for y in labelled.labels] == [Path(p).parent.name for p in labelled.paths]


def test_labels_follow_the_card_order_not_the_folder_order(small_demo):
    card = ModelCard(arch="alexnet", num_classes=3, classes=["triangle", "circle", "square"],
                     input=InputSpec.for_size(64))
    labelled = load_labelled(small_demo, card, split="val", limit=5)
    assert [card.classes[y] for y in labelled.labels] == [Path(p).parent.name for p in labelled.paths]


def test_a_symlink_loop_does_not_multiply_or_mislabel_images(small_demo, tmp_path):
    root = _copy(small_demo, tmp_path / "d")
    os.symlink("..", root / "train" / "circle" / "loop")  # case 71
    os.symlink("loopB", root / "train" / "square" / "loopA")  # case 72: a broken cycle
    os.symlink("loopA", root / "train" / "square" / "loopB")
    os.symlink("missing.png", root / "train" / "triangle" / "dangling.png")
    train = image_folder(root / "train")
    assert len(train) == 15
    for path, label in train.samples:
        assert Path(path).parent.name == train.classes[label]
        assert len(Path(path).relative_to(root / "train").parts) == 2  # never below a link


def test_symlinked_class_folder_and_image_files_are_read(small_demo, tmp_path):
    root = tmp_path / "linked"
    (root / "train").mkdir(parents=True)
    for c in ("circle", "square"):
        os.symlink(small_demo / "train" / c, root / "train" / c)
    os.symlink(small_demo / "val" / "circle" / "circle_00000.png", root / "train" / "circle_extra.png")
    assert len(image_folder(root / "train")) == 10


def test_appledouble_ds_store_and_notes_are_ignored(small_demo, tmp_path):
    root = _copy(small_demo, tmp_path / "d")
    circle = root / "train" / "circle"
    (circle / "._circle_00000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")  # case 76
    (circle / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (circle / "README.txt").write_text("notes")  # case 70
    (circle / "notes.md").write_text("# notes")
    _one_image(circle, "UPPER.PNG")  # extensions match case-insensitively
    train = image_folder(root / "train")
    assert len(train) == 16
    assert all(train[i][0].size == (32, 32) or train[i][0].size == (33, 35) for i in range(len(train)))


def test_one_class_is_refused_and_single_images_warned(tmp_path, capfd):
    setup_logging()  # as the command line routes warnings
    for split in ("train", "val"):
        _one_image(tmp_path / "one" / split / "a")
    with pytest.raises(UserError, match="at least 2 classes"):
        training_splits(tmp_path / "one")
    for split in ("train", "val"):
        _one_image(tmp_path / "one" / split / "b")
    training_splits(tmp_path / "one")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("warning: ") and "single image" in line for line in err)


def test_train_refuses_one_class_as_one_line(tmp_path):
    for split, n in (("train", 4), ("val", 1)):  # case 74
        for i in range(n):
            _one_image(tmp_path / "single" / split / "only", f"i{i}.png")
    proc = cli("train", "--data", tmp_path / "single", "--out", tmp_path / "run", "--epochs", "1",
               "--image-size", "64", "--device", "cpu")
    assert_user_error(proc, "at least 2 classes", str(tmp_path / "single" / "train"))
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Calibration: uniform batches (case 104), any folder of images (item 6)
# ---------------------------------------------------------------------------------------------
def test_uniform_batch_divides_every_count():
    assert [uniform_batch(n, 4) for n in (6, 7, 10, 8, 1, 3)] == [3, 1, 2, 4, 1, 3]
    assert uniform_batch(1797, 16) == 3 and uniform_batch(1801, 16) == 1 and uniform_batch(250, 16) == 10
    for n in range(1, 60):
        sizes = {len(b) for b in calibration_batches(np.zeros((n, 1)), 16)}
        assert len(sizes) == 1 and sum(len(b) for b in calibration_batches(np.zeros((n, 1)), 16)) == n


def _tiny_onnx(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm with a dynamic batch: a graph ORT's
    percentile calibrator treats like AlexNet, in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                             ["N", 3, 13, 13])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("count", [6, 7, 10])
def test_int8_calibration_works_for_counts_that_are_not_multiples_of_the_batch(tmp_path, count):
    import onnx
    import onnxruntime as ort

    from alexnet_deploy.backends.onnx.export import quantize_static_int8

    fp32 = _tiny_onnx(tmp_path / "tiny.onnx")
    calib = np.random.default_rng(count).standard_normal((count, 3, 13, 13)).astype(np.float32)
    quantize_static_int8(fp32, tmp_path / "tiny.int8.onnx", calib, batch=4)  # export's batch: min(16, 4)
    session = ort.InferenceSession(str(tmp_path / "tiny.int8.onnx"), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "tiny.int8.onnx")).graph.node)
    assert session.run(None, {"images": calib[:3]})[0].shape == (3, 3)


def _flat_folder(path: Path, n: int) -> Path:
    rng = np.random.default_rng(n)
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (29, 31, 3)).astype(np.uint8)).save(path / f"img_{i:03d}.jpg")
    return path


def test_calib_data_may_be_a_flat_folder_of_images(tmp_path):
    folder = _flat_folder(tmp_path / "flat", 13)
    (folder / ".DS_Store").write_bytes(b"junk")
    assert resolve_calib_data(CARD, folder) == folder
    data = load_calibration(CARD, folder, calib_images=9)
    assert (len(data.calib), len(data.heldout)) == (9, 2)  # split_sizes(13, 9)
    assert data.calib.shape[1:] == (3, 64, 64) and data.calib.std() > 0.1


def test_calib_data_may_have_classes_the_model_never_saw(small_demo, tmp_path):
    # a 1000-class ImageNet card calibrates on a folder of three other classes
    imagenet = ModelCard(arch="alexnet", num_classes=1000, classes=[f"n{i:08d}" for i in range(1000)],
                         input=InputSpec.for_size(64))
    folder = resolve_calib_data(imagenet, small_demo)
    assert folder == small_demo / "val"  # a split root: its val/
    data = load_calibration(imagenet, folder, calib_images=7)
    assert len(data.calib) == 7 and len(data.heldout) >= 1
    other = _copy(small_demo / "test", tmp_path / "renamed")
    os.rename(other / "circle", other / "rund")
    assert resolve_calib_data(CARD, other) == other
    assert len(load_calibration(CARD, other, calib_images=5).calib) == 5


def test_calib_data_without_images_is_one_line(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds no images"):
        resolve_calib_data(CARD, tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# make_demo's own checks (cases 1-3)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    ({"seed": -1}, "--seed must be >= 0"),
    ({"size": 60000}, "--size must be >= 32 and <= 1024"),
    ({"classes": 13}, "--classes must be between 2 and 12"),
    ({"per_class": 0}, "--per-class must be >= 1"),
    ({"val_per_class": -3}, "val_per_class must be >= 1"),
])
def test_demo_arguments_are_checked_before_anything_is_written(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        make_demo(tmp_path / "d", **{"classes": 2, "per_class": 1, "size": 32, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_demo_out_an_existing_file_is_refused(tmp_path):
    (tmp_path / "afile.txt").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        make_demo(tmp_path / "afile.txt", classes=2, per_class=1, size=32)
    with pytest.raises(UserError, match="is a file"):
        make_demo(tmp_path / "afile.txt" / "below", classes=2, per_class=1, size=32)
    assert (tmp_path / "afile.txt").read_text() == "mine"


def test_demo_failure_leaves_no_partial_folder(tmp_path, monkeypatch):
    real, calls = data.draw_demo_image, []

    def fail_on_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(data, "draw_demo_image", fail_on_the_third)
    with pytest.raises(OSError):
        make_demo(tmp_path / "d", classes=2, per_class=3, size=32)
    assert list(tmp_path.iterdir()) == []


def test_demo_into_the_current_empty_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    make_demo(".", classes=2, per_class=1, size=32, val_per_class=1, test_per_class=1)
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["test", "train", "val"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
