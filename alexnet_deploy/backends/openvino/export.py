"""`openvino`: OpenVINO IR (.xml graph + .bin weights) converted from the fp32 ONNX, and, when NNCF
is installed, an int8 IR quantized from it by NNCF's post-training quantization.

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

from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.files import atomic_path, sha256_file
from alexnet_deploy.manifest import Artifact


class OpenVinoExporter(Exporter):
    name = "openvino"
    requires = ("onnx",)
    needs_calibration = True  # the NNCF int8 IR

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install 'alexnet-deploy[openvino]')"
        return None

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import openvino as ov

        started = time.perf_counter()
        source = ctx.find("onnx", "fp32")
        if source is None:
            raise UserError("openvino converts the fp32 ONNX, which this run did not produce")
        model = ov.convert_model(str(ctx.out / source.path))
        fp32 = save_ir(ctx, model, ctx.card.file_stem, "fp32", started, {"source": source.path})
        # made beside the int8 ONNX, from the same calibration images, or not at all
        if ctx.find("onnx", "int8") is None or importlib.util.find_spec("nncf") is None:
            return [fp32]
        return [fp32, quantize_nncf(ctx, model, ctx.out / fp32.path)]


def save_ir(ctx: ExportContext, model, stem: str, precision: str, started: float, extra: dict) -> Artifact:
    import openvino as ov

    xml, bin_ = ctx.out / "openvino" / f"{stem}.xml", ctx.out / "openvino" / f"{stem}.bin"
    # save_model writes the .bin beside the .xml under the same stem: give both temporary
    # names, publish the .bin first so a visible .xml always has its weights.
    with atomic_path(xml) as tmp_xml:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        with atomic_path(bin_) as tmp_bin:
            tmp_xml.with_suffix(".bin").replace(tmp_bin)
    art = ctx.artifact(xml, "openvino", precision, started, device="cpu",
                       input_name=model.inputs[0].get_any_name(),
                       output_name=model.outputs[0].get_any_name(),
                       extra={"files": {str(bin_.relative_to(ctx.out)): sha256_file(bin_)},
                              "compress_to_fp16": False, **extra})
    art.bytes += bin_.stat().st_size  # the size on disk is the pair's
    return art


def quantize_nncf(ctx: ExportContext, model, fp32_xml) -> Artifact:
    """NNCF post-training quantization (its default: symmetric int8, per-channel weights, fast bias
    correction) calibrated on the same images as the int8 ONNX; agreement with the fp32 IR is
    measured on the held-out images."""
    import logging

    import nncf
    import numpy as np
    import openvino as ov

    from alexnet_deploy.calibration import load_calibration

    started = time.perf_counter()
    nncf.set_log_level(logging.ERROR)
    data = load_calibration(ctx.card, ctx.calib_data, ctx.calib_images)
    samples = [data.calib[i:i + 1] for i in range(len(data.calib))]
    quantized = nncf.quantize(model.clone(), nncf.Dataset(samples), subset_size=len(samples))
    art = save_ir(ctx, quantized, f"{ctx.card.file_stem}.int8", "int8", started, {})
    core = ov.Core()

    def top1(path) -> np.ndarray:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(data.heldout[i:i + 8])[0].argmax(1)
                               for i in range(0, len(data.heldout), 8)])

    art.extra.update({"quantization": {"tool": f"nncf {nncf.__version__}", "method": "post-training "
                      "(MinMax ranges, fast bias correction)", "calibration_images": len(samples),
                      "calibration_source": data.source},
                      "heldout_images": len(data.heldout),
                      "heldout_top1_agreement": round(float((top1(fp32_xml) == top1(ctx.out / art.path)).mean()), 4)})
    return art
