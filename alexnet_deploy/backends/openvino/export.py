"""`openvino`: OpenVINO IR (.xml graph + .bin weights) converted from the fp32 ONNX, and, when NNCF
is installed, an int8 IR quantized from it by NNCF's post-training quantization; with
`export --weight-compression`, the IRs whose weights NNCF compressed (compress.py).

Weights stay fp32 (compress_to_fp16=False): OpenVINO's default would halve them silently. The ONNX
metadata (the card) is carried into the IR's rt_info under "framework".

Why an NNCF IR beside the QDQ ONNX (which OpenVINO also runs): measured on a 2-core AVX512-VNNI/AMX
Xeon, OpenVINO ran NNCF's graph 7-10% faster at batch 1 and 32 than the same runtime on the QDQ
file (unsigned activations after ReLU, placement OpenVINO's int8 kernels expect); see
benchmarks/results/cpu-fast-*.md. It is made only beside the int8 ONNX; without nncf the int8 ONNX
remains the int8 artifact.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alexnet_deploy.backends.openvino.ir import nncf_quantized, quantization_facts, save_ir
from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.manifest import Artifact

if TYPE_CHECKING:
    from alexnet_deploy.calibration import CalibrationSet


class OpenVinoExporter(Exporter):
    name = "openvino"
    requires = ("onnx",)
    needs_calibration = True  # the NNCF int8 IR and the int4w-a8 one
    options = ("weight_compression",)

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install 'alexnet-deploy[openvino]')"
        return None

    @classmethod
    def option_unavailable_reason(cls, option: str) -> str | None:
        if importlib.util.find_spec("nncf") is None:
            return "NNCF compresses the weights and is not installed (pip install 'alexnet-deploy[openvino]')"
        return None

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import openvino as ov

        from alexnet_deploy.calibration import load_calibration

        started = time.perf_counter()
        source = ctx.find("onnx", "fp32")
        if source is None:
            raise UserError("openvino converts the fp32 ONNX, which this run did not produce")
        model = ov.convert_model(str(ctx.out / source.path))
        fp32 = save_ir(ctx, model, ctx.card.file_stem, "fp32", started, {"source": source.path})
        # made beside the int8 ONNX, from the same calibration images, or not at all
        nncf_int8 = ctx.find("onnx", "int8") is not None and importlib.util.find_spec("nncf") is not None
        if not (nncf_int8 or ctx.weight_compression):
            return [fp32]
        started = time.perf_counter()
        data = load_calibration(ctx.card, ctx.calib_data, ctx.calib_images)  # once for all of them
        made = [quantize_nncf(ctx, model, data, started)] if nncf_int8 else []
        if ctx.weight_compression:
            from alexnet_deploy.backends.openvino.compress import compressed_irs

            made += compressed_irs(ctx, model, data)
        record_agreement(ctx, ctx.out / fp32.path, made, data.heldout)
        return [fp32, *made]


def quantize_nncf(ctx: ExportContext, model, data: CalibrationSet, started: float) -> Artifact:
    """NNCF post-training quantization (its default: symmetric int8, per-channel weights, fast bias
    correction) calibrated on the same images as the int8 ONNX."""
    art = save_ir(ctx, nncf_quantized(model, data), f"{ctx.card.file_stem}.int8", "int8", started, {})
    art.extra["quantization"] = quantization_facts(data)
    return art


def record_agreement(ctx: ExportContext, fp32_xml: Path, arts: list[Artifact], heldout: np.ndarray) -> None:
    """Each artifact's top-1 agreement with the fp32 IR on the held-out calibration images, as the
    `openvino` runner computes (f32 hint) into extra["heldout_top1_agreement"]."""
    import openvino as ov

    core = ov.Core()

    def top1(path: Path) -> np.ndarray:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(heldout[i:i + 8])[0].argmax(1) for i in range(0, len(heldout), 8)])

    reference = top1(fp32_xml)
    for art in arts:
        art.extra.update({"heldout_images": len(heldout), "heldout_top1_agreement":
                          round(float((reference == top1(ctx.out / art.path)).mean()), 4)})
