"""Comparison metrics between a runner's logits and the reference's: pure numpy, no runtimes.

Kept apart from running (as Polygraphy keeps its comparators apart from its runners) so the
rules can be unit-tested with hand-built arrays, and reused by export's smoke check or a notebook.

All arithmetic is done in float64 on float32 inputs, so the reported figures are not themselves
blurred by float32 rounding; `min_atol` is exact for that float64 rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from alexnet_deploy.tolerances import Limits


@dataclass
class Elementwise:
    """How far `y` is from `ref`, element by element."""

    max_abs: float
    max_rel: float  # over elements whose reference is non-zero
    p99_abs: float
    min_atol: float  # the smallest atol with which every element passes at `rtol`
    cosine: float  # the worst (smallest) per-sample cosine similarity
    rtol: float  # the rtol `min_atol` was computed for
    finite: bool  # False when y holds NaN or inf: everything else is then meaningless


@dataclass
class Decisions:
    """Whether `y` makes the same calls as `ref`: fractions of samples, 0..1."""

    top1_agreement: float
    top5_overlap: float
    samples: int


def _pair(y: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        raise ValueError(f"output shape {y.shape} differs from the reference's {ref.shape}")
    if y.ndim != 2:
        raise ValueError(f"expected (samples, classes) logits, got shape {y.shape}")
    return y, ref


def allclose(y: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> bool:
    """numpy.allclose's rule, |y - ref| <= atol + rtol * |ref|, in float64; NaN never passes."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return bool(np.all(np.abs(y - ref) <= atol + rtol * np.abs(ref)))


def min_atol(y: np.ndarray, ref: np.ndarray, rtol: float) -> float:
    """The smallest atol for which `allclose(y, ref, atol, rtol)` holds (inf if y is not finite).

    Solving the rule for atol gives max(|y - ref| - rtol * |ref|); float64 rounding can leave
    that an ulp off for the element that sets it, so step to the exact boundary of the rule.
    """
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.size == 0:
        return 0.0
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(ref))):
        return float("inf")
    diff, scale = np.abs(y - ref), rtol * np.abs(ref)
    atol = max(float(np.max(diff - scale)), 0.0)
    def holds(a: float) -> bool:
        return bool(np.all(diff <= a + scale))

    while not holds(atol):
        atol = float(np.nextafter(atol, np.inf))
    while atol > 0 and holds(lower := float(np.nextafter(atol, 0.0))):
        atol = lower
    return atol


def elementwise(y: np.ndarray, ref: np.ndarray, rtol: float = 0.0) -> Elementwise:
    y, ref = _pair(y, ref)
    finite = bool(np.all(np.isfinite(y)))
    if y.size == 0:
        return Elementwise(0.0, 0.0, 0.0, 0.0, 1.0, rtol, finite)
    if not finite:
        nan = float("nan")
        return Elementwise(nan, nan, nan, float("inf"), nan, rtol, False)
    diff, mag = np.abs(y - ref), np.abs(ref)
    nonzero = mag > 0
    max_rel = float(np.max(diff[nonzero] / mag[nonzero])) if nonzero.any() else 0.0
    return Elementwise(
        max_abs=float(diff.max()),
        max_rel=max_rel,
        p99_abs=float(np.percentile(diff, 99)),
        min_atol=min_atol(y, ref, rtol),
        cosine=float(cosine_similarity(y, ref).min()),
        rtol=rtol,
        finite=True,
    )


def cosine_similarity(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two (samples, classes) arrays; two zero rows count as 1."""
    y, ref = _pair(y, ref)
    dot = np.sum(y * ref, axis=1)
    norms = np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1)
    both_zero = norms == 0
    out = np.divide(dot, norms, out=np.zeros_like(dot), where=~both_zero)
    out[both_zero & (np.abs(y).sum(1) == np.abs(ref).sum(1))] = 1.0
    return out


def rel_l2(y: np.ndarray, ref: np.ndarray) -> float:
    """||y - ref|| / ||ref|| in float64 (0 when both are zero, inf when only ref is)."""
    diff = float(np.linalg.norm(np.asarray(y, np.float64) - np.asarray(ref, np.float64)))
    norm = float(np.linalg.norm(np.asarray(ref, np.float64)))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, best first (ties: the lower index first)."""
    k = min(k, logits.shape[1])
    return np.argsort(-np.asarray(logits, np.float64), axis=1, kind="stable")[:, :k]


def decisions(y: np.ndarray, ref: np.ndarray, k: int = 5) -> Decisions:
    y, ref = _pair(y, ref)
    if len(y) == 0:
        return Decisions(1.0, 1.0, 0)
    top1 = float(np.mean(topk(y, 1)[:, 0] == topk(ref, 1)[:, 0]))
    ty, tr = topk(y, k), topk(ref, k)
    overlap = np.mean([len(set(a) & set(b)) / tr.shape[1] for a, b in zip(ty, tr, strict=True)])
    return Decisions(top1, float(overlap), len(y))


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float | None:
    """Fraction of samples whose label is among the k best logits; None without labels."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return None
    hits = (topk(logits, k) == labels[:, None]).any(axis=1)
    return float(hits.mean())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@dataclass
class Verdict:
    """The figures of one comparison and the limits it failed (empty `failures`: passed)."""

    elementwise: Elementwise
    decisions: Decisions
    accuracy_top1: float | None
    accuracy_top5: float | None
    reference_accuracy_top1: float | None
    reference_accuracy_top5: float | None
    accuracy_drop: float | None  # reference top-1 minus this top-1, a fraction (0.01 = one point)
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return asdict(self)


def judge(y: np.ndarray, ref: np.ndarray, limits: Limits, *, decide: slice | None = None,
          labels: np.ndarray | None = None) -> Verdict:
    """Compare `y` with `ref` under `limits`.

    Elementwise figures cover every row. Decisions and accuracy cover the rows `decide` selects
    (the real images, when there are some: agreement on random noise says little about the
    task), and accuracy uses `labels` for those rows.
    """
    rtol = limits.rtol if limits.rtol is not None else 0.0
    ew = elementwise(y, ref, rtol)
    rows = decide if decide is not None else slice(None)
    dec = decisions(np.asarray(y)[rows], np.asarray(ref)[rows])
    acc = ref_acc = (None, None)
    drop = None
    if labels is not None and len(labels):
        acc = accuracy(y[rows], labels, 1), accuracy(y[rows], labels, 5)
        ref_acc = accuracy(ref[rows], labels, 1), accuracy(ref[rows], labels, 5)
        drop = ref_acc[0] - acc[0]
    return Verdict(ew, dec, *acc, *ref_acc, drop, failures(ew, dec, drop, limits))


# A difference of two accuracies carries float rounding (1.0 - 0.99 is 0.010000000000000009): a drop
# of exactly the limit must pass "at most".
ROUNDING = 1e-9


def failures(ew: Elementwise, dec: Decisions, drop: float | None, limits: Limits) -> list[str]:
    """One readable line per limit that was not met."""
    out = []
    if not ew.finite:
        out.append("output holds NaN or inf")
        return out
    if limits.atol is not None and ew.min_atol > limits.atol:
        out.append(f"elementwise: max |y-ref| {ew.max_abs:.3g} exceeds atol {limits.atol:g} + "
                   f"rtol {ew.rtol:g}*|ref| (it would need atol {ew.min_atol:.3g})")
    if limits.min_cosine is not None and ew.cosine < limits.min_cosine:
        out.append(f"logits cosine similarity {ew.cosine:.3f} is below {limits.min_cosine:g} (the "
                   "artifact computes something else: broken quantization or conversion)")
    if limits.min_top1_agreement is not None and dec.top1_agreement < limits.min_top1_agreement:
        out.append(f"top-1 agreement {dec.top1_agreement:.2%} is below {limits.min_top1_agreement:.2%} "
                   f"({round((1 - dec.top1_agreement) * dec.samples)} of {dec.samples} differ)")
    if limits.max_accuracy_drop is not None and drop is not None and drop > limits.max_accuracy_drop + ROUNDING:
        # shown in points (a fraction of 0.01 is one point), the unit people read accuracy in
        out.append(f"top-1 accuracy drops {drop * 100:.2f} points, more than {limits.max_accuracy_drop * 100:g}")
    return out
