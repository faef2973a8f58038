"""Export: weights -> one folder of deployment artifacts + manifest.json.

The Exporter interface and the registry of formats live here; each format's exporter lives in its
backend's package (alexnet_deploy/backends/<name>/export.py). Three jobs, apart:
  planning   `plan_formats`: the requested names through the registry, dependencies first
             (graphlib), registry order otherwise;
  running    `export_all`: each exporter in that order into a staging folder, each artifact
             smoke-checked against eager PyTorch on the one comparison path (checks.py), the
             manifest written once, last, inside the staging folder;
  staging    export_staging.py: --out checks, and the rename into place only when complete.
The summary table is export_summary.py's. Export never times anything: `recommend` does
(alexnet_deploy.bench.recommend), and `export --target` is the CLI running both.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alexnet_deploy.card import ModelCard
from alexnet_deploy.errors import UserError, expected_failure, os_error_from
from alexnet_deploy.export_staging import check_out, staging
from alexnet_deploy.files import (
    check_not_cwd,
    check_output_dir,
    output_lock,
    remove_stale_staging,
    sha256_file,
)
from alexnet_deploy.manifest import Artifact, Manifest, Skipped, hash_artifact
from alexnet_deploy.registry import Registry

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

# Registry order is the order formats are exported in (after their dependencies) and listed in
# `--help`. Adding a format is one line here.
EXPORTERS = Registry("format", (
    ("torchscript", "alexnet_deploy.backends.torch.export:TorchScriptExporter"),
    ("onnx", "alexnet_deploy.backends.onnx.export:OnnxExporter"),
    ("torch-export", "alexnet_deploy.backends.torch.export:TorchExportExporter"),
    ("aoti", "alexnet_deploy.backends.torch.export:AotiExporter"),
    ("openvino", "alexnet_deploy.backends.openvino.export:OpenVinoExporter"),
    ("tensorrt", "alexnet_deploy.backends.tensorrt.export:TensorRTExporter"),
    ("triton", "alexnet_deploy.backends.triton.export:TritonExporter"),
))


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
    weight_compression: bool = False  # also the weight-compressed IRs (an `options` entry of openvino)
    artifacts: list[Artifact] = field(default_factory=list)  # produced earlier in this run

    def sample(self, n: int = 2, seed: int = 0) -> torch.Tensor:
        import torch

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
    # Export options (ExportContext fields) only some formats act on: asking for one that no planned
    # format takes is refused before anything is built (a flag that silently did nothing would lie).
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """None when this format can be exported here for `device`, else why not."""
        return None

    @classmethod
    def check_request(cls, opset: int) -> None:
        """Refuse settings this format cannot honour (one line), before anything is built."""
        return None

    @classmethod
    def option_unavailable_reason(cls, option: str) -> str | None:
        """None when this format can act on `option` (one of its `options`) here, else why not."""
        return None

    @abstractmethod
    def export(self, ctx: ExportContext) -> list[Artifact]:
        """Write the artifacts under ctx.out (atomically) and describe them."""


WEIGHTS_FILE = "weights.safetensors"


# ---------------------------------------------------------------------------------------------
# Planning: which formats, in which order
# ---------------------------------------------------------------------------------------------
def unavailable_reason(name: str, device: str) -> str | None:
    """Why `name` cannot be exported here (its own reason or a required format's), or None."""
    cls = EXPORTERS[name]
    reason = cls.unavailable_reason(device)
    if reason:
        return reason
    for dep in cls.requires:
        dep_reason = unavailable_reason(dep, device)
        if dep_reason:
            return f"needs {dep}, which cannot be exported here: {dep_reason}"
    return None


def plan_formats(requested: list[str] | None, device: str = "cpu") -> tuple[list[str], list[Skipped]]:
    """The formats to export, dependencies first, and those `all` had to skip (with the reason)."""
    names = list(dict.fromkeys(requested or ["all"]))
    choices = ", ".join(EXPORTERS)
    if "all" in names:
        if len(names) > 1:
            raise UserError(f"--formats all cannot be combined with other names; choose 'all' or some of: "
                            f"{choices}")
        reasons = {n: unavailable_reason(n, device) for n in EXPORTERS}
        return (ordered([n for n, r in reasons.items() if r is None]),
                [Skipped(n, r) for n, r in reasons.items() if r is not None])
    for n in names:
        if n not in EXPORTERS:
            raise UserError(f"unknown format {n!r}; choose from: {choices} (or 'all')")
    for n in names:
        reason = unavailable_reason(n, device)
        if reason:
            raise UserError(f"cannot export {n} here: {reason}")
    return ordered(names), []


def check_options(order: list[str], skipped: list[Skipped], options: dict[str, Any]) -> None:
    """Each option that is set must be taken by a planned format that can act on it here."""
    for option, value in options.items():
        if not value:
            continue
        flag = "--" + option.replace("_", "-")
        takers = [n for n, cls in EXPORTERS.items() if option in cls.options]
        planned = [n for n in order if n in takers]
        if not planned:
            why = "".join(f" ({s.format}: {s.reason})" for s in skipped if s.format in takers)
            raise UserError(f"{flag} applies to the {', '.join(takers)} format, which this export does not "
                            f"include{why}: add it to --formats")
        for n in planned:
            reason = EXPORTERS[n].option_unavailable_reason(option)
            if reason:
                raise UserError(f"{flag}: {reason}")


def ordered(names: list[str]) -> list[str]:
    """`names` plus the formats they require, each after its `requires` and after its `after`
    formats when those are exported too; among formats that are ready, registry order."""
    wanted = set(names)
    stack = list(names)
    while stack:
        for dep in EXPORTERS[stack.pop()].requires:
            if dep not in wanted:
                wanted.add(dep)
                stack.append(dep)
    graph = {n: {*EXPORTERS[n].requires, *(a for a in EXPORTERS[n].after if a in wanted)} for n in wanted}
    sorter = TopologicalSorter(graph)
    sorter.prepare()  # graphlib.CycleError names a dependency cycle among the registered formats
    rank = {n: i for i, n in enumerate(EXPORTERS)}
    ready: list[tuple[int, str]] = []
    order: list[str] = []
    while sorter.is_active():
        for n in sorter.get_ready():
            heapq.heappush(ready, (rank[n], n))
        _, n = heapq.heappop(ready)
        order.append(n)
        sorter.done(n)
    return order


# ---------------------------------------------------------------------------------------------
# Running: export_all
# ---------------------------------------------------------------------------------------------
def export_all(weights: Any, out: str | os.PathLike, formats: list[str] | None = None,
               max_batch: int = 64, opset: int = 18, calib_data: str | os.PathLike | None = None,
               calib_images: int = 256, device: str = "cpu", force: bool = False,
               show: bool = True, arch: str | None = None,
               classes: str | os.PathLike | None = None, card: ModelCard | dict | None = None,
               image_size: int | None = None, weight_compression: bool = False) -> Manifest:
    """Export `weights` (a weights path, 'torchvision', or an nn.Module object) into `out` as
    `formats` (default 'all'); returns the written manifest. Every artifact passes its smoke check
    before it is listed: a failed check raises CheckFailed and leaves `out` as it was.
    `arch` names the architecture of a bare state dict whose own cannot be detected
    (models.load_weights); `classes` a names file or ImageFolder that names its classes
    (data.read_class_names); `card` fields (a ModelCard or manifest.json's `card` form) replace
    the weights' own; `image_size` the input side of a card that does not fix it;
    `weight_compression` adds OpenVINO IRs with NNCF-compressed weights (int8w, int4w, int4w-a8)."""
    from alexnet_deploy.calibration import resolve_calib_data
    from alexnet_deploy.manifest import MAX_BATCH
    from alexnet_deploy.models import check_input_size

    if not 1 <= max_batch <= MAX_BATCH:
        raise UserError(f"--max-batch must be between 1 and {MAX_BATCH}, got {max_batch}")
    if calib_images < 1:
        raise UserError(f"--calib-images must be at least 1, got {calib_images}")
    _check_device(device)
    order, skipped = plan_formats(formats, device)
    for name in order:
        EXPORTERS[name].check_request(opset)
    check_options(order, skipped, {"weight_compression": weight_compression})
    out = Path(out)
    # Where the result goes is checked before anything is loaded or built.
    check_output_dir(out, staged=True)
    check_not_cwd(out)
    model, card = _model_and_card(weights, device, arch, card, image_size)
    check_input_size(card.arch, card.input.crop)
    if classes is not None:
        card = _named(card, classes)
    path = weights if isinstance(weights, (str, os.PathLike)) else None
    with output_lock(out):  # held through the final rename: one writer per --out
        remove_stale_staging(out)
        check_out(out, force, path, calib_data, classes, *_card_data(card))
        needs_calib = any(EXPORTERS[n].needs_calibration for n in order)
        calib = resolve_calib_data(card, calib_data) if needs_calib else None
        with staging(out) as stage:
            ctx = ExportContext(model=model, card=card, out=stage, max_batch=max_batch, opset=opset,
                                device=device, calib_data=calib, calib_images=calib_images,
                                weight_compression=weight_compression)
            manifest = _export_into(ctx, path if path is not None else card.source, order, skipped)
            manifest.write(stage)  # once, last: the manifest only ever lists finished, checked files
    manifest.root = out
    if show:
        from alexnet_deploy.export_summary import print_summary

        print_summary(manifest, out)
    return manifest


def _model_and_card(weights: Any, device: str, arch: str | None, card: ModelCard | dict | None,
                    image_size: int | None) -> tuple[Any, ModelCard]:
    from alexnet_deploy.models import from_module, load_weights

    if isinstance(weights, (str, os.PathLike)):
        model, own = load_weights(weights, device=device, arch=arch)
        if card is not None:
            given = card.to_dict() if isinstance(card, ModelCard) else dict(card)
            own = ModelCard.from_dict({**own.to_dict(), **given}, what="card")
    elif arch is not None:
        raise UserError("arch= applies to a weights path; a module's card names its arch (card={'arch': ...})")
    else:
        model, own = from_module(weights, card)
        model = model.to(device)
    if image_size is not None:
        own = _resized(own, image_size)
    return model, own


def _resized(card: ModelCard, size: int) -> ModelCard:
    """The card with input side `size`, resizing in the card's own ratio (Inception's 342/299)."""
    from alexnet_deploy.card import MAX_IMAGE_SIDE

    if not 16 <= size <= MAX_IMAGE_SIDE:
        raise UserError(f"--image-size must be between 16 and {MAX_IMAGE_SIDE}, got {size}")
    inp = card.input.resized_to(size).to_dict()
    return ModelCard.from_dict({**card.to_dict(), "input": inp}, what="--image-size")


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; export with --device cpu")


def _named(card: ModelCard, classes: str | os.PathLike) -> ModelCard:
    from alexnet_deploy.data import read_class_names

    names = read_class_names(classes)
    if len(names) != card.num_classes:
        raise UserError(f"--classes {classes} names {len(names)} classes but the model's head has "
                        f"{card.num_classes} outputs: pass the names it was trained with")
    return ModelCard.from_dict({**card.to_dict(), "classes": names}, what=f"--classes {classes}")


def _card_data(card: ModelCard) -> list[str]:
    """The data folders the card names (root and val): an export may read them to calibrate,
    so they are inputs that --out must never replace."""
    found = [card.data.get(key) for key in ("root", "val")]
    return [p for p in found if isinstance(p, str) and p and os.path.exists(p)]


def _export_into(ctx: ExportContext, weights: Any, order: list[str], skipped: list[Skipped]) -> Manifest:
    from alexnet_deploy.checks import Eager, post_export_check
    from alexnet_deploy.machine import library_versions
    from alexnet_deploy.models import save_weights

    copy = ctx.out / WEIGHTS_FILE
    save_weights(ctx.model, ctx.card, copy)
    source = {"source": str(weights)}
    if Path(str(weights)).is_file():
        source["source_sha256"] = sha256_file(weights)
    manifest = Manifest(card=ctx.card, weights={"path": WEIGHTS_FILE, "sha256": sha256_file(copy), **source},
                        skipped=list(skipped), versions=library_versions(), root=ctx.out)
    eager = Eager(model=ctx.model, card=ctx.card, device=ctx.device, calib_data=ctx.calib_data,
                  calib_images=ctx.calib_images)
    for name in order:
        log.info(f"exporting {name} ...")
        for art in _run_exporter(name, ctx):
            art.extra["check"] = post_export_check(manifest, art, eager)
            ctx.artifacts.append(art)
            manifest.artifacts.append(art)
    return manifest


def _run_exporter(name: str, ctx: ExportContext) -> list[Artifact]:
    try:
        return EXPORTERS[name]().export(ctx)
    except UserError as e:
        raise UserError(f"{name} export failed: {e}") from e
    except Exception as e:
        # a full disk, a read-only folder, out of memory: the boundary's own line, exit 1
        oserr = os_error_from(e, ctx.out)
        if oserr is e or expected_failure(e) is not None:
            raise
        if oserr is not None:
            raise oserr from e
        # an upstream exporter's failure is still one clear line to the user
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{name} export failed: {type(e).__name__}: {first}") from e
