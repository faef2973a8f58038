"""Images for int8 calibration: which folder, checked before any export work starts, and the split
into calibration images and held-out images used only to measure agreement afterwards."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserError
from alexnet_deploy.model import ModelCard


@dataclass
class CalibrationSet:
    calib: np.ndarray  # float32 NCHW, preprocessed with the card
    heldout: np.ndarray  # never seen by the calibrator
    source: str  # the folder, or a note that demo data was generated


def resolve_calib_data(card: ModelCard, calib_data: str | Path | None) -> Path | None:
    """The class-folder directory to calibrate on, checked against the card's classes;
    None when neither --calib-data nor the card's val data exists (demo data is generated then)."""
    from alexnet_deploy.data import image_folder, resolve_split

    if calib_data is not None:
        where = f"--calib-data {calib_data}"
        root = Path(calib_data)
        if not root.exists():
            raise UserError(f"{where}: folder not found (pass an ImageFolder root with val/, or a folder "
                            "of class folders)")
    else:
        val = card.data.get("val")
        if not val or not Path(val).is_dir():
            return None
        where, root = f"the card's val data {val}", Path(val)
    try:
        folder = resolve_split(root, "val")
        image_folder(folder, classes=card.classes)
    except UserError as e:
        raise UserError(f"{where} cannot calibrate this model: {e}") from None
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


def load_calibration(card: ModelCard, folder: Path | None, calib_images: int, seed: int = 0
                     ) -> CalibrationSet:
    from alexnet_deploy.data import load_labelled

    want = sum(split_sizes(1 << 30, calib_images))
    if folder is None:
        images = _demo_images(card, want, seed)
        source = f"{len(images)} generated demo images (no --calib-data and no val data in the card)"
    else:
        images = load_labelled(folder, card, limit=want, seed=seed).images
        source = str(folder)
    n_calib, n_held = split_sizes(len(images), calib_images)
    order = np.random.default_rng(seed).permutation(len(images))  # held-out spans every class
    return CalibrationSet(calib=images[order[:n_calib]], heldout=images[order[n_calib:n_calib + n_held]],
                          source=source)


def _demo_images(card: ModelCard, n: int, seed: int) -> np.ndarray:
    """Demo shapes preprocessed with the card; their classes need not be the model's."""
    from alexnet_deploy.data import card_transform, image_folder, make_demo

    classes = 10
    with tempfile.TemporaryDirectory(prefix="alexnet-calib-") as tmp:
        root = make_demo(Path(tmp) / "demo", classes=classes, per_class=1, size=card.input.resize,
                         seed=seed, val_per_class=math.ceil(n / classes), test_per_class=1)
        ds = image_folder(root / "val", transform=card_transform(card))
        return np.stack([ds[i][0].numpy() for i in range(min(n, len(ds)))]).astype(np.float32)
