"""`alexnet-deploy preprocess`: images -> one float32 NCHW .npy batch for the C++ programs.

The C++ side then needs no image library and cannot drift from the card's preprocessing:
the batch is made by the same transform that validate and predict use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserError
from alexnet_deploy.files import image_path_problem


def run_preprocess(images: list[str | os.PathLike], card: str | os.PathLike,
                   out: str | os.PathLike) -> Path:
    """Write `images`, preprocessed with the card of `card` (export folder or weights), to `out`."""
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"--out must end in .npy (numpy's format, read by export/cpp), got {out}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .npy")
    if not images:
        raise UserError("give at least one image to preprocess")
    card_path = Path(card)
    if not card_path.exists():
        raise UserError(f"--card {card_path} not found: pass an export folder or a weights file")
    for p in images:
        problem = image_path_problem(p)
        if problem:
            raise UserError(problem)
    # torch and torchvision load only now, so the checks above answer at once.
    from alexnet_deploy.data import preprocess_files
    from alexnet_deploy.files import atomic_path
    from alexnet_deploy.models import read_card

    model_card = read_card(card_path)
    batch = np.ascontiguousarray(preprocess_files(list(images), model_card), dtype=np.float32)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temp name
            np.save(f, batch, allow_pickle=False)
    print(f"wrote {out}: float32 {'x'.join(map(str, batch.shape))} (NCHW)")
    return out

