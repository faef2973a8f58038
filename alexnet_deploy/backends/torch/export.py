"""The torch exports.

- `torchscript`: torch.jit.trace + freeze, the model card stored as the extra file card.json.
  TorchScript is deprecated upstream (torch.export and AOTInductor succeed it); it stays because
  libtorch programs and Triton's pytorch backend still load it.
- `torch-export`: a torch.export ExportedProgram (.pt2) with a dynamic batch dimension.
- `aoti`: an AOTInductor package (.pt2) compiled for the export device, loadable from Python
  (torch._inductor.aoti_load_package) and C++ (torch::inductor::AOTIModelPackageLoader).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator

from alexnet_deploy.backends.torch.util import no_tf32
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.files import atomic_path
from alexnet_deploy.manifest import Artifact

CARD_FILE = "card.json"  # the extra file's name; C++ reads it with torch::jit::load(path, device, extra)


class TorchScriptExporter(Exporter):
    name = "torchscript"

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import torch

        started = time.perf_counter()
        final = ctx.out / f"{ctx.card.file_stem}.torchscript.pt"
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


def exported_program(ctx: ExportContext):
    """The model as an ExportedProgram, batch dynamic over 1..max_batch (static when max is 1)."""
    import torch

    example = ctx.sample(min(2, ctx.max_batch))
    shapes = None
    if ctx.max_batch > 1:
        shapes = ({0: torch.export.Dim("batch", min=1, max=ctx.max_batch)},)
    return torch.export.export(ctx.model, (example,), dynamic_shapes=shapes)


class TorchExportExporter(Exporter):
    name = "torch-export"

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import torch

        started = time.perf_counter()
        final = ctx.out / f"{ctx.card.file_stem}.torch-export.pt2"
        program = exported_program(ctx)
        with atomic_path(final) as tmp:
            torch.export.save(program, str(tmp), extra_files={CARD_FILE: ctx.card.to_json()})
        return [ctx.artifact(final, self.name, "fp32", started, extra={"card_file": CARD_FILE})]


class AotiExporter(Exporter):
    name = "aoti"

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        import shutil

        # Inductor compiles generated C++ with the system compiler at export time
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++ or clang++) on PATH; AOTInductor compiles C++ at export time"
        return None

    def export(self, ctx: ExportContext) -> list[Artifact]:
        from torch._inductor import aoti_compile_and_package

        started = time.perf_counter()
        final = ctx.out / f"{ctx.card.file_stem}.aoti-{ctx.device}.pt2"
        program = exported_program(ctx)
        # The card travels as package metadata: AOTIModelPackageLoader::get_metadata() in C++.
        configs = {"aot_inductor.metadata": {"card": ctx.card.to_json()}}
        # TF32 would be baked into CUDA kernels and break fp32 tolerances.
        with atomic_path(final) as tmp, no_tf32(), _quiet("torch.utils.cpp_extension"):
            aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        return [ctx.artifact(final, self.name, "fp32", started, extra={"metadata_key": "card"})]


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a chatty upstream logger (on CPU machines: "No CUDA runtime is found ...")."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
