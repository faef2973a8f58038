"""From the image file to the logits: decode, the card's preprocessing and inference timed apart, one
image per call (what an application that classifies one photo at a time pays), so "why is my app
slower than the benchmark" has an answer in the report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from alexnet_deploy.bench.timing import LatencyStats, time_calls
from alexnet_deploy.errors import UserError

MAX_IMAGES = 64  # distinct files rotated through; more only costs decoding them once up front
PHASES = ("decode", "preprocess", "infer")
METHOD = ("batch 1 per call, images rotated: decode = reading the file (from the page cache after the "
          "first pass) and decoding it to 8-bit RGB (data.load_image, as predict does); preprocess = the "
          "card's resize, crop and normalisation to a float32 NCHW array (data.card_transform); infer = "
          "runner.infer on it; total = all three; the same windows and minimums as the batch timings")


@dataclass
class EndToEnd:
    backend: str
    format: str
    precision: str
    device: str
    images: int  # distinct files timed, rotated
    megapixels: float  # mean decoded size of the timed calls
    decode_ms: LatencyStats
    preprocess_ms: LatencyStats
    infer_ms: LatencyStats
    total_ms: LatencyStats
    throughput_ips: float  # timed calls / timed seconds
    stable: bool
    artifact: str = ""

    @property
    def infer_share(self) -> float:
        """Inference's part of the median image: the rest is what the batch benchmark does not see."""
        return self.infer_ms.p50 / self.total_ms.p50


def image_paths(folder: str | os.PathLike) -> list[str]:
    """Up to MAX_IMAGES images under `folder`, checked to decode, or one UserError saying what is wrong."""
    from alexnet_deploy.data import image_files, load_image

    if not os.path.isdir(folder):
        raise UserError(f"--images {folder}: no such folder (pass a folder of image files)")
    paths = image_files(folder)[:MAX_IMAGES]
    if not paths:
        raise UserError(f"--images {folder}: no image files in it (.jpg, .png, ...)")
    for p in paths:
        load_image(p)  # a corrupt file is refused before any timing starts, naming the file
    return paths


def time_end_to_end(runner: Any, artifact: Any, card: Any, paths: list[str], run_length: dict[str, Any]
                    ) -> EndToEnd:
    """Time `runner` (active) on `paths`, one per call; `artifact` is the manifest entry it runs."""
    from alexnet_deploy.data import apply_transform, card_transform, load_image

    transform = card_transform(card)
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    pixels: list[int] = []

    def call(path: str) -> None:
        t0 = time.perf_counter()
        image = load_image(path)
        t1 = time.perf_counter()
        x = np.ascontiguousarray(apply_transform(transform, image, path).numpy()[None], dtype=np.float32)
        t2 = time.perf_counter()
        runner.infer(x)
        t3 = time.perf_counter()
        for name, (a, b) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3)), strict=True):
            phases[name].append((b - a) * 1e3)
        pixels.append(image.width * image.height)

    timing = time_calls(call, paths, **run_length)
    n = len(timing.samples_ms)  # the warm-up calls recorded their phases first: keep the timed ones
    timed = {name: values[-n:] for name, values in phases.items()}
    return EndToEnd(
        backend=runner.name, format=artifact.format, precision=artifact.precision, device=runner.device, images=len(paths), megapixels=round(float(np.mean(pixels[-n:])) / 1e6, 3),
        decode_ms=LatencyStats.of(timed["decode"]), preprocess_ms=LatencyStats.of(timed["preprocess"]),
        infer_ms=LatencyStats.of(timed["infer"]), total_ms=timing.stats,
        throughput_ips=n / (sum(timing.samples_ms) / 1e3), stable=timing.stable, artifact=artifact.path)
