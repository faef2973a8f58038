"""`torch-export`: a torch.export ExportedProgram (.pt2) with a dynamic batch dimension."""

from __future__ import annotations

import time

from alexnet_deploy.exporters.base import ExportContext, Exporter, register_exporter
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.utils import atomic_path

CARD_FILE = "card.json"


def exported_program(ctx: ExportContext):
    """The model as an ExportedProgram, batch dynamic over 1..max_batch (static when max is 1)."""
    import torch

    example = ctx.sample(min(2, ctx.max_batch))
    shapes = None
    if ctx.max_batch > 1:
        shapes = ({0: torch.export.Dim("batch", min=1, max=ctx.max_batch)},)
    return torch.export.export(ctx.model, (example,), dynamic_shapes=shapes)


@register_exporter
class TorchExportExporter(Exporter):
    name = "torch-export"

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import torch

        started = time.perf_counter()
        final = ctx.out / "alexnet.torch-export.pt2"
        program = exported_program(ctx)
        with atomic_path(final) as tmp:
            torch.export.save(program, str(tmp), extra_files={CARD_FILE: ctx.card.to_json()})
        return [ctx.artifact(final, self.name, "fp32", started, extra={"card_file": CARD_FILE})]
