"""Export: weights -> one folder of deployment artifacts + manifest.json.

The Exporter interface and the registry of formats live here; each format's exporter lives in its
backend's package (alexnet_deploy/backends/<name>/export.py). `export_all` resolves the requested
names through the registry, exports them in dependency order into a staging folder, loads each
artifact back with its runner to compare it with eager PyTorch, writes the manifest last, and only
then renames the staging folder into place: a failed or killed export never leaves a folder whose
manifest lists a half-written file.
"""

from __future__ import annotations

import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from alexnet_deploy.card import ModelCard
from alexnet_deploy.errors import UserError, expected_failure, os_error_from
from alexnet_deploy.files import (
    check_not_cwd,
    check_output_dir,
    is_our_export,
    output_lock,
    overlap,
    remove_stale_staging,
    sha256_file,
)
from alexnet_deploy.manifest import Artifact, Manifest, Skipped, hash_artifact
from alexnet_deploy.registry import Registry

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

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """None when this format can be exported here for `device`, else why not."""
        return None

    @classmethod
    def check_request(cls, opset: int) -> None:
        """Refuse settings this format cannot honour (one line), before anything is built."""
        return None

    @abstractmethod
    def export(self, ctx: ExportContext) -> list[Artifact]:
        """Write the artifacts under ctx.out (atomically) and describe them."""


WEIGHTS_FILE = "weights.safetensors"


# ---------------------------------------------------------------------------------------------
# Which formats, in which order
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
        return (_ordered([n for n, r in reasons.items() if r is None]),
                [Skipped(n, r) for n, r in reasons.items() if r is not None])
    for n in names:
        if n not in EXPORTERS:
            raise UserError(f"unknown format {n!r}; choose from: {choices} (or 'all')")
    for n in names:
        reason = unavailable_reason(n, device)
        if reason:
            raise UserError(f"cannot export {n} here: {reason}")
    return _ordered(names), []


def _ordered(names: list[str]) -> list[str]:
    """Registry order, except that each format comes after its `requires` (added when missing)
    and after its `after` formats when those are exported too."""
    wanted = set(names)
    stack = list(names)
    while stack:
        for dep in EXPORTERS[stack.pop()].requires:
            if dep not in wanted:
                wanted.add(dep)
                stack.append(dep)
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        cls = EXPORTERS[n]
        for dep in (*cls.requires, *(a for a in cls.after if a in wanted)):
            visit(dep)
        order.append(n)

    for n in EXPORTERS:
        if n in wanted:
            visit(n)
    return order


# ---------------------------------------------------------------------------------------------
# export_all
# ---------------------------------------------------------------------------------------------
def export_all(weights: str | os.PathLike, out: str | os.PathLike, formats: list[str] | None = None,
               max_batch: int = 64, opset: int = 18, calib_data: str | os.PathLike | None = None,
               calib_images: int = 256, device: str = "cpu", force: bool = False,
               show: bool = True, target: str | None = None) -> Manifest:
    """Export `weights` into `out` as `formats` (default 'all'); returns the written manifest.
    With `target` ("cpu"), also time every checked candidate and record the fastest per precision
    in the manifest's `recommended` section (see alexnet_deploy.bench.recommend)."""
    from alexnet_deploy.calibration import resolve_calib_data
    from alexnet_deploy.manifest import MAX_BATCH
    from alexnet_deploy.model import load_weights

    if not 1 <= max_batch <= MAX_BATCH:
        raise UserError(f"--max-batch must be between 1 and {MAX_BATCH}, got {max_batch}")
    if calib_images < 1:
        raise UserError(f"--calib-images must be at least 1, got {calib_images}")
    _check_device(device)
    _check_target(target)
    order, skipped = plan_formats(formats, device)
    for name in order:
        EXPORTERS[name].check_request(opset)
    out = Path(out)
    # Where the result goes is checked before anything is loaded or built.
    check_output_dir(out, staged=True)
    check_not_cwd(out)
    model, card = load_weights(weights, device=device)
    with output_lock(out):  # held through the final rename: one writer per --out
        remove_stale_staging(out, say=print if show else (lambda msg: None))
        _check_out(out, force, weights, calib_data, *_card_data(card))
        needs_calib = any(EXPORTERS[n].needs_calibration for n in order)
        calib = resolve_calib_data(card, calib_data) if needs_calib else None
        full = Path(os.path.abspath(out))
        stage = full.parent / f".{full.name}.partial-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)  # our own pid's: nobody else's
        stage.mkdir(parents=True)
        try:
            ctx = ExportContext(model=model, card=card, out=stage, max_batch=max_batch, opset=opset,
                                device=device, calib_data=calib, calib_images=calib_images)
            manifest = _export_into(ctx, weights, order, skipped, show)
            if target:
                _recommend_into(manifest, ctx, target, show)
            manifest.write(stage)  # last: the manifest only ever lists finished, checked files
            _replace_dir(stage, full)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    manifest.root = out
    if show:
        print_summary(manifest, out)
        if manifest.recommended:
            from alexnet_deploy.bench.recommend import print_recommended

            print_recommended(manifest.recommended)
    return manifest


def _check_target(target: str | None) -> None:
    from alexnet_deploy.bench.recommend import TARGETS

    if target is not None and target not in TARGETS:
        raise UserError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")


def _recommend_into(manifest: Manifest, ctx: ExportContext, target: str, show: bool) -> None:
    """Time the candidates in the staging folder (the benchmark reads its manifest from disk)."""
    import sys

    from alexnet_deploy.bench.recommend import recommend

    manifest.write(ctx.out)
    manifest.root = ctx.out
    if show:
        print(f"timing the {target} candidates (--target {target}) ...", flush=True)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if show else (lambda msg: None)
    recommend(manifest, ctx, target, log=log)


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; export with --device cpu")


def _card_data(card: Any) -> list[str]:
    """The data folders the card names (root and val): an export may read them to calibrate,
    so they are inputs that --out must never replace."""
    data = getattr(card, "data", None)
    if data is not None and not isinstance(data, dict):
        data = getattr(data, "model_dump", lambda: {})()
    found = []
    for key in ("root", "val"):
        value = (data or {}).get(key)
        if isinstance(value, str) and value and os.path.exists(value):
            found.append(value)
    return found


def _check_out(out: Path, force: bool, *inputs: Any) -> None:
    """--out must not be, hold or lie inside anything the export reads, and --force replaces only
    an export folder of ours (or an empty one): never a user's data."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    for p in inputs:
        if p is None or not os.path.exists(str(p)):
            continue  # 'torchvision' and other names that are not paths
        how = overlap(out, p)
        if how is not None:
            raise UserError(f"--out {out} {how} {p}, which this export reads; choose another --out "
                            "(an export never replaces its own inputs)")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
        if not is_our_export(out):
            raise UserError(f"--force replaces only an export folder (one holding this tool's "
                            f"manifest.json); {out} is not one: choose another --out")


def _replace_dir(stage: Path, out: Path) -> None:
    """Put the finished folder at `out`; an old `out` (checked to be ours) is moved aside first,
    then deleted. A kill between the two renames leaves `.NAME.old-PID`, which the next run puts
    back (remove_stale_staging)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(ctx: ExportContext, weights: Any, order: list[str], skipped: list[Skipped],
                 show: bool) -> Manifest:
    from alexnet_deploy.machine import library_versions
    from alexnet_deploy.model import save_weights

    copy = ctx.out / WEIGHTS_FILE
    save_weights(ctx.model, ctx.card, copy)
    source = {"source": str(weights)}
    if Path(str(weights)).is_file():
        source["source_sha256"] = sha256_file(weights)
    manifest = Manifest(card=ctx.card, weights={"path": WEIGHTS_FILE, "sha256": sha256_file(copy), **source},
                        skipped=list(skipped), versions=library_versions(), root=ctx.out)
    for name in order:
        if show:
            print(f"exporting {name} ...", flush=True)
        for art in _run_exporter(name, ctx):
            art.extra["check"] = check_artifact(manifest, art, ctx)
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


# ---------------------------------------------------------------------------------------------
# The check after every artifact
# ---------------------------------------------------------------------------------------------
def pick_runner(artifact: Artifact) -> tuple[type | None, str | None]:
    """The first available runner that accepts the artifact, preferring its device; else the
    reason none can run it."""
    from alexnet_deploy.runtimes import RUNNERS

    accepting = [cls for cls in RUNNERS.values() if cls.accepts(artifact)]
    if not accepting:
        return None, f"no runner executes {artifact.format} artifacts"
    for cls in sorted(accepting, key=lambda c: c.device != artifact.device):
        if cls.unavailable_reason() is None:
            return cls, None
    return None, "; ".join(f"{c.name}: {c.unavailable_reason()}" for c in accepting)


INT8_SMOKE_MIN_COSINE = 0.95


def check_artifact(manifest: Manifest, art: Artifact, ctx: ExportContext) -> dict[str, Any]:
    """Run a batch of 2 through the artifact's runner and compare with eager within the
    precision's limits (int8: logits' direction only, see compare_with_eager). A failure is a UserError naming the format."""
    runner_cls, reason = pick_runner(art)
    if runner_cls is None:
        return {"status": "skipped", "reason": reason}
    result = compare_with_eager(manifest, art, runner_cls, ctx)
    if result["failures"]:
        raise UserError(f"{art.format} {art.precision} ({art.path}) failed its check on "
                        f"{runner_cls.name} against eager PyTorch: {'; '.join(result['failures'])}")
    del result["failures"]
    return result


def check_inputs(art: Artifact, ctx: ExportContext):
    """A seeded batch of 2. int8 artifacts get two held-out calibration images instead of noise:
    their activation ranges are calibrated on real images, and Gaussian noise (out of that
    distribution, clipped) flips near-tie decisions of small demo models without saying anything
    about the images the artifact is for."""
    import torch

    n = min(2, art.batch.get("max", 2))
    if art.precision != "int8":
        return ctx.sample(n)
    from alexnet_deploy.calibration import load_calibration

    held = load_calibration(ctx.card, ctx.calib_data, ctx.calib_images).heldout[:n]
    return torch.from_numpy(np.ascontiguousarray(held)).to(ctx.device) if len(held) == n else ctx.sample(n)


def compare_with_eager(manifest: Manifest, art: Artifact, runner_cls: type, ctx: ExportContext
                       ) -> dict[str, Any]:
    """The post-export check of one (runner, artifact): a seeded batch of 2 against eager within
    the limits of `art.precision`; "failures" lists what was out of limits (empty: passed)."""
    import torch

    from alexnet_deploy.tolerances import limits_for

    x = check_inputs(art, ctx)
    from alexnet_deploy.backends.torch.util import no_tf32

    with torch.no_grad(), no_tf32():
        ref = ctx.model(x).float().cpu().numpy()
    started = time.perf_counter()
    with runner_cls.from_artifact(manifest, art) as runner:
        y = runner.infer(x.cpu().numpy())
    limits = limits_for(art.precision)
    result: dict[str, Any] = {
        "status": "ok", "runner": runner_cls.name, "batch": int(x.shape[0]),
        "top1_agreement": float((y.argmax(1) == ref.argmax(1)).mean()),
        "max_abs": float(np.abs(y - ref).max()), "atol": limits.atol, "rtol": limits.rtol,
        "seconds": round(time.perf_counter() - started, 3)}
    failures = []
    if limits.atol is not None:
        if not np.allclose(y, ref, atol=limits.atol, rtol=limits.rtol):
            failures.append(f"max abs error {result['max_abs']:.3g} exceeds atol {limits.atol} + rtol {limits.rtol}")
        if result["top1_agreement"] < limits.min_top1_agreement:
            failures.append(f"top-1 agreement {result['top1_agreement']:.0%} is below "
                            f"{limits.min_top1_agreement:.1%}")
    else:
        # No elementwise limit (int8): two images cannot measure a 98% agreement rate (one near-tie
        # flip reads as 50%), so the smoke check asks whether the logits point the same way.
        # Broken quantization (wrong scales, zero points, channel order) lands far below this;
        # decision-level limits are validate's job, on enough images to mean something.
        cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        result["min_cosine"] = float(cos.min())
        if result["min_cosine"] < INT8_SMOKE_MIN_COSINE:
            failures.append(f"logits cosine similarity {result['min_cosine']:.3f} is below "
                            f"{INT8_SMOKE_MIN_COSINE} (quantization looks broken)")
    result["failures"] = failures
    return result


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def check_text(check: dict[str, Any]) -> str:
    if check.get("status") != "ok":
        return f"not run: {check.get('reason')}"
    if check.get("atol") is None:
        return f"ok {check['runner']}, cosine {check.get('min_cosine', float('nan')):.3f}"
    return f"ok {check['runner']}, max abs {check['max_abs']:.0e}"


def print_summary(manifest: Manifest, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: one row per artifact, not 80-column wrapping
        console = Console(width=160)
    table = Table(title=f"exported to {out}")
    for col in ("format", "precision", "file", "MB", "seconds", "check"):
        table.add_column(col, justify="right" if col in ("MB", "seconds") else "left",
                         no_wrap=col != "check")
    for a in manifest.artifacts:
        table.add_row(a.format, a.precision, a.path, f"{a.bytes / 1e6:.1f}", f"{a.export_s:.1f}",
                      check_text(a.extra.get("check", {})))
    console.print(table)
    for s in manifest.skipped:
        console.print(f"skipped {s.format}: {s.reason}")
