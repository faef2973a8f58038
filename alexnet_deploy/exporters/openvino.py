"""`openvino`: OpenVINO IR (.xml graph + .bin weights) converted from the fp32 ONNX.

Weights stay fp32 (compress_to_fp16=False): OpenVINO's default would halve them silently. The ONNX
metadata (the card) is carried into the IR's rt_info under "framework".
"""

from __future__ import annotations

import importlib.util
import time

from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters.base import ExportContext, Exporter, register_exporter
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.utils import atomic_path, sha256_file


@register_exporter
class OpenVinoExporter(Exporter):
    name = "openvino"
    requires = ("onnx",)

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
        xml, bin_ = ctx.out / "openvino" / "alexnet.xml", ctx.out / "openvino" / "alexnet.bin"
        # save_model writes the .bin beside the .xml under the same stem: give both temporary
        # names, publish the .bin first so a visible .xml always has its weights.
        with atomic_path(xml) as tmp_xml:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            with atomic_path(bin_) as tmp_bin:
                tmp_xml.with_suffix(".bin").replace(tmp_bin)
        art = ctx.artifact(xml, self.name, "fp32", started, device="cpu",
                           input_name=model.inputs[0].get_any_name(),
                           output_name=model.outputs[0].get_any_name(),
                           extra={"files": {str(bin_.relative_to(ctx.out)): sha256_file(bin_)},
                                  "source": source.path, "compress_to_fp16": False})
        art.bytes += bin_.stat().st_size  # the size on disk is the pair's
        return [art]
