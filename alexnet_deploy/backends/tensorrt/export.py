"""TensorRT engines built from the exported ONNX with the TensorRT Python API (10.x and 11.x).

An engine only runs on the TensorRT version and the GPU architecture that built it, so every engine
gets a JSON sidecar recording both (plus the build settings); the runner checks it before loading.
The version-specific part of the build is one table, `RECIPES`, keyed by TensorRT major version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alexnet_deploy.backends.tensorrt.util import Sidecar, gpu_info, tensorrt_unavailable_reason
from alexnet_deploy.errors import UserError
from alexnet_deploy.exporters import ExportContext, Exporter
from alexnet_deploy.files import atomic_path, sha256_file
from alexnet_deploy.manifest import Artifact

log = logging.getLogger(__name__)

SUBDIR = "tensorrt"
TIMING_CACHE = "timing.cache"  # beside the engines; reused by every later build in this folder
WORKSPACE_BYTES = 1 << 30
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Recipe:
    """How one TensorRT major version builds each precision."""

    source_onnx: dict[str, str]  # engine precision -> precision of the ONNX that is parsed
    builder_flags: dict[str, tuple[str, ...]]  # engine precision -> BuilderFlag names to set
    strongly_typed: bool  # True: precision comes from the graph's types, never from flags
    network_flags: tuple[str, ...] = ()  # NetworkDefinitionCreationFlag names


RECIPES: dict[int, Recipe] = {
    # 10.x: weak typing; the FP16 / INT8 flags let the builder pick reduced-precision kernels
    # (INT8 with the Q/DQ ONNX: explicit quantization, no calibrator).
    10: Recipe(source_onnx={"fp32": "fp32", "fp16": "fp32", "int8": "int8"},
               builder_flags={"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)},
               strongly_typed=False),
    # 11.x: the precision flags are removed and every network is strongly typed (the
    # STRONGLY_TYPED creation flag is deprecated and ignored), so the precision must already be
    # in the ONNX: fp16 weights and activations, or Q/DQ nodes.
    11: Recipe(source_onnx={"fp32": "fp32", "fp16": "fp16", "int8": "int8"},
               builder_flags={"fp32": (), "fp16": (), "int8": ()},
               strongly_typed=True),
}
# TF32 (on by default) rounds matmul inputs to 10 mantissa bits: an fp32 engine would then miss
# the fp32 tolerance against eager, so fp32 builds turn it off.
CLEARED_FLAGS: dict[str, tuple[str, ...]] = {"fp32": ("TF32",)}


def recipe_for(version: str) -> tuple[int, Recipe]:
    """The recipe for an installed TensorRT version; newer majors use the newest known recipe."""
    major = int(str(version).split(".")[0])
    known = [m for m in RECIPES if m <= major]
    if not known:
        raise UserError(f"TensorRT {version} is too old for this exporter: install TensorRT 10 or "
                        f"newer (pip install 'tensorrt>=10')")
    return major, RECIPES[max(known)]


@dataclass
class BuildSettings:
    """Everything that decides what the builder produces; written to the sidecar as is."""

    precision: str
    source_onnx: str  # relative to the export folder
    source_precision: str
    source_sha256: str
    input_name: str
    output_name: str
    profile: dict[str, list[int]]  # min / opt / max input shapes
    workspace_bytes: int
    strongly_typed: bool
    network_flags: list[str]
    builder_flags: list[str]
    cleared_flags: list[str]
    timing_cache: str  # relative to the export folder


def plan_build(ctx: ExportContext, recipe: Recipe, precision: str) -> BuildSettings | None:
    """The settings for one engine, or None when the ONNX it needs was not exported."""
    source = ctx.find("onnx", recipe.source_onnx[precision])
    if source is None:
        return None
    chw = list(ctx.card.input.shape)
    opt = max(1, ctx.max_batch // 2)  # kernels are tuned for `opt`; mid-range suits dynamic batching
    return BuildSettings(
        precision=precision, source_onnx=source.path, source_precision=source.precision,
        source_sha256=source.sha256, input_name=source.input_name, output_name=source.output_name,
        profile={"min": [1, *chw], "opt": [opt, *chw], "max": [ctx.max_batch, *chw]},
        workspace_bytes=WORKSPACE_BYTES, strongly_typed=recipe.strongly_typed,
        network_flags=list(recipe.network_flags), builder_flags=list(recipe.builder_flags[precision]),
        cleared_flags=list(CLEARED_FLAGS.get(precision, ())),
        timing_cache=f"{SUBDIR}/{TIMING_CACHE}")


def build_engine(trt: Any, root: Path, s: BuildSettings, engine_path: Path) -> dict[str, dict]:
    """Parse the ONNX, configure the builder from `s`, write the engine atomically; return its I/O."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_network(trt, builder, logger, root, s)  # the parser owns the weights
    cache_path = root / s.timing_cache
    config = configure(trt, builder, s, cache_path)
    plan = build_plan(builder, network, config, s)
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(memoryview(plan))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return _network_io(trt, network)


def parse_network(trt: Any, builder: Any, logger: Any, root: Path, s: BuildSettings) -> tuple[Any, Any]:
    """The network parsed from `s.source_onnx` and its parser, which must outlive the build (the
    network refers to weights the parser holds)."""
    flags = 0
    for name in s.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(root / s.source_onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {s.source_onnx}: {errors}")
    return network, parser


def configure(trt: Any, builder: Any, s: BuildSettings, cache_path: Path | None) -> Any:
    """The builder config `s` describes, starting from the timing cache at `cache_path` (None or
    missing: an empty one)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_bytes)
    for name in s.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in s.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(s.input_name, tuple(s.profile["min"]), tuple(s.profile["opt"]),
                      tuple(s.profile["max"]))
    config.add_optimization_profile(profile)
    _use_timing_cache(config, cache_path)
    return config


def build_plan(builder: Any, network: Any, config: Any, s: BuildSettings) -> Any:
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(f"TensorRT failed to build the {s.precision} engine from {s.source_onnx} "
                        f"(see TensorRT's messages above)")
    return plan


def _use_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the saved cache when it is compatible, else from an empty one."""
    saved = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(saved)
    if not config.set_timing_cache(cache, False) and saved:
        # a cache from another GPU or TensorRT version: not an error, just no head start
        log.warning("ignoring incompatible TensorRT timing cache %s", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _network_io(trt: Any, network: Any) -> dict[str, dict]:
    import numpy as np

    def describe(t: Any, mode: str) -> dict:
        return {"mode": mode, "dtype": np.dtype(trt.nptype(t.dtype)).name, "shape": list(t.shape)}

    io = {network.get_input(i).name: describe(network.get_input(i), "input")
          for i in range(network.num_inputs)}
    io.update({network.get_output(i).name: describe(network.get_output(i), "output")
               for i in range(network.num_outputs)})
    return io


def has_nonzero_zero_points(path: Path) -> bool:
    """TensorRT's Q/DQ support is symmetric only: every zero point must be 0."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name: i for i in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    zero_points = {n.input[2] for n in graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    return any(numpy_helper.to_array(consts[z]).any() for z in zero_points if z in consts)


class TensorRTExporter(Exporter):
    name = "tensorrt"
    requires = ("onnx",)

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        return tensorrt_unavailable_reason()

    def export(self, ctx: ExportContext) -> list[Artifact]:
        import tensorrt as trt

        major, recipe = recipe_for(trt.__version__)
        gpu = gpu_info()
        artifacts = []
        for precision in PRECISIONS:
            settings = plan_build(ctx, recipe, precision)
            if settings is None:
                log.warning("tensorrt %s: skipped, this export has no %s ONNX to build it from",
                            precision, recipe.source_onnx[precision])
                continue
            if precision == "int8" and has_nonzero_zero_points(ctx.out / settings.source_onnx):
                log.warning("tensorrt int8: skipped, %s quantizes asymmetrically (non-zero zero "
                            "points), which TensorRT cannot build; quantize with symmetric "
                            "activations and weights", settings.source_onnx)
                continue
            artifacts.append(self._build(trt, ctx, settings, gpu))
        return artifacts

    def _build(self, trt: Any, ctx: ExportContext, s: BuildSettings, gpu: dict) -> Artifact:
        started = time.perf_counter()
        engine = ctx.out / SUBDIR / f"{ctx.card.file_stem}_{s.precision}.engine"
        io = build_engine(trt, ctx.out, s, engine)
        sidecar = engine.with_name(engine.name + ".json")
        Sidecar(engine=engine.name, tensorrt_version=str(trt.__version__), gpu=gpu, settings=asdict(s),
                io=io, build_s=round(time.perf_counter() - started, 3)).write(sidecar)
        rel = str(sidecar.relative_to(ctx.out))
        return ctx.artifact(engine, "tensorrt", s.precision, started, device="cuda",
                            input_name=s.input_name, output_name=s.output_name,
                            extra={"files": {rel: sha256_file(sidecar)}, "sidecar": rel,
                                   "tensorrt_version": str(trt.__version__),
                                   "compute_capability": gpu["compute_capability"], "io": io})
