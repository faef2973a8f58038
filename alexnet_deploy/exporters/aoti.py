"""`aoti`: an AOTInductor package (.pt2) compiled for the export device, loadable from Python
(torch._inductor.aoti_load_package) and C++ (torch::inductor::AOTIModelPackageLoader)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from alexnet_deploy.exporters.base import ExportContext, Exporter, no_tf32, register_exporter
from alexnet_deploy.exporters.torch_export import exported_program
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.utils import atomic_path


@register_exporter
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
        final = ctx.out / f"alexnet.aoti-{ctx.device}.pt2"
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
