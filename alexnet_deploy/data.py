"""Data: ImageFolder loading with clear errors, torchvision transforms.v2 presets, demo data.

Data folders come in two shapes, both accepted everywhere:
  ROOT/train/<class>/*, ROOT/val/<class>/*, optionally ROOT/test/<class>/*   (a split root)
  DIR/<class>/*                                                              (one split)
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError
from torchvision import datasets
from torchvision.transforms import v2

from alexnet_deploy.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
def train_transform(size: int, mean, std, color_jitter: float = 0.0, min_scale: float = 0.08
                    ) -> v2.Compose:
    """RandomResizedCrop + flip (+ jitter). `min_scale` is the smallest crop area kept; torchvision's
    0.08 suits ImageNet, small objects (the demo's shapes) need larger crops to stay in view."""
    ops = [v2.ToImage(), v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
           v2.RandomHorizontalFlip()]
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def eval_transform(resize: int, crop: int, mean, std) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(resize, antialias=True),
        v2.CenterCrop(crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def card_transform(card) -> v2.Compose:
    """The exact preprocessing every consumer of a model card must apply."""
    i = card.input
    return eval_transform(i.resize, i.crop, i.mean, i.std)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_image(path: str) -> Image.Image:
    """PIL loader that turns a corrupt file into a UserError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {path} ({e.__class__.__name__}); remove or replace it") \
            from None


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


def check_class_folders(path: Path) -> list[str]:
    """Class names of an ImageFolder directory, with one clear error for each way it can be wrong."""
    if not path.is_dir():
        raise UserError(f"data folder not found: {path}")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{path} has no class folders (expected {path}/<class>/<images>)")
    for c in classes:
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in (path / c).rglob("*") if f.is_file()):
            raise UserError(f"class folder {path / c} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    return classes


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
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def image_folder(path: str | os.PathLike, transform=None, classes: list[str] | None = None,
                 cache: bool = False) -> datasets.ImageFolder:
    """torchvision ImageFolder with our checks; `classes`, when given, must match exactly."""
    path = Path(path)
    found = check_class_folders(path)
    if classes is not None and found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise UserError(f"{path} has different classes than expected "
                        f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})")
    return datasets.ImageFolder(str(path), transform=transform, loader=CachedLoader() if cache else load_image,
                                is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))


def training_splits(root: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """train/, val/ and the optional test/ of a split root, with their class lists checked equal.

    The trainer needs all three roles kept apart, so a bare folder of class folders is refused.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"{root} has no {split}/ folder; training needs {root}/train/<class>/<images> "
                            f"and {root}/val/<class>/<images> (try `alexnet-deploy data demo --out DIR`)")
    test = root / "test" if (root / "test").is_dir() else None
    classes = check_class_folders(root / "train")
    for split in (root / "val", test):
        if split is not None:
            found = check_class_folders(split)
            if found != classes:
                missing = sorted(set(classes) - set(found))
                extra = sorted(set(found) - set(classes))
                raise UserError(f"{split} has different classes than {root / 'train'} "
                                f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})")
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


def load_labelled(root: str | os.PathLike, card, limit: int | None = None, split: str = "val",
                  seed: int = 0) -> LabelledBatch:
    """Up to `limit` preprocessed images of a split, classes checked against the card.

    Picks a class-balanced, seeded subset so small limits still cover every class.
    """
    ds = image_folder(resolve_split(root, split), transform=card_transform(card), classes=card.classes)
    indices = list(range(len(ds)))
    if limit is not None and limit < len(ds):
        rng = random.Random(seed)
        by_class: dict[int, list[int]] = {}
        for i, (_, y) in enumerate(ds.samples):
            by_class.setdefault(y, []).append(i)
        for v in by_class.values():
            rng.shuffle(v)
        # round-robin over classes
        indices, k = [], 0
        while len(indices) < limit:
            for v in by_class.values():
                if k < len(v) and len(indices) < limit:
                    indices.append(v[k])
            k += 1
        indices.sort()
    images = np.stack([ds[i][0].numpy() for i in indices]).astype(np.float32) if indices else \
        np.zeros((0, *card.input.shape), np.float32)
    labels = np.array([ds.samples[i][1] for i in indices], dtype=np.int64)
    return LabelledBatch(images, labels, [ds.samples[i][0] for i in indices])


def preprocess_files(paths: list[str | os.PathLike], card) -> np.ndarray:
    """Image files -> float32 NCHW batch with the card's preprocessing."""
    tf = card_transform(card)
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"image not found: {p}")
        out.append(tf(load_image(str(p))).numpy())
    return np.stack(out).astype(np.float32)


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


def make_demo(out: str | os.PathLike, classes: int = 10, per_class: int = 400, size: int = 72,
              seed: int = 0, val_per_class: int | None = None, test_per_class: int | None = None
              ) -> Path:
    """Write a deterministic ImageFolder (train/, val/, test/) of drawn shapes.

    `per_class` is the train count per class; val and test default to a quarter of it (min 4).
    Each image's randomness comes from (seed, split, class, index), so any subset regenerates
    identically whatever the other arguments are.
    """
    if not 2 <= classes <= len(DEMO_SHAPES):
        raise UserError(f"--classes must be between 2 and {len(DEMO_SHAPES)}, got {classes}")
    if per_class < 1:
        raise UserError(f"--per-class must be >= 1, got {per_class}")
    if size < 32:
        raise UserError(f"--size must be >= 32 pixels, got {size}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --out or remove it")
    held = max(4, per_class // 4)
    counts = {"train": per_class, "val": val_per_class or held, "test": test_per_class or held}
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    for split_idx, (split, n) in enumerate(counts.items()):
        for c, shape in enumerate(DEMO_SHAPES[:classes]):
            folder = tmp / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, split_idx, c, i])
                draw_demo_image(shape, rng, size).save(folder / f"{shape}_{i:05d}.png", compress_level=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
