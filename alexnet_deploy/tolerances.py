"""The limits table: what "correct" means, per check and precision (DESIGN.md, comparison rules).

Two checks read it through `limits_for`, both judged by the one comparison path (checks.py):
  validate  many real images: elementwise limits, decision agreement, accuracy drop;
  smoke     export's post-export check on a batch of 2 (see SMOKE_LIMITS for why it differs).
Every figure here is a fraction (0..1), never a percentage: accuracy drop 0.01 is one point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from alexnet_deploy.manifest import WEIGHT_COMPRESSED


@dataclass(frozen=True)
class Limits:
    atol: float | None  # None: no elementwise limit (int8, bf16)
    rtol: float | None
    min_top1_agreement: float | None  # fraction 0..1; None: not checked
    max_accuracy_drop: float | None  # fraction 0..1 (0.01 = one percentage point); None: not checked
    min_cosine: float | None = None  # the worst sample's logits cosine similarity; None: not checked
    # validate --layers: a module's output whose relative L2 error passes its limit is where the
    # artifact starts to diverge (diagnostic: the verdict stays with the logits); None: not judged.
    # The limit at AlexNet's depth, scaled with each module's depth by `layer_limit`, between the
    # floor and the cap.
    max_layer_rel_l2: float | None = None
    max_layer_rel_l2_cap: float | None = None
    max_layer_rel_l2_floor: float | None = None

    def override(self, **kw) -> Limits:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


# Per-layer relative L2 error (validate --layers) at AlexNet's depth, LAYER_DEPTH weighted layers
# (5 convolutions, 3 Linears): set about 10x above what honest AlexNet artifacts measured at their
# worst layer (benchmarks/results/layers-*.md) and well below a planted fault: a convolution's
# weights scaled by 1.05 reads 0.05 at that layer.
LAYER_REL_L2 = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 0.25}
LAYER_DEPTH = 8
# Deeper modules get more: the rounding errors of independent layers add roughly in quadrature, so
# after k weighted layers the relative error grows like sqrt(k) (measured on untrained ResNet-50, 53
# convolutions: fp16 0.0106 at layer4.2.bn3, int8 0.25-0.26 at layer3.3 / layer4.1, past the flat
# table above; benchmarks/results/layers-memory-*.md). Earlier modules get less, AlexNet's head
# exactly the table. The cap keeps a module that reads zeros or garbage (rel_l2 ~ 1, cosine ~ 0)
# a divergence at any depth, and sits where honest rounding does not reach:
#   fp32 1e-3   reached at 800 weighted layers; still 10x below what fp16 rounding reads deep in
#               ResNet-50 (1e-2), so an "fp32" file that computes in less still diverges;
#   fp16 0.05   reached at 200 (ResNet-152 has 156); about 100x fp16's unit roundoff (4.9e-4) and
#               5x the deepest honest ResNet-50 reading;
#   bf16 0.2    reached at 128; bf16's unit roundoff (3.9e-3) is 8x fp16's, its table 5x, its cap 4x;
#   int8 0.5    reached at 32; about 2x the honest ResNet-50 int8 readings (0.26), half of what a
#               layer reading zeros measures.
LAYER_REL_L2_CAP = {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.2, "int8": 0.5}
# ... and no module gets less than its floor. Float rounding starts near zero and accumulates, but
# int8 rounds every layer's own input and weights to 8 bits, so its error is large from the first
# layer: honest readings at depth 1 are 0.040-0.068 against a scaled limit of 0.088, and a demo model
# trained on one thread read 0.127 at conv2 (depth 2) against 0.125, a false divergence. The table
# value is int8's floor: a module it lets through at depth 1 would pass at AlexNet's head anyway, and
# the planted int8 faults read above 0.5.
LAYER_REL_L2_FLOOR = {"int8": LAYER_REL_L2["int8"]}


def layer_limit(base: float, depth: int, cap: float | None = None, floor: float | None = None) -> float:
    """The per-layer rel_l2 limit of a module after `depth` weighted layers (convolutions and
    Linears, counted in execution order up to and including it): `base` is the limit at
    LAYER_DEPTH, scaled by sqrt(depth / LAYER_DEPTH), at least `floor` and at most `cap` (None:
    no bound)."""
    scaled = base * math.sqrt(max(depth, 1) / LAYER_DEPTH)
    if floor is not None:
        scaled = max(scaled, floor)
    return scaled if cap is None else min(scaled, cap)


def _layer_limits(precision: str) -> dict[str, float | None]:
    return {"max_layer_rel_l2": LAYER_REL_L2[precision], "max_layer_rel_l2_cap": LAYER_REL_L2_CAP[precision],
            "max_layer_rel_l2_floor": LAYER_REL_L2_FLOOR.get(precision)}


DEFAULT_LIMITS: dict[str, Limits] = {
    "fp32": Limits(atol=1e-4, rtol=1e-3, min_top1_agreement=1.0, max_accuracy_drop=None,
                   **_layer_limits("fp32")),
    "fp16": Limits(atol=1e-2, rtol=1e-2, min_top1_agreement=0.995, max_accuracy_drop=None,
                   **_layer_limits("fp16")),
    # bf16 keeps 8 significant bits, so its rounding error grows with the logits' magnitude: 1.8e-3 on
    # untrained demo logits (|y| < 2), 0.13 on the trained demo model's (96 % top-1), which no fixed
    # atol covers without being meaningless for the other. Like int8 it is judged on decisions.
    "bf16": Limits(atol=None, rtol=None, min_top1_agreement=0.99, max_accuracy_drop=0.01,
                   **_layer_limits("bf16")),
    "int8": Limits(atol=None, rtol=None, min_top1_agreement=0.98, max_accuracy_drop=0.01,
                   **_layer_limits("int8")),
}
# Weight-compressed artifacts (NNCF compress_weights) are judged as int8: their error is the weights'
# rounding, at least int8's per weight (int4's far more), and OpenVINO quantizes the compressed
# Linears' inputs to int8 on the fly at its f32 hint, so no elementwise limit can hold for them either.
DEFAULT_LIMITS.update({p: DEFAULT_LIMITS["int8"] for p in WEIGHT_COMPRESSED})

# Two images cannot measure a 98 % agreement rate (one near-tie flip reads as 50 %), so for the
# precisions judged on decisions the smoke check asks only whether the logits point the same way.
# Broken quantization or conversion (wrong scales, zero points, channel order) lands far below 0.95;
# decision-level limits are validate's job, on enough images to mean something. fp32 and fp16 keep
# their elementwise limits, which hold for any batch.
_DIRECTION_ONLY = Limits(atol=None, rtol=None, min_top1_agreement=None, max_accuracy_drop=None,
                         min_cosine=0.95)
SMOKE_LIMITS: dict[str, Limits] = {
    "fp32": DEFAULT_LIMITS["fp32"],
    "fp16": DEFAULT_LIMITS["fp16"],
    "bf16": _DIRECTION_ONLY,
    "int8": _DIRECTION_ONLY,
    **{p: _DIRECTION_ONLY for p in WEIGHT_COMPRESSED},
}

LIMITS: dict[str, dict[str, Limits]] = {"validate": DEFAULT_LIMITS, "smoke": SMOKE_LIMITS}


def limits_for(precision: str, check: str = "validate") -> Limits:
    """The row of the table for `check` ("validate" or "smoke") and `precision`."""
    try:
        return LIMITS[check][precision]
    except KeyError:
        raise KeyError(f"no {check} limits for precision {precision!r}") from None
