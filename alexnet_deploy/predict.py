"""`alexnet-deploy predict`: classify image files with an export folder, one artifact, or weights.

Whatever the target, it becomes a runner (built from an export's manifest entry, or from a bare
weights file and the card it carries) and runs through the same runners validate and benchmark
use, with the card's preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.card import printable
from alexnet_deploy.errors import CheckFailed, UserError, memory_error_line
from alexnet_deploy.manifest import Artifact, Manifest, verify_integrity
from alexnet_deploy.runtimes import Runner

WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability), best first


@dataclass
class Target:
    """What predict runs: a runner, not yet active (its card, file and batch range in it), and
    the integrity check its file must pass first (None: nothing beyond containment to check)."""

    runner: Runner
    integrity: Callable[[], str | None] | None = None


def run_predict(target: str | os.PathLike, images: list[str | os.PathLike], top: int = 5,
                backend: str | None = None) -> list[Prediction]:
    """Print and return the top-`top` classes with softmax probabilities for each image."""
    from alexnet_deploy.data import preprocess_files

    if not images:
        raise UserError("give at least one image file to classify")
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    chosen = resolve_target(target, backend)
    runner = chosen.runner
    batch = preprocess_files(list(images), runner.card)
    logits = infer(chosen, batch)
    names = [str(p) for p in images]
    check_finite(logits, names, chosen)
    predictions = top_classes(logits, runner.card.classes, names, top)
    # names of files and classes come from others: control characters are shown escaped
    header = printable(f"{runner.label} {runner.shown}")
    for p in predictions:
        print(f"{printable(p.image)}  ({header})")
        shown = [(printable(name), prob) for name, prob in p.top]
        width = max(len(name) for name, _ in shown)
        for rank, (name, prob) in enumerate(shown, 1):
            print(f"  {rank}. {name:<{width}}  {prob:7.2%}")
    return predictions


def check_finite(logits: np.ndarray, names: list[str], target: Target) -> None:
    """NaN or Inf logits are broken weights or a broken artifact, never an answer."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        first = names[int(np.argmax(bad))]
        raise CheckFailed(f"{printable(target.runner.shown)} produced NaN or Inf logits for "
                          f"{int(bad.sum())} of {len(names)} images (first: {printable(first)}): the weights "
                          "or the artifact are broken; retrain or re-export")


def top_classes(logits: np.ndarray, classes: list[str], names: list[str], k: int) -> list[Prediction]:
    from alexnet_deploy.compare import softmax, topk

    probs = softmax(logits)
    best = topk(logits, k)
    return [Prediction(name, [(classes[j], float(probs[i, j])) for j in best[i]])
            for i, name in enumerate(names)]


def infer(target: Target, batch: np.ndarray) -> np.ndarray:
    """Run `batch` through the target's runner in chunks its batch range allows."""
    problem = target.integrity() if target.integrity else None
    if problem:
        raise UserError(f"{problem} (refusing to load it)")
    runner = target.runner
    hi = runner.batch.max
    try:
        with runner:
            return np.concatenate([runner.infer(np.ascontiguousarray(batch[i:i + hi]))
                                   for i in range(0, len(batch), hi)])
    except (UserError, CheckFailed):
        raise
    except Exception as e:  # any runtime's own failure to load or run the file: one line
        if memory_error_line(e) is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckFailed(f"{printable(runner.shown)} failed to load or run on {runner.name}: "
                          f"{type(e).__name__}: {printable(first)}; re-export it") from e


# ---------------------------------------------------------------------------------------------
# What the user pointed at
# ---------------------------------------------------------------------------------------------
def resolve_target(target: str | os.PathLike, backend: str | None = None) -> Target:
    path = Path(target)
    if not os.path.lexists(path):
        raise UserError(f"{printable(path)} not found: pass an export folder, an artifact inside one, "
                        "or a weights file (.safetensors)")
    if path.name == "manifest.json" and not path.is_dir():
        path = path.parent  # the manifest stands for its export folder
    if (path / "manifest.json").is_file():
        manifest = Manifest.read(path)
        return _in_export(manifest, [manifest.weights_artifact(), *manifest.artifacts], backend, str(path))
    if path.suffix in WEIGHTS_SUFFIXES and find_manifest(path) is None:
        return bare_weights(path, backend)
    manifest, artifact = artifact_in_export(path)
    return _in_export(manifest, [artifact], backend, str(path))


def bare_weights(path: Path, backend: str | None = None) -> Target:
    """A weights file outside any export: the runner that runs weights, built from the file and
    the card it carries. The file has no manifest to check a hash against."""
    from alexnet_deploy.manifest import contained
    from alexnet_deploy.models import read_card

    # the user named this file: where a symlink leads is their choice, but it must be a regular file
    real = Path(os.path.realpath(path))
    real = contained(real.parent, real.name)  # no FIFO, no device, no folder; else a UserError
    what = Artifact(format="weights", precision="fp32", device="cpu", path=real.name)
    cls, _ = _pick([what], backend, str(path))
    return Target(cls(real, read_card(real), None, precision=what.precision, shown=real.name))


def find_manifest(path: Path) -> Path | None:
    """The nearest manifest.json in `path`'s parent folders (artifacts may sit in sub-folders).
    The path as written, not where a symlink leads: a symlinked artifact is inside its folder."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / "manifest.json").is_file():
            return folder
    return None


def artifact_in_export(path: Path) -> tuple[Manifest, Artifact]:
    root = find_manifest(path)
    if root is None:
        raise UserError(f"{printable(path)} is not inside an export folder (no manifest.json above it); predict "
                        "needs the manifest for the model card: pass the export folder or the weights")
    manifest = Manifest.read(root)
    art = manifest.listed(path)
    if art is not None:
        return manifest, art
    raise UserError(f"{printable(path)} is not listed in {root / 'manifest.json'}; listed: "
                    f"{', '.join(printable(a.path) for a in manifest.artifacts) or 'nothing'}")


def _in_export(manifest: Manifest, artifacts: list[Artifact], backend: str | None, what: str) -> Target:
    cls, art = _pick(artifacts, backend, what)
    return Target(cls.from_artifact(manifest, art), lambda: verify_integrity(manifest, art))


def _pick(artifacts: list[Artifact], backend: str | None, what: str) -> tuple[type[Runner], Artifact]:
    """The named backend, or the first runner that can run one of `artifacts` here, with the
    artifact labelled as that runner computes it (openvino-bf16 runs an fp32 file in bf16)."""
    from alexnet_deploy.runtimes import RUNNERS, get_runner

    names = [backend] if backend else list(RUNNERS)
    if backend:
        get_runner(backend)  # unknown names list the valid ones
    reasons = []
    for art in artifacts:
        for name in names:
            cls = RUNNERS[name]
            if not cls.accepts(art):
                continue
            reason = cls.unavailable_reason()
            if reason is None:
                return cls, cls.as_executed(art)
            reasons.append(f"{name}: {reason}")
    if backend and not reasons:
        kinds = sorted({a.format for a in artifacts})
        raise UserError(f"backend {backend} cannot run {what} (it runs {', '.join(RUNNERS[backend].formats)}; "
                        f"this is {', '.join(kinds)})")
    raise UserError(f"no runner can run {what} here: {'; '.join(reasons) or 'no runner accepts it'}")
