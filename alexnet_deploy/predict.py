"""`alexnet-deploy predict`: classify image files with an export folder, one artifact, or weights.

Whatever the target, it becomes (manifest, artifact, runner) and runs through the same runners
validate and benchmark use, with the card's preprocessing; weights get a manifest built in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Artifact, Manifest, verify_integrity

WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability), best first


@dataclass
class Target:
    """What predict runs: the manifest gives the card, the artifact the file, runner the backend."""

    manifest: Manifest
    artifact: Artifact
    runner: str


def run_predict(target: str | os.PathLike, images: list[str | os.PathLike], top: int = 5,
                backend: str | None = None) -> list[Prediction]:
    """Print and return the top-`top` classes with softmax probabilities for each image."""
    from alexnet_deploy.data import preprocess_files

    if not images:
        raise UserError("give at least one image file to classify")
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    chosen = resolve_target(target, backend)
    batch = preprocess_files(list(images), chosen.manifest.card)
    logits = infer(chosen, batch)
    predictions = top_classes(logits, chosen.manifest.card.classes, [str(p) for p in images], top)
    header = f"{chosen.runner} [{chosen.artifact.precision}] {chosen.artifact.path}"
    for p in predictions:
        print(f"{p.image}  ({header})")
        width = max(len(name) for name, _ in p.top)
        for rank, (name, prob) in enumerate(p.top, 1):
            print(f"  {rank}. {name:<{width}}  {prob:7.2%}")
    return predictions


def top_classes(logits: np.ndarray, classes: list[str], names: list[str], k: int) -> list[Prediction]:
    from alexnet_deploy.compare import softmax, topk

    probs = softmax(logits)
    best = topk(logits, k)
    return [Prediction(name, [(classes[j], float(probs[i, j])) for j in best[i]])
            for i, name in enumerate(names)]


def infer(target: Target, batch: np.ndarray) -> np.ndarray:
    """Run `batch` through the target's runner in chunks its artifact's batch range allows."""
    from alexnet_deploy.runtimes import get_runner

    problem = verify_integrity(target.manifest, target.artifact)
    if problem:
        raise UserError(f"{problem} (refusing to load it)")
    hi = max(1, target.artifact.batch.get("max", 1))
    with get_runner(target.runner)(target.manifest, target.artifact) as runner:
        return np.concatenate([runner.infer(np.ascontiguousarray(batch[i:i + hi]))
                               for i in range(0, len(batch), hi)])


# ---------------------------------------------------------------------------------------------
# What the user pointed at
# ---------------------------------------------------------------------------------------------
def resolve_target(target: str | os.PathLike, backend: str | None = None) -> Target:
    path = Path(target)
    if not path.exists():
        raise UserError(f"{path} not found: pass an export folder, an artifact inside one, "
                        "or a weights file (.safetensors)")
    if (path / "manifest.json").is_file():
        manifest = Manifest.read(path)
        return _pick(manifest, [manifest.weights_artifact(), *manifest.artifacts], backend, str(path))
    if path.is_file() and path.suffix in WEIGHTS_SUFFIXES and find_manifest(path) is None:
        manifest = weights_manifest(path)
        return _pick(manifest, [manifest.weights_artifact()], backend, str(path))
    manifest, artifact = artifact_in_export(path)
    return _pick(manifest, [artifact], backend, str(path))


def weights_manifest(path: Path) -> Manifest:
    """A manifest held in memory for a bare weights file, so the torch-eager runner runs it as
    it runs an export's weights (integrity check included)."""
    from alexnet_deploy.model import read_card
    from alexnet_deploy.utils import sha256_file

    card = read_card(path)
    manifest = Manifest(card=card, weights={"path": path.name, "sha256": sha256_file(path)})
    manifest.root = path.parent
    return manifest


def find_manifest(path: Path) -> Path | None:
    """The nearest manifest.json in `path`'s parent folders (artifacts may sit in sub-folders)."""
    for folder in path.resolve().parents:
        if (folder / "manifest.json").is_file():
            return folder
    return None


def artifact_in_export(path: Path) -> tuple[Manifest, Artifact]:
    root = find_manifest(path)
    if root is None:
        raise UserError(f"{path} is not inside an export folder (no manifest.json above it); predict "
                        "needs the manifest for the model card: pass the export folder or the weights")
    manifest = Manifest.read(root)
    wanted = path.resolve()
    for art in [manifest.weights_artifact(), *manifest.artifacts]:
        listed = manifest.path_of(art).resolve()
        if listed == wanted or listed in wanted.parents:
            return manifest, art
    raise UserError(f"{path} is not listed in {root / 'manifest.json'}; listed: "
                    f"{', '.join(a.path for a in manifest.artifacts) or 'nothing'}")


def _pick(manifest: Manifest, artifacts: list[Artifact], backend: str | None, what: str) -> Target:
    """The named backend, or the first runner that can run one of `artifacts` here."""
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
                # labelled as the runner computes it (openvino-bf16 runs an fp32 file in bf16)
                return Target(manifest, cls.as_executed(art), name)
            reasons.append(f"{name}: {reason}")
    if backend and not reasons:
        kinds = sorted({a.format for a in artifacts})
        raise UserError(f"backend {backend} cannot run {what} (it runs {', '.join(RUNNERS[backend].formats)}; "
                        f"this is {', '.join(kinds)})")
    raise UserError(f"no runner can run {what} here: {'; '.join(reasons) or 'no runner accepts it'}")
