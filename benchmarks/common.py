"""What several benchmark scripts start from: an untrained torchvision AlexNet export (timings do not
depend on the weights) and a real photograph."""

from __future__ import annotations

from pathlib import Path

PHOTO = "grace_hopper.jpg"  # matplotlib's sample photograph, 512 x 600


def untrained_alexnet(out: Path, formats: list[str], max_batch: int) -> Path:
    """`out`, holding a 224 px, 1000-class AlexNet (seed 0) exported to `formats`; reused when there."""
    import torch
    import torchvision

    import alexnet_deploy as ad

    if not (out / "manifest.json").exists():
        torch.manual_seed(0)
        card = {"num_classes": 1000, "input": {"crop": 224}}
        ad.export(torchvision.models.alexnet(), out, formats=formats, card=card, max_batch=max_batch)
    return out


def photo() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data(PHOTO, asfileobj=False))
