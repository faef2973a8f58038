"""`export --weight-compression`: OpenVINO IRs whose weights NNCF compressed, for batch 1, where
reading AlexNet's Linears (58 M of its 61 M parameters) bounds the time.

  int8w     nncf.compress_weights INT8_ASYM on the fp32 IR: every weight int8 per output channel
            with a zero point; the graph's activations stay float;
  int4w     INT4_SYM on every Linear (the classifier too: all_layers), one scale per output
            channel; the convolutions int8 (NNCF's backup precision); activations float;
  int4w-a8  the int8 model with int4 Linears: nncf.quantize (int8 weights, int8 activations
            calibrated on export's calibration images) of everything but the Linears, then the
            int4w compression of the Linears.

Why int4w-a8 is made that way: nncf.quantize gives weights 8 bits only (asked for 4 it refuses:
its CPU hardware config allows 8-bit quantizers), and compress_weights on NNCF's int8 model changes
nothing (its Linears read int8 constants through a dequantizing Multiply: no float weight is left).
So the Linears are left out of quantize and compressed alone. Their inputs are then quantized to
int8 at run time by OpenVINO's CPU plugin (dynamic quantization, at the f32 inference precision on
CPUs with VNNI), which it does for int8w's and int4w's Linears too under the `openvino` runner;
under `openvino-bf16` they compute in bf16 instead. extra["activations"] says so per artifact.

Why one int4 scale per output channel rather than NNCF's default groups of 128, and why each IR
carries DYNAMIC_QUANTIZATION_GROUP_SIZE in its rt_info (runtime_options, which OpenVINO applies at
compile_model unless the caller sets it): at batch 1 the int8 x int4 kernel is bound by its
arithmetic, not by reading the weights, and converting the int32 sums to float at every group
boundary is a large part of it. Measured on the 2-core EPYC (AlexNet 224 px, the three Linears,
OpenVINO's per-layer counters, alternating rounds under load): groups of 128 with the default 32
activations per scale ran 1.12x NNCF's int8 Linears; 128 / 128 0.98x; per channel / 1024 0.72x.
Top-1 agreement on the trained demo model's 1000 val images was 99.7-99.9 % for all of them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alexnet_deploy.backends.openvino.ir import nncf_quantized, nncf_quiet, quantization_facts, save_ir
from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.manifest import Artifact

if TYPE_CHECKING:
    from alexnet_deploy.calibration import CalibrationSet

log = logging.getLogger(__name__)

LINEAR, CONV = "MatMul", "Convolution"  # the OpenVINO operations the Linears and convolutions become
DQ_KEY = ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]  # where OpenVINO reads it in rt_info
DQ_MAX, DQ_MIN = 1024, 32  # activations per dynamic scale: the largest power of two dividing every Linear
DYNAMIC = ("the Linears' inputs are quantized to int8 at run time by OpenVINO's CPU plugin under the "
           "`openvino` runner (f32 inference precision, VNNI CPUs; {dq} values per scale, the IR's "
           "runtime_options); bf16 under `openvino-bf16`")


@dataclass(frozen=True)
class Recipe:
    """How one weight-compressed IR is made, and what it holds in words (for the manifest)."""

    precision: str
    mode: str  # an nncf.CompressWeightsMode member
    int4: bool  # every Linear int4, one scale per output channel; the rest at NNCF's int8 backup
    calibrated: bool  # nncf.quantize everything but the Linears first
    weights: str
    activations: str

    def options(self) -> dict[str, Any]:
        import nncf

        options: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, self.mode)}
        if self.int4:  # group_size -1: one scale per output channel (see the module's docstring)
            options.update(group_size=-1, ratio=1.0, all_layers=True)
        return options


RECIPES = (
    Recipe("int8w", "INT8_ASYM", int4=False, calibrated=False,
           weights="int8 per output channel with zero points (NNCF INT8_ASYM), every layer",
           activations=f"float in the graph; {DYNAMIC}"),
    Recipe("int4w", "INT4_SYM", int4=True, calibrated=False,
           weights="Linears int4, symmetric, one scale per output channel (NNCF INT4_SYM); convolutions "
                   "int8 per output channel with zero points (NNCF's backup, INT8_ASYM)",
           activations=f"float in the graph; {DYNAMIC}"),
    Recipe("int4w-a8", "INT4_SYM", int4=True, calibrated=True,
           weights="Linears int4, symmetric, one scale per output channel (NNCF INT4_SYM); convolutions "
                   "int8 per output channel, symmetric (nncf.quantize)",
           activations=f"int8 into every convolution, ranges calibrated (nncf.quantize); {DYNAMIC}"),
)


def compressed_irs(ctx: ExportContext, model, data: CalibrationSet) -> list[Artifact]:
    """The weight-compressed IRs of the fp32 `model`, those whose compression took place."""
    nncf_quiet()  # its per-layer tables are not export's output
    return [art for art in (compress(ctx, model, data, r) for r in RECIPES) if art is not None]


def compress(ctx: ExportContext, model, data: CalibrationSet, recipe: Recipe) -> Artifact | None:
    import nncf

    started = time.perf_counter()
    # validate=False: a model without Linears is quantized whole (and then has no int4 to offer)
    base = (nncf_quantized(model, data, ignored_scope=nncf.IgnoredScope(types=[LINEAR], validate=False))
            if recipe.calibrated else model.clone())
    compressed = nncf.compress_weights(base, **recipe.options())
    stored = stored_weights(compressed)
    if recipe.int4 and not stored.get(LINEAR, {}).get("i4"):
        # the label would lie: nothing of this model was stored in 4 bits
        log.warning(f"{recipe.precision} not written: no Linear of this model could be compressed to int4")
        return None
    dq = dynamic_group(compressed)
    if dq is not None:
        compressed.set_rt_info(str(dq), DQ_KEY)
    extra = {"weights": recipe.weights, "activations": recipe.activations.format(dq=dq or "OpenVINO's default number of"),
             "stored_weights": stored, "runtime_options": {DQ_KEY[1]: dq} if dq else {},
             "compression": {"tool": f"nncf {nncf.__version__}", "method": "compress_weights", "mode": recipe.mode,
                             **({"group_size": -1, "ratio": 1.0, "all_layers": True} if recipe.int4 else {})}}
    if recipe.calibrated:
        extra["quantization"] = {**quantization_facts(data), "ignored": f"{LINEAR} (the Linears)"}
    return save_ir(ctx, compressed, f"{ctx.card.file_stem}.{recipe.precision}", recipe.precision, started, extra)


def dynamic_group(model) -> int | None:
    """The largest power of two up to DQ_MAX dividing every Linear's input channels (AlexNet's 9216
    and 4096: 1024), or None below DQ_MIN (OpenVINO's default then stays)."""
    widths = [op.input(0).get_partial_shape()[-1] for op in model.get_ordered_ops() if op.get_type_name() == LINEAR]
    if not widths or any(w.is_dynamic for w in widths):
        return None
    group = DQ_MAX
    while group >= DQ_MIN and any(w.get_length() % group for w in widths):
        group //= 2
    return group if group >= DQ_MIN else None


def stored_weights(model) -> dict[str, dict[str, int]]:
    """Weight elements per storage type ("i4", "u8", "f32", ...) of the Linears and the
    convolutions: each one's weight input followed up its decompression chain (Convert, Subtract,
    Multiply, Reshape) to the constant the file stores."""
    out: dict[str, Counter] = {LINEAR: Counter(), CONV: Counter()}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in out:
            const = _source_constant(op.input_value(1).get_node())
            if const is not None:
                out[kind][const.get_element_type().get_type_name()] += _numel(const)
    return {k: dict(v) for k, v in out.items() if v}


def _source_constant(node):
    for _ in range(8):  # a decompression chain is a few operations long
        if node.get_type_name() == "Constant":
            return node
        if node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


def _numel(const) -> int:
    n = 1
    for d in const.get_output_shape(0):
        n *= int(d)
    return n
