"""The precision a runner really computed in, read from its error signature (validate's
`computes_in`), not from its label.

The same weights run in float64 (the truth), and in float32, float16 and bfloat16 by torch on the
CPU (weights and activations in that type, as the runtimes do). Each rounding leaves an error of its
own size against float64: about 1e-7 relative for fp32, 1e-3 for fp16, 1e-2 for bf16 (8 bits of
mantissa against fp16's 11). An artifact's logits are matched to the nearest of those sizes on a log
scale. An fp32 row that computed in bf16 (what OpenVINO does on bf16-capable CPUs unless told
otherwise) fails; an fp16 or bf16 row that computed in fp32 is flagged: it buys no speed.
int8 rows are not measured: quantization error has no emulated twin here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from alexnet_deploy.compare import rel_l2

if TYPE_CHECKING:
    from torch import nn

MEASURED = ("fp32", "fp16", "bf16")  # labels whose arithmetic is measured
FLOOR = 1e-12  # a bit-exact match counts as this error on the log scale


@dataclass
class Signatures:
    """Emulated references on one batch, computed on first use."""

    model: nn.Module
    batch: np.ndarray
    _truth: np.ndarray | None = None
    _errors: dict[str, float] = field(default_factory=dict)

    def truth(self) -> np.ndarray:
        if self._truth is None:
            self._truth = self._run("float64").astype(np.float64)
        return self._truth

    def error(self, precision: str) -> float:
        """rel L2 of torch computing in `precision` against float64, on this batch."""
        if precision not in self._errors:
            dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
            self._errors[precision] = rel_l2(self._run(dtype), self.truth())
        return self._errors[precision]

    def _run(self, dtype: str) -> np.ndarray:
        import torch

        kind = getattr(torch, dtype)
        model = self.model if kind == torch.float32 else copy.deepcopy(self.model).to(kind)
        with torch.inference_mode():
            out = model(torch.from_numpy(self.batch).to(kind))
        return out.to(torch.float64).numpy()


@dataclass
class Measured:
    computes_in: str | None  # None: not measured (int8, or outputs that never reached a comparison)
    errors: dict[str, float] = field(default_factory=dict)  # "artifact" and each emulation's
    failure: str | None = None
    note: str | None = None


def measure_precision(label: str, outputs: np.ndarray, signatures: Signatures) -> Measured:
    """Which emulation's error the artifact's is nearest to, and what that means for `label`."""
    if label not in MEASURED:
        return Measured(None)
    own = rel_l2(outputs, signatures.truth())
    errors = {p: signatures.error(p) for p in MEASURED}
    distance = {p: abs(math.log10(max(own, FLOOR)) - math.log10(max(e, FLOOR))) for p, e in errors.items()}
    found = min(distance, key=distance.__getitem__)
    result = Measured(found, {"artifact": own, **errors})
    if label == "fp32" and found != "fp32":
        result.failure = (f"computed in {found}, not fp32: its error against float64 ({own:.1e}) is "
                          f"{found}-sized ({errors[found]:.1e}), fp32's is {errors['fp32']:.1e}")
    elif label in ("fp16", "bf16") and found == "fp32":
        result.note = (f"ran in fp32: no speed-up (error {own:.1e} against float64, {label}'s would "
                       f"be {errors[label]:.1e})")
    return result
