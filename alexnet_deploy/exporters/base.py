"""The exporter interface and registry: one module per format registers one Exporter."""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from alexnet_deploy.manifest import Artifact, hash_artifact
from alexnet_deploy.model import ModelCard

EXPORTERS: dict[str, type[Exporter]] = {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    if cls.name in EXPORTERS:
        raise ValueError(f"exporter {cls.name!r} is already registered")
    EXPORTERS[cls.name] = cls
    return cls


@dataclass
class ExportContext:
    """What every exporter gets: the eval-mode model, its card and the run's settings."""

    model: nn.Module
    card: ModelCard
    out: Path  # the export folder; artifacts go under it, paths in the manifest are relative
    max_batch: int = 64
    opset: int = 18
    device: str = "cpu"
    calib_data: Path | None = None
    calib_images: int = 256
    artifacts: list[Artifact] = field(default_factory=list)  # produced earlier in this run

    def sample(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, *self.card.input.shape, generator=g).to(self.device)

    def find(self, fmt: str, precision: str = "fp32") -> Artifact | None:
        return next((a for a in self.artifacts if a.format == fmt and a.precision == precision), None)

    def artifact(self, path: Path, fmt: str, precision: str, started: float, **kw) -> Artifact:
        """Describe a finished artifact: relative path, hash, size, export seconds."""
        sha, size = hash_artifact(path)
        return Artifact(format=fmt, precision=precision, device=kw.pop("device", self.device),
                        path=str(path.relative_to(self.out)), sha256=sha, bytes=size,
                        batch={"min": 1, "max": self.max_batch},
                        export_s=round(time.perf_counter() - started, 3), **kw)


class Exporter(ABC):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()  # formats exported first (openvino needs onnx)
    after: ClassVar[tuple[str, ...]] = ()  # exported first when chosen too, never auto-included
    needs_calibration: ClassVar[bool] = False  # export checks the calibration data up front

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """None when this format can be exported here for `device`, else why not."""
        return None

    @abstractmethod
    def export(self, ctx: ExportContext) -> list[Artifact]:
        """Write the artifacts under ctx.out (atomically) and describe them."""


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 rounds CUDA matmul/conv inputs to 10 mantissa bits: fp32 references, fp32 builds and
    fp32 checks must not use it."""
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
