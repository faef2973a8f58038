"""Images for int8 calibration: which folder, checked before any export work starts, the split into
calibration images and held-out images used only to measure agreement afterwards, and the batches
the calibrators are fed.

Calibration never needs labels or class names: `--calib-data` (and the card's val data) may be any
folder of representative images, a split root (its val/ is used), a folder of class folders whatever
their names, or a flat folder of images. The scan is data.py's (hidden entries skipped, folder
symlinks not followed).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserError
from alexnet_deploy.models import ModelCard


@dataclass
class CalibrationSet:
    calib: np.ndarray  # float32 NCHW, preprocessed with the card
    heldout: np.ndarray  # never seen by the calibrator
    source: str  # the folder, or a note that demo data was generated


def resolve_calib_data(card: ModelCard, calib_data: str | Path | None) -> Path | None:
    """The folder to calibrate on, checked to hold images; None when neither --calib-data nor the
    card's val data exists (demo data is generated then)."""
    from alexnet_deploy.data import is_split_root, representative_images

    if calib_data is not None:
        where, root = f"--calib-data {calib_data}", Path(calib_data)
        if not root.is_dir():
            raise UserError(f"{where}: folder not found (pass a folder of images: a split root with "
                            "val/, a folder of class folders, or a flat folder of images)")
    else:
        val = card.data.get("val")
        if not val or not Path(val).is_dir():
            return None
        where, root = f"the card's val data {val}", Path(val)
    folder = root / "val" if is_split_root(root) else root
    if not folder.is_dir():
        raise UserError(f"{where} has no val/ folder to calibrate on; pass --calib-data FOLDER_OF_IMAGES")
    if not representative_images(folder):
        raise UserError(f"{where} holds no images to calibrate on (looked in {folder}); "
                        "pass --calib-data FOLDER_OF_IMAGES")
    return folder


def split_sizes(available: int, calib_images: int) -> tuple[int, int]:
    """(calibration, held-out) counts: a quarter as many held out (at least 16), fewer when the
    folder is small, always at least one of each."""
    if available < 2:
        raise UserError(f"int8 calibration needs at least 2 images, the data holds {available}")
    held = max(16, calib_images // 4)
    if available < calib_images + held:
        held = max(1, min(held, available // 5))
    return min(calib_images, available - held), held


def uniform_batch(count: int, wanted: int) -> int:
    """The largest batch size <= `wanted` that divides `count` (1 at worst): every calibration batch
    has the same size. ONNX Runtime's histogram collector cannot stack a ragged last batch (6 images
    in batches of 4 crashed the export), and dropping or padding images would change the ranges."""
    wanted = max(1, min(wanted, count))
    return next(b for b in range(wanted, 0, -1) if count % b == 0)


def calibration_batches(images: np.ndarray, wanted: int) -> list[np.ndarray]:
    """`images` cut into equal batches of uniform_batch(len(images), wanted)."""
    if len(images) == 0:
        return []
    b = uniform_batch(len(images), wanted)
    return [images[i:i + b] for i in range(0, len(images), b)]


def load_calibration(card: ModelCard, folder: Path | None, calib_images: int, seed: int = 0
                     ) -> CalibrationSet:
    want = sum(split_sizes(1 << 30, calib_images))
    if folder is None:
        images = _demo_images(card, want, seed)
        source = f"{len(images)} generated demo images (no --calib-data and no val data in the card)"
    else:
        images, source = _folder_images(card, folder, want, seed), str(folder)
    n_calib, n_held = split_sizes(len(images), calib_images)
    order = np.random.default_rng(seed).permutation(len(images))  # held-out spans every class
    return CalibrationSet(calib=images[order[:n_calib]], heldout=images[order[n_calib:n_calib + n_held]],
                          source=source)


def _folder_images(card: ModelCard, folder: Path, n: int, seed: int) -> np.ndarray:
    """Up to `n` images of `folder`, balanced over its subfolders (classes or not), preprocessed."""
    from alexnet_deploy.data import balanced_subset, card_transform, preprocess_paths, representative_images

    groups = representative_images(folder)
    paths, indices = [], []
    for g in groups:
        indices.append(list(range(len(paths), len(paths) + len(g))))
        paths += g
    picked = balanced_subset(indices, n, seed)
    return preprocess_paths([paths[i] for i in picked], card_transform(card), card.input.shape)


def _demo_images(card: ModelCard, n: int, seed: int) -> np.ndarray:
    """Demo shapes preprocessed with the card; their classes need not be the model's."""
    from alexnet_deploy.data import DEMO_MAX_SIZE, card_transform, image_folder, make_demo

    classes = 10
    with tempfile.TemporaryDirectory(prefix="alexnet-calib-") as tmp:
        size = min(max(card.input.resize, 32), DEMO_MAX_SIZE)  # the card's transform resizes anyway
        root = make_demo(Path(tmp) / "demo", classes=classes, per_class=1, size=size,
                         seed=seed, val_per_class=math.ceil(n / classes), test_per_class=1)
        ds = image_folder(root / "val", transform=card_transform(card))
        return np.stack([ds[i][0].numpy() for i in range(min(n, len(ds)))]).astype(np.float32)
