"""Demo data generation and the data checks users meet through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_user_error, cli, cli_subprocess

from alexnet_deploy.data import DEMO_SHAPES, make_demo, training_splits
from alexnet_deploy.errors import UserError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_data_is_byte_identical_for_a_seed_and_differs_for_another(tmp_path):
    a = _files(make_demo(tmp_path / "a", classes=3, per_class=4, size=32, seed=7))
    b = _files(make_demo(tmp_path / "b", classes=3, per_class=4, size=32, seed=7))
    c = _files(make_demo(tmp_path / "c", classes=3, per_class=4, size=32, seed=8))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a), "another seed must change every image"
    # train 4 + val 4 + test 4 images for each of the 3 classes, as real PNG files
    assert len(a) == 3 * 12 and all(v.startswith(b"\x89PNG") for v in a.values())


def test_demo_command_writes_an_image_folder(tmp_path):
    proc = cli("data", "demo", "--out", tmp_path / "d", "--classes", "4", "--per-class", "4",
               "--size", "32", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    train, val, test = training_splits(tmp_path / "d")
    assert [p.name for p in sorted(train.iterdir())] == sorted(DEMO_SHAPES[:4])
    assert test is not None and len(list(val.rglob("*.png"))) == 16


@pytest.mark.parametrize("kwargs, needle", [
    ({"classes": 1}, "--classes must be between 2"),
    ({"size": 16}, "--size must be >= 32"),
    ({"per_class": 0}, "--per-class must be >= 1"),
])
def test_demo_rejects_bad_options(tmp_path, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        make_demo(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_demo_command_reports_a_bad_option_as_one_line(tmp_path):
    assert_user_error(cli("data", "demo", "--out", tmp_path / "d", "--classes", "13"),
                      "13 is not in the range 2<=x<=12")


def test_demo_command_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    assert_user_error(cli("data", "demo", "--out", tmp_path / "d"), "is not empty")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Bad training data: each gets one line naming the folder or file, exit 2, no traceback
# ---------------------------------------------------------------------------------------------
def _copy(demo_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_data, tmp_path / "data"))


def _remove_val(root):
    shutil.rmtree(root / "val")
    return "has no val/ folder", root


def _empty_class(root):
    for f in (root / "train" / "star").iterdir():
        f.unlink()
    return "holds no images", root / "train" / "star"


def _classes_differ(root):
    shutil.rmtree(root / "val" / "star")
    return "different classes", root / "val"


def _no_classes(root):
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split)
        (root / split).mkdir()
    return "has no class folders", root / "train"


@pytest.mark.parametrize("break_it", [_remove_val, _empty_class, _classes_differ, _no_classes])
def test_train_names_what_is_wrong_with_the_data(demo_data, tmp_path, break_it):
    root = _copy(demo_data, tmp_path)
    needle, culprit = break_it(root)
    # the library check is what the CLI reports
    with pytest.raises(UserError, match=needle):
        training_splits(root)
    proc = cli("train", "--data", root, "--out", tmp_path / "run", "--image-size", "64", "--epochs", "1")
    assert_user_error(proc, needle, str(culprit))
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_train_reports_missing_data_folder(tmp_path):
    assert_user_error(cli("train", "--data", tmp_path / "nope", "--out", tmp_path / "run"),
                      "data folder not found", str(tmp_path / "nope"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_clean_line_even_from_a_dataloader_worker(demo_data, tmp_path, workers):
    root = _copy(demo_data, tmp_path)
    bad = root / "train" / "circle" / "circle_00003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # A worker is a process of its own: with one, the whole command runs as a child process, so
    # anything the worker writes to its stderr is seen as a user would see it.
    run = cli_subprocess if workers else cli
    proc = run("train", "--data", root, "--out", tmp_path / "run", "--image-size", "64", "--epochs", "1",
               "--batch-size", "64", "--workers", str(workers), "--device", "cpu")
    assert_user_error(proc, "cannot read image", str(bad))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
