"""THE comparison path: one artifact, run by one runner, against the reference, judged by
compare.judge within a row of the limits table (tolerances.py).

    check_artifact     integrity, load, run in a cycle of batch sizes, shape / NaN, judge
    smoke_check        the same on a batch of 2 against an eager model in memory ("smoke" limits)
    post_export_check  export's check of each artifact it writes: the first runner that can run it;
                       a failure is CheckFailed (exit 1) naming the artifact

validate calls check_artifact on many real images; export and `recommend` (for the runners export
did not use) call the smoke check; so no two commands can disagree about what "correct" means.
Torch is imported only inside the functions that run the eager model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alexnet_deploy.card import ModelCard, printable
from alexnet_deploy.compare import Verdict, judge
from alexnet_deploy.errors import CheckFailed, exception_line
from alexnet_deploy.manifest import CALIBRATED, Artifact, Manifest, verify_integrity
from alexnet_deploy.tolerances import Limits, limits_for

if TYPE_CHECKING:
    from torch import nn

SMOKE_BATCH = 2  # images per smoke check: enough to catch a broken file, cheap after every artifact
SMOKE_SEED = 0


@dataclass
class CheckResult:
    """One runner on one artifact against the reference. `verdict` is None when the outputs never
    reached a comparison (integrity, a load or run failure, a wrong shape, NaN / Inf)."""

    runner: str
    limits: Limits
    samples: int  # rows fed to the runner
    failures: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    load_s: float | None = None  # None: never loaded
    infer_s: float | None = None
    outputs: np.ndarray | None = field(default=None, repr=False)  # the logits judged (not recorded)

    @property
    def passed(self) -> bool:
        return not self.failures

    def fail(self, message: str) -> CheckResult:
        self.failures = [message]
        return self

    def record(self) -> dict[str, Any]:
        """The brief, JSON-ready record export keeps in the manifest (artifact.extra["check"])."""
        out: dict[str, Any] = {"status": "ok" if self.passed else "failed", "runner": self.runner,
                               "batch": self.samples}
        if self.verdict is not None:
            ew, dec = self.verdict.elementwise, self.verdict.decisions
            out.update(max_abs=ew.max_abs, cosine=ew.cosine, top1_agreement=dec.top1_agreement)
        if self.load_s is not None and self.infer_s is not None:
            out["seconds"] = round(self.load_s + self.infer_s, 3)
        out["limits"] = asdict(self.limits)
        return out


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------
def resolve_limits(precision: str, overrides: dict[str, float | None], check: str = "validate") -> Limits:
    """The table's row with the user's overrides (None: keep the default). atol / rtol overrides
    tighten or loosen an elementwise check; they never add one where the precision has none."""
    base = limits_for(precision, check)
    kw = dict(overrides)
    if base.atol is None:
        kw.pop("atol", None)
        kw.pop("rtol", None)
    return base.override(**kw)


# ---------------------------------------------------------------------------------------------
# One runner on one artifact
# ---------------------------------------------------------------------------------------------
def check_artifact(manifest: Manifest, artifact: Artifact, runner_cls: type, batch: np.ndarray,
                   reference: np.ndarray, limits: Limits, *, batch_sizes: Sequence[int] | None = None,
                   decide: slice | None = None, labels: np.ndarray | None = None,
                   threads: int | None = None, verify: bool = True) -> CheckResult:
    """Integrity first (`verify`), then run `batch` through `runner_cls` in a cycle of
    `batch_sizes` (default: all at once) and judge the logits against `reference`. Decisions and
    accuracy cover the rows `decide` selects, with `labels` for them (see compare.judge)."""
    result = CheckResult(runner_cls.name, limits, samples=len(batch))
    problem = verify_integrity(manifest, artifact) if verify else None
    if problem:
        return result.fail(problem)
    try:
        runner = runner_cls.from_artifact(manifest, artifact, threads=threads)
        outputs = _run(result, runner, batch, list(batch_sizes or [len(batch)]))
    except Exception as e:  # any runtime's failure to load or run is this artifact's failure
        return result.fail(exception_line(e))
    problem = output_problem(outputs, reference)
    if problem:
        return result.fail(problem)
    result.outputs = outputs
    result.verdict = judge(outputs, reference, limits, decide=decide, labels=labels)
    result.failures = list(result.verdict.failures)
    return result


def _run(result: CheckResult, runner: Any, batch: np.ndarray, sizes: list[int]) -> np.ndarray:
    """The runner's logits for `batch`; load and inference seconds recorded on `result`."""
    t0 = time.perf_counter()
    with runner:
        t1 = time.perf_counter()
        result.load_s = t1 - t0
        outs = [runner.infer(np.ascontiguousarray(batch[s])) for s in split_batches(len(batch), sizes)]
        result.infer_s = time.perf_counter() - t1
    return np.concatenate(outs)


def output_problem(outputs: np.ndarray, reference: np.ndarray) -> str | None:
    """What makes the outputs impossible to compare (a wrong shape, NaN / Inf), or None."""
    if outputs.shape != reference.shape:
        return f"output shape {outputs.shape} differs from the reference's {reference.shape}"
    if not np.isfinite(outputs).all():
        bad = int((~np.isfinite(outputs).all(axis=1)).sum())
        return f"NaN or Inf logits for {bad} of {len(outputs)} inputs"
    return None


def split_batches(n: int, sizes: Sequence[int]) -> list[slice]:
    """Consecutive slices of 0..n whose lengths cycle through `sizes` (the last may be short)."""
    out, start, i = [], 0, 0
    while start < n:
        out.append(slice(start, min(start + sizes[i % len(sizes)], n)))
        start += sizes[i % len(sizes)]
        i += 1
    return out


def pick_runner(artifact: Artifact) -> tuple[type | None, str | None]:
    """The first available runner (registry order) that accepts the artifact, preferring its
    device; else None and the reason none can run it."""
    from alexnet_deploy.runtimes import RUNNERS

    accepting = [cls for cls in RUNNERS.values() if cls.accepts(artifact)]
    if not accepting:
        return None, f"no runner executes {artifact.format} artifacts"
    for cls in sorted(accepting, key=lambda c: c.device != artifact.device):
        if cls.unavailable_reason() is None:
            return cls, None
    return None, "; ".join(f"{c.name}: {c.unavailable_reason()}" for c in accepting)


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------
def reference_model(manifest: Manifest) -> nn.Module:
    """torch eager fp32 on the export's own copy of the weights: integrity-checked, then loaded."""
    from alexnet_deploy.models import load_weights

    weights = manifest.weights_artifact()
    problem = verify_integrity(manifest, weights)
    if problem:
        raise CheckFailed(f"the reference weights fail their check, nothing can be compared against "
                          f"them: {problem}")
    model, _ = load_weights(manifest.path_of(weights))
    return model


@dataclass
class Eager:
    """The smoke check's reference: an eval-mode model in memory (export's own, or one loaded from
    an export's weights) and where int8 artifacts find their held-out calibration images."""

    model: nn.Module
    card: ModelCard
    device: str = "cpu"
    calib_data: Path | None = None
    calib_images: int = 256
    _heldout: np.ndarray | None = field(default=None, init=False, repr=False)

    def inputs(self, artifact: Artifact) -> np.ndarray:
        """A seeded batch of 2. Calibrated artifacts (int8, int4w-a8) get two held-out calibration
        images instead of noise: their activation ranges are calibrated on real images, and Gaussian
        noise (out of that distribution, clipped) flips near-tie decisions of small demo models
        without saying anything about the images the artifact is for."""
        n = min(SMOKE_BATCH, artifact.batch.max)
        if artifact.precision in CALIBRATED:
            held = self.heldout()[:n]
            if len(held) == n:
                return np.ascontiguousarray(held, np.float32)
        return seeded_noise(n, self.card.input.shape)

    def heldout(self) -> np.ndarray:
        """The calibration set's held-out images, loaded once per export."""
        if self._heldout is None:
            from alexnet_deploy.calibration import load_calibration

            self._heldout = load_calibration(self.card, self.calib_data, self.calib_images).heldout
        return self._heldout

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from alexnet_deploy.backends.torch.util import no_tf32

        with torch.no_grad(), no_tf32():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


def seeded_noise(n: int, shape: Sequence[int], seed: int = SMOKE_SEED) -> np.ndarray:
    """N(0, 1) inputs from torch's generator (the same tensors on every machine and device)."""
    import torch

    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).numpy()


# ---------------------------------------------------------------------------------------------
# The smoke check
# ---------------------------------------------------------------------------------------------
def smoke_check(manifest: Manifest, artifact: Artifact, runner_cls: type, eager: Eager, *,
                threads: int | None = None, verify: bool = True) -> CheckResult:
    """`artifact` on `runner_cls` against `eager` on a batch of 2, within the smoke limits of the
    precision it computes in."""
    batch = eager.inputs(artifact)
    return check_artifact(manifest, artifact, runner_cls, batch, eager.logits(batch),
                          limits_for(artifact.precision, "smoke"), threads=threads, verify=verify)


def post_export_check(manifest: Manifest, artifact: Artifact, eager: Eager) -> dict[str, Any]:
    """Export's check of an artifact it has just written, with the first runner that can run it.
    Returns the record kept in the manifest; a failure raises CheckFailed naming the artifact."""
    runner_cls, reason = pick_runner(artifact)
    if runner_cls is None:
        return {"status": "skipped", "reason": reason}
    # export hashed the file a moment ago (ExportContext.artifact): no second read of it
    result = smoke_check(manifest, artifact, runner_cls, eager, verify=False)
    if not result.passed:
        raise CheckFailed(f"{artifact.format} {artifact.precision} ({printable(artifact.path)}) failed its "
                          f"check on {runner_cls.name} against eager PyTorch: {'; '.join(result.failures)}")
    return result.record()
