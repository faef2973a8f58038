"""What the OpenVINO exporters share (export.py's fp32 and NNCF int8 IRs, compress.py's
weight-compressed ones): writing an IR pair atomically, and NNCF's quantization."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.files import atomic_path, sha256_file
from alexnet_deploy.manifest import Artifact

if TYPE_CHECKING:
    from alexnet_deploy.calibration import CalibrationSet


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


def nncf_quantized(model, data: CalibrationSet, **kw):
    """A quantized copy of `model`, calibrated on every calibration image (`kw`: nncf.quantize's)."""
    import nncf

    nncf_quiet()
    samples = [data.calib[i:i + 1] for i in range(len(data.calib))]
    return nncf.quantize(model.clone(), nncf.Dataset(samples), subset_size=len(samples), **kw)


def quantization_facts(data: CalibrationSet) -> dict:
    import nncf

    return {"tool": f"nncf {nncf.__version__}", "method": "post-training (MinMax ranges, fast bias correction)",
            "calibration_images": len(data.calib), "calibration_source": data.source}


def nncf_quiet() -> None:
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
