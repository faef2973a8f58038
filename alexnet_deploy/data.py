"""Data: our ImageFolder (scan, decoding, clear errors), torchvision transforms.v2 presets, demo data.

Data folders come in two shapes, both accepted everywhere:
  ROOT/train/<class>/*, ROOT/val/<class>/*, optionally ROOT/test/<class>/*   (a split root)
  DIR/<class>/*                                                              (one split)
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms import v2

from alexnet_deploy.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
# The largest image the eval resize may produce. Resizing the short side of a thin image (1 x 200000)
# to 73 px makes it 73 x 14.6 M: a 663-byte file asked for 5-16 GB. 2^25 pixels (about 100 MB as
# uint8 RGB, 400 MB as float) still lets a 256 px resize keep a 512:1 panorama.
MAX_RESIZED_PIXELS = 1 << 25


class ImageTooLarge(UserError):
    """An image the preprocessing refuses to resize (no file name: the caller adds it)."""


class BoundedResize(v2.Resize):
    """v2.Resize of the short side that refuses, before allocating, an output over
    MAX_RESIZED_PIXELS (the aspect ratio decides it, not the file size)."""

    def forward(self, *inputs):
        h, w = v2.functional.get_size(inputs[0])
        short, long = sorted((h, w))
        side = self.size[0]
        pixels = side * int(side * long / max(short, 1))
        if pixels > MAX_RESIZED_PIXELS:
            raise ImageTooLarge(f"image {w} x {h}: its aspect ratio makes the resized image {pixels} "
                                f"pixels (limit {MAX_RESIZED_PIXELS}); crop it first")
        return super().forward(*inputs)


def train_transform(size: int, mean, std, color_jitter: float = 0.0, min_scale: float = 0.08
                    ) -> v2.Compose:
    """RandomResizedCrop + flip (+ jitter). `min_scale` is the smallest crop area kept; torchvision's
    0.08 suits ImageNet, small objects (the demo's shapes) need larger crops to stay in view.
    (The crop comes before the resize, so no image is ever enlarged beyond size x size.)"""
    ops = [v2.ToImage(), v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
           v2.RandomHorizontalFlip()]
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def eval_transform(resize: int, crop: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        BoundedResize(resize, antialias=True),
        v2.CenterCrop(crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def card_transform(card) -> v2.Compose:
    """The exact preprocessing every consumer of a model card must apply."""
    i = card.input
    return eval_transform(i.resize, i.crop, i.mean, i.std)


def apply_transform(transform, image: Image.Image, path: str):
    """`transform(image)`, with the file named in a refusal of the image's size."""
    try:
        return transform(image)
    except ImageTooLarge as e:
        raise UserError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def warn(message: str) -> None:
    """A warning record (one `warning: ...` line on stderr from the command line); the command goes on."""
    log.warning(message)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any decoded image -> 8-bit RGB, scaling high bit depths by their value range (the rule a C++
    reader must copy to match):

    - 16-bit grayscale (PIL modes I;16, I;16B, I;16L, I;16N) and 32-bit integer (mode I, read as
      16-bit values, clipped to 0..65535): v8 = round(v * 255 / 65535). PIL's convert("RGB") clips
      these at 255 instead, which turned every 16-bit image white.
    - 32-bit float (mode F): by the image's largest finite value: max <= 1 -> v * 255 (a [0, 1]
      image); max <= 255 -> v (already 8-bit values); otherwise v * 255 / 65535 (16-bit values);
      then rounded and clipped to 0..255. NaN and +-Inf become 0.
    - 16-bit colour PNGs (RGB, RGBA, gray+alpha) reach us from Pillow's decoder already as 8-bit:
      it keeps the high byte (v >> 8), at most one level below the rule above.
    - Everything else (palette, L, LA, RGBA, CMYK, 1-bit, YCbCr) is PIL's convert("RGB"): alpha is
      dropped, as torchvision's loader does.
    EXIF orientation is not applied (torchvision's loader ignores it too, so training and inference
    agree); a phone photo stored sideways is classified sideways.
    """
    if img.mode in SIXTEEN_BIT_MODES:
        v = np.clip(np.asarray(img), 0, 65535).astype(np.int32)
        # round(v / 257) for integers: v / 257 is never exactly k + 0.5, so no tie rule is needed
        return Image.fromarray(((v + 128) // 257).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(float_to_8bit(np.asarray(img, np.float32))).convert("RGB")
    return img.convert("RGB")


def float_to_8bit(a: np.ndarray) -> np.ndarray:
    """The mode-F rule of `to_rgb8`."""
    a = np.where(np.isfinite(a), a, 0).astype(np.float32)
    top = float(a.max()) if a.size else 0.0
    scale = 255.0 if top <= 1 else 1.0 if top <= 255 else 255.0 / 65535.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def load_image(path: str) -> Image.Image:
    """Decode `path` to 8-bit RGB (see to_rgb8); every way a file can fail is one UserError naming it.

    Decompression bombs: Pillow's own limit is kept (Image.MAX_IMAGE_PIXELS, 89.5 M pixels by
    default): over twice that the image is refused before decoding; between 1x and 2x it decodes,
    with our one-line warning instead of Pillow's two-line DecompressionBombWarning.
    """
    from alexnet_deploy.files import image_path_problem

    problem = image_path_problem(path)
    if problem:
        raise UserError(problem)
    return decode_image(path, path)


def decode_image(source: Any, name: str) -> Image.Image:
    """`source` (a path or a binary file object) decoded to 8-bit RGB, under Pillow's bomb limit;
    `name` is how a refusal names it."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if caught:
                    w, h = img.size
                    warn(f"{name} is {w} x {h} ({w * h} pixels), over Pillow's decompression-bomb "
                         f"limit Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}; decoding it anyway")
                return to_rgb8(img)
    except Image.DecompressionBombError as e:
        raise UserError(f"cannot read image {name}: {e} (Pillow's limit: twice Image.MAX_IMAGE_PIXELS "
                        f"= {Image.MAX_IMAGE_PIXELS}); shrink the image") from None
    except Exception as e:  # any decoder failure on untrusted bytes: name the image, no traceback
        raise UserError(f"cannot read image {name} ({e.__class__.__name__}); remove or replace it") \
            from None


def preprocess_bytes(blobs: list[bytes], card) -> np.ndarray:
    """Encoded images (JPEG / PNG / ... bytes, as a server receives them) -> the float32 NCHW batch
    `preprocess_files` makes from the same images as files."""
    transform = card_transform(card)
    names = [f"#{i} of the request ({len(b)} bytes)" for i, b in enumerate(blobs)]
    if not blobs:
        return np.zeros((0, *card.input.shape), np.float32)
    return np.ascontiguousarray(np.stack([apply_transform(transform, decode_image(io.BytesIO(b), n), n).numpy()
                                          for b, n in zip(blobs, names, strict=False)]), dtype=np.float32)


def is_split_root(root: Path) -> bool:
    return (root / "train").is_dir() or (root / "val").is_dir()


def resolve_split(root: str | os.PathLike, split: str) -> Path:
    """The class-folder directory for `split` under a split root, or `root` itself if it holds
    class folders directly (validate and calibration accept either)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    if is_split_root(root):
        path = root / split
        if not path.is_dir():
            raise UserError(f"{root} has no {split}/ folder (expected {root}/{split}/<class>/<images>)")
        return path
    return root


def find_split(root: str | os.PathLike, split: str) -> Path | None:
    """Like resolve_split but None when a split root lacks this split (e.g. the optional test/)."""
    root = Path(root)
    if is_split_root(root) and not (root / split).is_dir():
        return None
    return resolve_split(root, split)


# ---------------------------------------------------------------------------------------------
# Folder scanning: our rules, used by every split (train, val, test, calibration)
# ---------------------------------------------------------------------------------------------
# Hidden entries are never classes or images: dot-names (.ipynb_checkpoints, .DS_Store, AppleDouble
# ._* files, .cache, .thumbs) and macOS archive leftovers. torchvision's scan counts hidden folders
# as classes, which shifted every label of a val/ with a .thumbs folder by one.
HIDDEN_NAMES = frozenset({"__MACOSX"})


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN_NAMES


def visible_dirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden folders in `path` (a class folder may itself be a symlink)."""
    return sorted(d.name for d in path.iterdir() if not is_hidden(d.name) and d.is_dir())


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every image under `folder`, in torchvision's order (folders sorted, then names sorted).

    Symlink rule: `folder` itself may be a symlink, and symlinked image files are read, but symlinked
    folders below it are never entered (os.walk(followlinks=False)). So a link back up
    (`circle/loop -> ..`) or a cycle cannot repeat or mislabel images. Images are known by
    extension, case-insensitively; hidden files and folders are skipped, broken links ignored.
    """
    walked = []
    for root, dirs, files in os.walk(str(folder), followlinks=False):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        walked.append((root, files))
    out = []
    for root, files in sorted(walked):
        for name in sorted(files):
            path = os.path.join(root, name)
            if not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path):
                out.append(path)
    return out


@dataclass
class FolderScan:
    """A folder of class folders as we read it: class names (sorted) and each class's images."""

    root: Path
    files: dict[str, list[str]]

    @property
    def classes(self) -> list[str]:
        return list(self.files)

    @property
    def count(self) -> int:
        return sum(map(len, self.files.values()))


def scan_class_folders(path: Path) -> FolderScan:
    """Class folders of `path` and their images, with one clear error for each way it can be wrong."""
    if not path.is_dir():
        raise UserError(f"data folder not found: {path}")
    names = visible_dirs(path)
    if not names:
        raise UserError(f"{path} has no class folders (expected {path}/<class>/<images>)")
    files = {}
    for c in names:
        files[c] = image_files(path / c)
        if not files[c]:
            raise UserError(f"class folder {path / c} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    return FolderScan(path, files)


def check_class_folders(path: Path) -> list[str]:
    """Class names of a folder of class folders (see scan_class_folders)."""
    return scan_class_folders(Path(path)).classes


CLASSES_FILE_MAX_BYTES = 16 << 20  # 100,000 names of 160 characters: a larger "names file" is not one


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names for a bare state dict (`export --classes`): a text file, one name per line
    (blank lines ignored), or an ImageFolder root / split, whose sorted class folders are the
    order torchvision's ImageFolder gave the training (a root's train/ split)."""
    path = Path(path)
    if path.is_dir():
        return check_class_folders(resolve_split(path, "train"))
    if not path.is_file():
        raise UserError(f"--classes {path}: no such file or folder (pass a text file with one class "
                        "name per line, or the ImageFolder the model was trained on)")
    if path.stat().st_size > CLASSES_FILE_MAX_BYTES:
        raise UserError(f"--classes {path} is larger than {CLASSES_FILE_MAX_BYTES >> 20} MB: not a list "
                        "of class names")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--classes {path} is not UTF-8 text (one class name per line)") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"--classes {path} holds no class names (one per line)")
    return names


def _class_difference(expected: list[str], found: list[str]) -> str:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    return f"missing: {missing or 'none'}, unexpected: {extra or 'none'}"


class ImageFolderData(torch.utils.data.Dataset):
    """Our ImageFolder: (transformed image, label) pairs from a FolderScan.

    Same attributes as torchvision's ImageFolder (classes, class_to_idx, samples, targets), but the
    scan is ours (hidden entries and folder symlinks, see image_files) and the label of a class is
    its index in `classes` as given, so a model card's order is kept.
    """

    def __init__(self, scan: FolderScan, classes: list[str], transform=None, loader=None) -> None:
        self.root = str(scan.root)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, self.class_to_idx[c]) for c in scan.classes for p in scan.files[c]]
        self.targets = [y for _, y in self.samples]
        self.transform = transform
        self.loader = loader or load_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = self.loader(path)
        if self.transform is not None:
            image = apply_transform(self.transform, image, path)
        return image, label


class CachedLoader:
    """load_image that keeps decoded images: small data sets (the demo) are decoded once instead
    of every epoch, which otherwise costs as much as the training step on 2 cores."""

    def __init__(self) -> None:
        self.images: dict[str, Image.Image] = {}

    def __call__(self, path: str) -> Image.Image:
        if path not in self.images:
            self.images[path] = load_image(path)
        return self.images[path]


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes of the images the scan would read (not following folder symlinks)."""
    return sum(os.path.getsize(p) for p in image_files(path))


def image_folder(path: str | os.PathLike, transform=None, classes: list[str] | None = None,
                 cache: bool = False) -> ImageFolderData:
    """The images of a folder of class folders; `classes`, when given, must be the same set, and
    labels are indices into it (its order, e.g. a model card's)."""
    path = Path(path)
    scan = scan_class_folders(path)
    if classes is not None and sorted(scan.classes) != sorted(classes):
        raise UserError(f"{path} has different classes than expected "
                        f"({_class_difference(list(classes), scan.classes)})")
    return ImageFolderData(scan, list(classes) if classes is not None else scan.classes,
                           transform=transform, loader=CachedLoader() if cache else load_image)


MIN_TRAIN_CLASSES = 2


def training_splits(root: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """train/, val/ and the optional test/ of a split root, with their class lists checked equal.

    The trainer needs all three roles kept apart, so a bare folder of class folders is refused; so
    is a single class (a 1-class "classifier" scores 100% and learns nothing). A split where a class
    holds a single image is accepted with a one-line warning: its per-class results are noise.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ folder; training needs {root}/train/<class>/<images> "
                            f"and {root}/val/<class>/<images> (try `alexnet-deploy data demo --out DIR`)")
    test = root / "test" if (root / "test").is_dir() else None
    train = scan_class_folders(root / "train")
    if len(train.classes) < MIN_TRAIN_CLASSES:
        raise UserError(f"training needs at least {MIN_TRAIN_CLASSES} classes; {root / 'train'} has "
                        f"{len(train.classes)} ({', '.join(train.classes)}): add a folder per class")
    for split in (train, *(scan_class_folders(s) for s in (root / "val", test) if s is not None)):
        if split.classes != train.classes:
            raise UserError(f"{split.root} has different classes than {root / 'train'} "
                            f"({_class_difference(train.classes, split.classes)})")
        single = [c for c, files in split.files.items() if len(files) == 1]
        if single:
            warn(f"{split.root}: {len(single)} of {len(split.classes)} classes hold a single image "
                 f"({', '.join(single[:3])}{', ...' if len(single) > 3 else ''}); its metrics are noise")
    return root / "train", root / "val", test


def worker_error_message(e: UserError) -> str:
    """The one-line message of a UserError raised inside a DataLoader worker.

    The DataLoader re-raises worker exceptions as the same type with the worker's whole traceback
    as the message; users should see only the original line.
    """
    text = str(e)
    if not text.startswith("Caught "):
        return text
    marker = f"{UserError.__module__}.{UserError.__name__}: "
    lines = [ln for ln in text.splitlines() if ln.startswith(marker)]
    return lines[-1][len(marker):] if lines else text.splitlines()[-1]


@dataclass
class LabelledBatch:
    images: np.ndarray  # float32 NCHW, preprocessed with the card
    labels: np.ndarray  # int64 class indices into card.classes
    paths: list[str]
    by_position: dict[str, str] | None = None  # folder -> card name, when the card names no classes


def balanced_subset(groups: list[list[int]], limit: int | None, seed: int) -> list[int]:
    """Up to `limit` of the indices in `groups` (all when None), sorted: a seeded shuffle of each
    group, then round-robin over the groups, so small limits still cover every group (class)."""
    total = sum(map(len, groups))
    if limit is None or limit >= total:
        return sorted(i for g in groups for i in g)
    rng = random.Random(seed)
    groups = [list(g) for g in groups]
    for g in groups:
        rng.shuffle(g)
    indices, k = [], 0
    while len(indices) < limit:
        for g in groups:
            if k < len(g) and len(indices) < limit:
                indices.append(g[k])
        k += 1
    return sorted(indices)


def preprocess_paths(paths: list[str], transform, shape) -> np.ndarray:
    """Image files -> one float32 NCHW batch (shape (0, *shape) for none)."""
    if not paths:
        return np.zeros((0, *shape), np.float32)
    # C order: the transforms leave channels-last tensors, and np.stack keeps their layout
    return np.ascontiguousarray(np.stack([apply_transform(transform, load_image(p), p).numpy() for p in paths]),
                                dtype=np.float32)


def load_labelled(root: str | os.PathLike, card, limit: int | None = None, split: str = "val",
                  seed: int = 0) -> LabelledBatch:
    """Up to `limit` preprocessed images of a split, classes checked against the card; labels are
    indices into card.classes. A class-balanced, seeded subset (see balanced_subset). A card with
    generic names (class_0, ...) takes the folder's sorted classes in their place, by position: the
    order torchvision's ImageFolder gave the training; said in one warning and in `by_position`."""
    folder = resolve_split(root, split)
    mapping = _by_position(folder, card)
    ds = image_folder(folder, classes=list(mapping) if mapping else card.classes)
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(ds.samples):
        by_class.setdefault(y, []).append(i)
    indices = balanced_subset(list(by_class.values()), limit, seed)
    paths = [ds.samples[i][0] for i in indices]
    images = preprocess_paths(paths, card_transform(card), card.input.shape)
    labels = np.array([ds.samples[i][1] for i in indices], dtype=np.int64)
    return LabelledBatch(images, labels, paths, mapping)


def _by_position(folder: Path, card) -> dict[str, str] | None:
    if not card.generic_names:
        return None
    found = scan_class_folders(folder).classes
    if found == card.classes:
        return None
    if len(found) != card.num_classes:
        raise UserError(f"{folder} has {len(found)} classes but the model has {card.num_classes} outputs "
                        "and its card names none: pass data with that many class folders (or export "
                        "with --classes)")
    mapping = dict(zip(found, card.classes, strict=True))
    shown = ", ".join(f"{k}={v}" for k, v in list(mapping.items())[:4]) + (", ..." if len(found) > 4 else "")
    log.warning(f"the card names no classes: {folder}'s {len(found)} sorted class folders are taken "
                   f"as classes 0..{len(found) - 1} ({shown}); export with --classes to name them")
    return mapping


def representative_images(folder: str | os.PathLike) -> list[list[str]]:
    """Images of any folder, labelled or not, grouped for balanced picking: the images directly in
    it (a flat folder) are one group, each visible subfolder (a class folder, whatever its name)
    another. Same hidden-entry and symlink rules as image_files."""
    folder = Path(folder)
    flat = [str(folder / n) for n in sorted(os.listdir(folder)) if not is_hidden(n)
            and n.lower().endswith(IMAGE_EXTENSIONS) and (folder / n).is_file()]
    groups = [flat] + [image_files(folder / d) for d in visible_dirs(folder)]
    return [g for g in groups if g]


def preprocess_files(paths: list[str | os.PathLike], card) -> np.ndarray:
    """Image files -> float32 NCHW batch with the card's preprocessing."""
    if not paths:
        raise UserError("give at least one image")
    return preprocess_paths([str(p) for p in paths], card_transform(card), card.input.shape)


# ---------------------------------------------------------------------------------------------
# Demo data: procedurally drawn shapes, deterministic for a seed
# ---------------------------------------------------------------------------------------------
def _regular(n: int, r: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _star(points: int, r: float) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        rr = r if i % 2 == 0 else r * 0.42
        a = math.pi * i / points - math.pi / 2
        out.append((rr * math.cos(a), rr * math.sin(a)))
    return out


def _cross(r: float) -> list[tuple[float, float]]:
    w = r * 0.33
    return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
            (-r, -w), (-w, -w)]


def _arrow(r: float) -> list[tuple[float, float]]:
    w = r * 0.3
    return [(-r, -w), (0.1 * r, -w), (0.1 * r, -r * 0.7), (r, 0), (0.1 * r, r * 0.7), (0.1 * r, w), (-r, w)]


def _crescent_mask(draw: ImageDraw.ImageDraw, cx, cy, r, fill, bg_fill):
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    draw.ellipse([cx - r * 0.45, cy - r * 1.05, cx + r * 1.5, cy + r * 0.95], fill=bg_fill)


# name -> polygon maker (radius) or None for the shapes drawn specially below
# The first ten (the default) are the most distinct silhouettes at low resolution; hexagon and
# pentagon, close to a circle at 64 px, only join with --classes 11 or 12.
DEMO_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "arrow",
               "diamond", "crescent", "hexagon", "pentagon")


def _polygon(shape: str, r: float) -> list[tuple[float, float]] | None:
    return {
        "square": lambda: _regular(4, r * 1.2, math.pi / 4),
        "triangle": lambda: _regular(3, r * 1.15, -math.pi / 2),
        "star": lambda: _star(5, r * 1.2),
        "cross": lambda: _cross(r),
        "hexagon": lambda: _regular(6, r),
        "arrow": lambda: _arrow(r),
        "diamond": lambda: [(0, -r * 1.2), (r * 0.65, 0), (0, r * 1.2), (-r * 0.65, 0)],
        "pentagon": lambda: _regular(5, r, -math.pi / 2),
    }.get(shape, lambda: None)()


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """One of several textures so the class is never readable from the background. Texture
    contrast stays moderate (second colours near the first) so the shape remains the strongest
    edge in the picture: the task is learnable at 64 px in a few hundred steps, not trivial."""
    kind = rng.integers(4)
    base = rng.integers(0, 256, 3)

    def near(c):
        return np.clip(c + rng.integers(-35, 36, 3), 0, 255)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # flat + noise
        arr = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == 1:  # linear gradient between two colours
        other = near(base)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        arr = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:  # stripes
        other = near(base)
        f = rng.uniform(3, 10)
        a = rng.uniform(0, math.pi)
        t = (np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a))) > 0).astype(np.float32)
        arr = base * (1 - t[..., None]) + other * t[..., None]
    else:  # blotchy low-frequency noise
        small = np.clip(base + rng.integers(-35, 36, (4, 4, 3)), 0, 255).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), np.float32)
    arr = arr + rng.uniform(2, 8) * rng.standard_normal((size, size, 3), dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, bg: Image.Image) -> tuple[int, int, int]:
    mean = np.asarray(bg, np.float32).mean(axis=(0, 1))
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c - mean).sum() > 240:
            return tuple(int(v) for v in c)
    return tuple(int(v) for v in (255 - mean))


# Rotation stays within +-30 degrees: with free rotation a square turns into a diamond and an arrow
# into a triangle-like blob at 64 px, and AlexNet needed several times the demo's time budget.
MAX_ROTATION = 30.0


def draw_demo_image(shape: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One demo image of `shape`: random colour, scale, position, rotation, background, noise."""
    # Draw at 2x and downsample for anti-aliased edges.
    big = size * 2
    img = _background(rng, big)
    fill = _contrasting_colour(rng, img)
    r = rng.uniform(0.24, 0.38) * big
    cx, cy = (rng.uniform(r * 1.1, big - r * 1.1) for _ in range(2))
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    rgba = (*fill, 255)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgba)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgba, width=max(2, int(r * 0.3)))
    elif shape == "crescent":
        _crescent_mask(d, cx, cy, r, rgba, (0, 0, 0, 0))
    elif shape == "heart":
        rr = r * 0.55
        d.ellipse([cx - 2 * rr, cy - rr * 1.4, cx, cy + rr * 0.6], fill=rgba)
        d.ellipse([cx, cy - rr * 1.4, cx + 2 * rr, cy + rr * 0.6], fill=rgba)
        d.polygon([(cx - 1.95 * rr, cy - rr * 0.1), (cx + 1.95 * rr, cy - rr * 0.1), (cx, cy + 2 * rr)],
                  fill=rgba)
    else:
        a = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        pts = [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a))
               for x, y in _polygon(shape, r)]
        d.polygon(pts, fill=rgba)
    if shape in ("circle", "ring", "crescent", "heart"):
        layer = layer.rotate(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), center=(cx, cy))
    img = Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")
    img = img.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    arr = np.asarray(img, np.float32) + rng.uniform(1, 10) * rng.standard_normal((size, size, 3), dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


DEMO_MAX_SIZE = 1024  # 1024 px PNGs; --size 60000 asked numpy for 215 GiB
DEMO_MAX_PER_CLASS = 100_000


def _check_demo_args(classes: int, per_class: int, size: int, seed: int,
                     held: dict[str, int | None]) -> None:
    """Every argument checked before anything is written (the CLI's ranges say the same)."""
    if not 2 <= classes <= len(DEMO_SHAPES):
        raise UserError(f"--classes must be between 2 and {len(DEMO_SHAPES)}, got {classes}")
    if not 1 <= per_class <= DEMO_MAX_PER_CLASS:
        raise UserError(f"--per-class must be >= 1 and <= {DEMO_MAX_PER_CLASS}, got {per_class}")
    if not 32 <= size <= DEMO_MAX_SIZE:
        raise UserError(f"--size must be >= 32 and <= {DEMO_MAX_SIZE} pixels, got {size}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    for name, n in held.items():
        if n is not None and not 1 <= n <= DEMO_MAX_PER_CLASS:
            raise UserError(f"{name} must be >= 1 and <= {DEMO_MAX_PER_CLASS}, got {n}")


def _check_demo_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out or remove it")
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {out}: {above} is a file, not a folder; choose another --out")


def make_demo(out: str | os.PathLike, classes: int = 10, per_class: int = 400, size: int = 72,
              seed: int = 0, val_per_class: int | None = None, test_per_class: int | None = None
              ) -> Path:
    """Write a deterministic ImageFolder (train/, val/, test/) of drawn shapes.

    `per_class` is the train count per class; val and test default to a quarter of it (min 4).
    Each image's randomness comes from (seed, split, class, index), so any subset regenerates
    identically whatever the other arguments are. The images are drawn in a hidden `.OUT.partial`
    folder beside OUT, which is removed if anything fails, and moved into place at the end.
    """
    _check_demo_args(classes, per_class, size, seed,
                     {"val_per_class": val_per_class, "test_per_class": test_per_class})
    out = Path(out)
    _check_demo_out(out)
    held = max(4, per_class // 4)
    counts = {"train": per_class, "val": val_per_class or held, "test": test_per_class or held}
    full = out.absolute()  # `--out .` has no name of its own
    tmp = full.with_name(f".{full.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover of an earlier, killed run
    try:
        for split_idx, (split, n) in enumerate(counts.items()):
            for c, shape in enumerate(DEMO_SHAPES[:classes]):
                folder = tmp / split / shape
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    rng = np.random.default_rng([seed, split_idx, c, i])
                    draw_demo_image(shape, rng, size).save(folder / f"{shape}_{i:05d}.png", compress_level=1)
        if full.is_dir():  # an existing empty folder (possibly the current one): move the splits in
            for split in counts:
                os.replace(tmp / split, full / split)
            tmp.rmdir()
        else:
            full.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, full)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
