"""`onnx`: three files from one format name.

- fp32 (alexnet.onnx): the torch.onnx dynamo exporter, dynamic batch, one self-contained file.
- fp16 (alexnet.fp16.onnx): the model in half precision with float32 input and output; the casts
  sit inside the graph, so callers feed the same float32 batch (ONNX Runtime's CPU provider and
  strongly typed TensorRT both run it).
- int8 (alexnet.int8.onnx): ONNX Runtime static quantization of the fp32 file (pre-processing,
  QDQ, signed int8 activations and weights, per-channel weights), calibrated on real images.
  Symmetric throughout (every zero point 0): TensorRT's explicit quantization accepts nothing else.

Every file carries the model card in metadata_props (see `card_metadata`), is checked with
onnx.checker (full check) and strict shape inference before it is published. Node metadata keeps the
exporter's module name scopes and class hierarchy (which PyTorch module each node came from) but not
its stack traces, which hold the exporting machine's source paths.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet_deploy.backends.onnx.layers import modules_property
from alexnet_deploy.backends.onnx.operators import with_onnx_operators
from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.files import atomic_path
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.models import ModelCard

INPUT, OUTPUT = "images", "logits"
MIN_OPSET = 18  # the dynamo exporter's floor; lower requests fall back to 18 silently
SUFFIXES = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx"}  # after card.file_stem


def card_metadata(card: ModelCard, precision: str) -> dict[str, str]:
    """metadata_props: strings a C++ program reads without our Python code. Lists are JSON."""
    i = card.input
    return {
        "card": card.to_json(),  # the whole model card
        "arch": card.arch,
        "num_classes": str(card.num_classes),
        "classes": json.dumps(card.classes),
        "input_shape": json.dumps(list(i.shape)),  # [C, H, W]; the batch is dynamic
        "input_size": str(i.crop),
        "resize": str(i.resize),
        "layout": i.layout,
        "mean": json.dumps(list(i.mean)),
        "std": json.dumps(list(i.std)),
        "precision": precision,
        "io_dtype": "float32",
    }


def read_card_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


class OnnxExporter(Exporter):
    name = "onnx"
    needs_calibration = True  # the int8 file

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        for module, hint in (("onnx", "onnx"), ("onnxscript", "onnxscript"),
                             ("onnxruntime", "onnxruntime, for int8 quantization")):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install {hint.split(',')[0]}; needed: {hint})"
        return None

    @classmethod
    def check_request(cls, opset: int) -> None:
        check_opset(opset)

    def export(self, ctx: ExportContext) -> list[Artifact]:
        fp32 = self._export_torch(ctx, ctx.model, "fp32")
        half = HalfModel(copy.deepcopy(ctx.model).half()).eval()
        fp16 = self._export_torch(ctx, half, "fp16")
        return [fp32, fp16, quantize_int8(ctx, ctx.out / fp32.path)]

    def _export_torch(self, ctx: ExportContext, model: nn.Module, precision: str) -> Artifact:
        started = time.perf_counter()
        proto = dynamo_export(model, ctx)
        final = ctx.out / (ctx.card.file_stem + SUFFIXES[precision])
        publish(proto, final, ctx.card, precision)
        return ctx.artifact(final, self.name, precision, started, input_name=INPUT, output_name=OUTPUT,
                            extra={"opset": ctx.opset, "io_dtype": "float32",
                                   "metadata_keys": sorted(card_metadata(ctx.card, precision))})


class HalfModel(nn.Module):
    """fp32 in, fp16 inside, fp32 out: callers keep one input type for every precision."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


def dynamo_export(model: nn.Module, ctx: ExportContext):
    """The model through torch.onnx's dynamo exporter, batch dynamic when max_batch > 1."""
    shapes = None
    if ctx.max_batch > 1:
        shapes = ({0: torch.export.Dim("batch", min=1, max=ctx.max_batch)},)
    model, translations = with_onnx_operators(model)
    with _quiet("torch.onnx", "onnxscript", "onnx_ir"):
        program = torch.onnx.export(model, (ctx.sample(min(2, ctx.max_batch)),), dynamo=True,
                                    input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=shapes,
                                    opset_version=ctx.opset, external_data=False, verbose=False,
                                    custom_translation_table=translations or None)
    proto = program.model_proto
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != ctx.opset:  # the exporter keeps its own opset when it cannot convert
        raise UserError(f"the exporter could not write opset {ctx.opset} (it wrote {written}); "
                        f"choose --opset {MIN_OPSET} or newer")
    return proto


def check_opset(opset: int) -> None:
    """Before any work: the opsets the dynamo exporter and the installed onnx can write."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"--opset {opset}: the torch.onnx dynamo exporter writes opsets {MIN_OPSET} to "
                        f"{newest} (the newest onnx {onnx.__version__} knows)")


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter logs its fallbacks with tracebacks; we report what matters as one line."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for log, _ in saved:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def publish(proto, final: Path, card: ModelCard, precision: str) -> None:
    """Card metadata, strict shape inference, signature check, full checker; then rename."""
    import onnx

    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, **card_metadata(card, precision), **modules_property(proto)})
    drop_stack_traces(proto)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    check_signature(proto, card, final.name)
    with atomic_path(final) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def drop_stack_traces(proto) -> None:
    """Remove the exporter's per-node stack traces (file paths and source lines of the machine
    that exported, e.g. key pkg.torch.onnx.stack_trace); the name scopes beside them stay."""
    import onnx

    def clean(graph) -> None:
        for node in graph.node:
            kept = [p for p in node.metadata_props if not p.key.endswith("stack_trace")]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attr in node.attribute:  # subgraphs of If / Loop / Scan
                if attr.type == onnx.AttributeProto.GRAPH:
                    clean(attr.g)
                for g in attr.graphs:
                    clean(g)

    for graph in (proto.graph, *proto.functions):
        clean(graph)


def check_signature(proto, card: ModelCard, label: str) -> None:
    """One float32 input `images` (N, C, H, W) and one float32 output `logits` (N, num_classes)."""
    def dims(v) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    g = proto.graph
    ins, outs = [v.name for v in g.input], [v.name for v in g.output]
    if ins != [INPUT] or outs != [OUTPUT]:
        raise UserError(f"{label}: expected input {INPUT!r} and output {OUTPUT!r}, got {ins} and {outs}")
    got_in, got_out = dims(g.input[0])[1:], dims(g.output[0])[1:]
    if got_in != list(card.input.shape) or got_out != [card.num_classes]:
        raise UserError(f"{label}: shapes {got_in} -> {got_out} do not match the card's "
                        f"{list(card.input.shape)} -> [{card.num_classes}]")


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------
# Zero points of 0 for activations and weights: the one Q/DQ form every int8 consumer accepts.
# Activation ranges clip at the 99.99th percentile of |x|: on the demo model MinMax ranges (asymmetric
# or symmetric) lost 1-2 of 40 near-tie decisions, the percentile none (benchmarks/results/cpu-fast-*).
PERCENTILE = 99.99
QUANT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": PERCENTILE}


def quantize_static_int8(fp32_path: Path, dst: Path, calib: np.ndarray, batch: int) -> None:
    """ONNX Runtime's pre-processing and static QDQ quantization of `fp32_path` into `dst`,
    calibrated on `calib` in uniform batches of at most `batch` (scratch files beside `dst`)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    pre = dst.with_name(f".pre-{dst.name}")
    # shape inference only: ONNX Runtime's graph optimizer drops node metadata, and with it the module
    # scopes `validate --layers` maps by (MobileNetV3: every node lost them), while the exporter's
    # graph is already constant-folded with batch norms merged into convolutions
    quant_pre_process(str(fp32_path), str(pre), skip_optimization=True)
    quantize_static(str(pre), str(dst), _Reader(calib, batch=batch),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.Percentile, extra_options=QUANT_OPTIONS)


def quantize_int8(ctx: ExportContext, fp32_path: Path) -> Artifact:
    import onnx

    from alexnet_deploy.calibration import load_calibration

    started = time.perf_counter()
    data = load_calibration(ctx.card, ctx.calib_data, ctx.calib_images)
    final = ctx.out / (ctx.card.file_stem + SUFFIXES["int8"])
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=ctx.out) as work:
        quant = Path(work) / "quant.onnx"
        quantize_static_int8(fp32_path, quant, data.calib, batch=min(16, ctx.max_batch))
        publish(onnx.load(str(quant)), final, ctx.card, "int8")
    agreement = top1_agreement(fp32_path, final, data.heldout, batch=ctx.max_batch)
    return ctx.artifact(final, "onnx", "int8", started, input_name=INPUT, output_name=OUTPUT,
                        extra={"io_dtype": "float32", "quantization": {
                            "format": "QDQ", "activations": "int8", "weights": "int8 per-channel",
                            "symmetric": True,
                            "method": f"percentile {PERCENTILE}", "calibration_images": len(data.calib),
                            "calibration_source": data.source},
                            "heldout_images": len(data.heldout),
                            "heldout_top1_agreement": agreement})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: feeds batches of one size (see
    calibration.uniform_batch), then None."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        from alexnet_deploy.calibration import calibration_batches

        self._batches = iter(calibration_batches(images, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._batches, None)
        return None if b is None else {INPUT: b}


def top1_agreement(fp32_path: Path, int8_path: Path, images: np.ndarray, batch: int) -> float:
    """Fraction of `images` on which the int8 file picks the same class as the fp32 file."""
    import onnxruntime as ort

    def top1(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {INPUT: images[i:i + batch]})[0].argmax(1)
                               for i in range(0, len(images), batch)])

    return round(float((top1(fp32_path) == top1(int8_path)).mean()), 4)
