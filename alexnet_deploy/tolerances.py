"""Default pass limits per precision (DESIGN.md, comparison rules). Export's smoke check and
validate both read this table, so they can never disagree about what "correct" means."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    atol: float | None  # None: no elementwise limit (int8)
    rtol: float | None
    min_top1_agreement: float  # fraction 0..1
    max_accuracy_drop: float | None  # percentage points; None: not checked

    def override(self, **kw) -> Limits:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


DEFAULT_LIMITS: dict[str, Limits] = {
    "fp32": Limits(atol=1e-4, rtol=1e-3, min_top1_agreement=1.0, max_accuracy_drop=None),
    "fp16": Limits(atol=1e-2, rtol=1e-2, min_top1_agreement=0.995, max_accuracy_drop=None),
    # bf16 keeps 8 significant bits, so its rounding error grows with the logits' magnitude: 1.8e-3 on
    # untrained demo logits (|y| < 2), 0.13 on the trained demo model's (96 % top-1), which no fixed
    # atol covers without being meaningless for the other. Like int8 it is judged on decisions.
    "bf16": Limits(atol=None, rtol=None, min_top1_agreement=0.99, max_accuracy_drop=1.0),
    "int8": Limits(atol=None, rtol=None, min_top1_agreement=0.98, max_accuracy_drop=1.0),
}


def limits_for(precision: str) -> Limits:
    try:
        return DEFAULT_LIMITS[precision]
    except KeyError:
        raise KeyError(f"no default limits for precision {precision!r}") from None
