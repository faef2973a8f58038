"""What torch's exports, runners and the reference computation share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 rounds CUDA matmul/conv inputs to 10 mantissa bits: fp32 references, fp32 builds and
    fp32 checks must not use it. The previous settings come back on exit."""
    import torch

    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
