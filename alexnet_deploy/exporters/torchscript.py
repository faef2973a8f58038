"""`torchscript`: torch.jit.trace + freeze, the model card stored as the extra file card.json.

TorchScript is deprecated upstream (torch.export and AOTInductor succeed it); it stays because
libtorch programs and Triton's pytorch backend still load it.
"""

from __future__ import annotations

import time
import warnings

from alexnet_deploy.exporters.base import ExportContext, Exporter, register_exporter
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.utils import atomic_path

CARD_FILE = "card.json"  # the extra file's name; C++ reads it with torch::jit::load(path, device, extra)


@register_exporter
class TorchScriptExporter(Exporter):
    name = "torchscript"

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import torch

        started = time.perf_counter()
        final = ctx.out / "alexnet.torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice on every call
            # LRN's empty-input guard is a Python branch: traced as a constant, which is right here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            with torch.no_grad():
                traced = torch.jit.trace(ctx.model, ctx.sample(2), check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
            with atomic_path(final) as tmp:
                torch.jit.save(frozen, str(tmp), _extra_files={CARD_FILE: ctx.card.to_json()})
        return [ctx.artifact(final, self.name, "fp32", started, extra={"card_file": CARD_FILE})]
