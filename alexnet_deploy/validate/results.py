"""What validate produces: serialisable results, one per (runner, artifact), and the report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from alexnet_deploy.checks import CheckResult

OK, FAIL, SKIPPED = "OK", "FAIL", "SKIPPED"


@dataclass
class ValidationResult:
    """One runner on one artifact. Figures are None when it was not run (SKIPPED, integrity).
    Every accuracy and agreement is a fraction 0..1; renderers show percentages."""

    backend: str
    format: str
    precision: str
    device: str
    artifact: str  # path relative to the export folder
    status: str = SKIPPED
    passed: bool | None = None  # None: not checked (SKIPPED)
    reason: str | None = None  # why it FAILED or was SKIPPED, in one line
    max_abs: float | None = None
    max_rel: float | None = None
    p99_abs: float | None = None
    min_atol: float | None = None  # the smallest atol that would have passed at the limits' rtol
    cosine: float | None = None  # the worst per-sample cosine similarity
    top1_agreement: float | None = None  # fraction 0..1
    top5_overlap: float | None = None  # fraction 0..1
    accuracy_top1: float | None = None  # fraction 0..1, on the labelled images
    accuracy_top5: float | None = None
    reference_accuracy_top1: float | None = None
    reference_accuracy_top5: float | None = None
    accuracy_drop: float | None = None  # fraction 0..1 (0.01 = one point), reference minus this runner
    limits: dict[str, Any] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    images: int = 0  # real, labelled images
    random_inputs: int = 0
    load_s: float | None = None
    infer_s: float | None = None
    failures: list[str] = field(default_factory=list)
    # the precision it computed in, measured from its error signature (validate/precision.py; None:
    # not measured), with the errors against float64 it was read from
    computes_in: str | None = None
    precision_errors: dict[str, float] = field(default_factory=dict)
    precision_note: str | None = None
    # validate --layers: the first module past its per-layer limit (None: none, or not compared),
    # every module's figures, and why layers were not compared when they were asked for
    first_divergence: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None
    layers_note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} [{self.precision}] {self.artifact}"

    def add_failure(self, message: str) -> None:
        self.failures.append(message)
        self.status, self.passed = FAIL, False
        self.reason = "; ".join(self.failures)

    def fail(self, message: str) -> None:
        self.status, self.passed, self.reason = FAIL, False, message
        self.failures = [message]

    def take(self, check: CheckResult) -> None:
        """Fill in the figures and the verdict of a check run on the comparison path."""
        self.load_s, self.infer_s = check.load_s, check.infer_s
        v = check.verdict
        if v is not None:
            for key in ("max_abs", "max_rel", "p99_abs", "min_atol", "cosine"):
                setattr(self, key, getattr(v.elementwise, key))
            self.top1_agreement, self.top5_overlap = v.decisions.top1_agreement, v.decisions.top5_overlap
            for key in ("accuracy_top1", "accuracy_top5", "reference_accuracy_top1",
                        "reference_accuracy_top5", "accuracy_drop"):
                setattr(self, key, getattr(v, key))
        self.failures = list(check.failures)
        self.passed = check.passed
        self.status = OK if check.passed else FAIL
        self.reason = None if check.passed else "; ".join(check.failures)


@dataclass
class ValidationReport:
    passed: bool
    export_dir: str
    data: str | None  # the labelled images' folder, None when only random inputs were used
    images: int
    random_inputs: int
    seed: int
    reference: dict[str, Any]
    results: list[ValidationResult]
    summary: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    labels_by_position: dict[str, str] | None = None  # folder class -> card name (generic card names)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def failed(self) -> list[ValidationResult]:
        return [r for r in self.results if r.status == FAIL]


@dataclass
class Inputs:
    """One batch shared by every runner: real images first, then random tensors."""

    batch: np.ndarray
    labels: np.ndarray  # for the first `real` rows
    real: int
    source: str | None
    by_position: dict[str, str] | None = None  # data.LabelledBatch.by_position


def json_safe(obj: Any) -> Any:
    """NaN and inf are not JSON: they become null (the failure line says what happened)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
