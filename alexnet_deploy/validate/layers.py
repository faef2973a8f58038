"""`validate --layers`: where an artifact starts to disagree, in the model's own module names.

The reference records the output of every PyTorch module (forward hooks, execution order); a runner
that declares `layer_taps` lists the operations of its file with the module each came from (ONNX
name scopes, OpenVINO friendly names mapped through the ONNX export's module map, torch.export's
nn_module_stack) and runs the file with those tensors added as outputs. A module's tensor in the
artifact is the last operation inside it, so a quantize / dequantize pair after a layer counts as
part of it: what the next layer reads. Modules with no operation left (dropout in eval, layers a
converter folded away) are reported as "fused", never guessed.

Each module is judged against its own limit: the precision's limit at AlexNet's depth scaled by
the square root of its depth, the weighted layers (convolutions, Linears) executed up to and
including it, and capped (tolerances.layer_limit). A runner whose marked outputs can change how
its runtime compiles the rest (`layer_marks_interfere`) has each failing module measured again
with that tensor alone marked, until one failure holds: a divergence is the artifact's, never the
tap's. A module called more than once is measured at its last call (see module_order).

Cost stays bounded: modules are compared in slices whose recorded tensors fit a budget (the
artifact's own size, at least the two largest activations), each slice one reference run and one
tapped run, so at most one slice's tensors are alive at a time on either side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from alexnet_deploy.compare import cosine_similarity, rel_l2
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.runtimes import LayerOp
from alexnet_deploy.tolerances import layer_limit

if TYPE_CHECKING:
    from torch import nn

LAYER_ROWS = 8  # inputs compared per layer: real images first (validate's batch order)
OK, FAIL, FUSED, MISMATCH = "OK", "FAIL", "fused", "shape differs"


@dataclass
class LayerResult:
    module: str  # PyTorch module path, e.g. features.3 or layer3.1.conv2
    kind: str  # the module's class (Conv2d) and the artifact's operation kind (Conv)
    status: str  # OK, FAIL, fused, shape differs
    rel_l2: float | None = None  # ||y - ref|| / ||ref|| over the compared rows
    max_abs: float | None = None
    cosine: float | None = None  # the worst row's cosine similarity
    limit: float | None = None  # the rel_l2 limit applied here: the precision's, scaled by depth
    depth: int | None = None  # weighted layers (convolutions, Linears) run up to and including it


@dataclass
class LayerReport:
    layers: list[LayerResult] = field(default_factory=list)
    first_divergence: dict[str, Any] | None = None  # {"module", "rel_l2", "cosine"}; None: none
    rows: int = 0
    slices: int = 0
    remeasured: list[str] = field(default_factory=list)  # failed beside other taps, measured alone
    recorded_mb: float = 0.0  # the largest slice's recorded tensors, both sides together

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Matching an artifact's operations to modules
# ---------------------------------------------------------------------------------------------
def resolve(raw: str | None, known: set[str]) -> str | None:
    """The reference module a raw path names: itself, or the longest known suffix of it (a wrapper
    module the exporter saw, e.g. `inner.features.0` for the fp16 ONNX, adds a prefix)."""
    if raw is None:
        return None
    parts = raw.split(".")
    for i in range(len(parts)):
        candidate = ".".join(parts[i:])
        if candidate in known:
            return candidate
    return None


def choose_taps(ops: list[LayerOp], modules: list[str]) -> dict[str, LayerOp]:
    """For each module, the last operation (in the file's order) inside it or its children."""
    known = set(modules)
    taps: dict[str, LayerOp] = {}
    for op in ops:
        path = resolve(op.module, known)
        if path is None:
            continue
        parts = path.split(".")
        for i in range(len(parts), 0, -1):
            if (prefix := ".".join(parts[:i])) in known:
                taps[prefix] = op
    return taps


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------
def module_order(model: nn.Module, sample) -> tuple[list[str], dict[str, str], dict[str, int]]:
    """Every module whose output is one tensor, in the order they finish on `sample`, with its
    class name and the bytes of its output per input row. A module called more than once (the ReLU
    a ResNet block applies twice) is placed and measured at its last call: the artifact's operations
    carry the module's name, not the call, and its tensor is the last operation inside it."""
    import torch

    clock = itertools.count()
    finished: dict[str, int] = {}  # module -> when it last finished
    kinds: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor):
                finished[name] = next(clock)
                kinds[name] = type(module).__name__
                sizes[name] = 4 * output[0].numel()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return sorted(finished, key=finished.__getitem__), kinds, sizes


def weighted_depths(model: nn.Module, order: list[str]) -> dict[str, int]:
    """For each module of `order` (execution order, as module_order records it), the number of
    convolutions and Linears among it and the modules before it: the layers whose rounding its
    output carries. A container finishes after its children, so it counts them too."""
    from torch import nn

    # every convolution (transposed ones too) and Linear, as roofline.model_cost counts them
    kinds = {name for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
    depths, k = {}, 0
    for name in order:
        k += name in kinds
        depths[name] = k
    return depths


def reference_outputs(model: nn.Module, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The outputs of the `names` modules on `batch` at their last call (see module_order), copied
    as they leave the module (an in-place ReLU after a convolution would otherwise overwrite what
    the convolution produced)."""
    import torch

    wanted = set(names)
    out: dict[str, np.ndarray] = {}

    def hook(name):
        def record(module, args, output):
            out[name] = output.detach().float().numpy().copy()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in wanted]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(batch))
    finally:
        for h in handles:
            h.remove()
    return out


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------
def measure(y: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(relative L2 error, max abs, worst row's cosine) of `y` against `ref`, in float64."""
    if not np.isfinite(y).all():
        return math.inf, math.inf, -1.0
    rows_y, rows_ref = y.reshape(len(y), -1), ref.reshape(len(ref), -1)
    max_abs = float(np.abs(rows_y.astype(np.float64) - rows_ref).max()) if y.size else 0.0
    cos = cosine_similarity(rows_y, rows_ref)  # rows off on both sides (a ReLU) count as 1
    return rel_l2(y, ref), max_abs, float(cos.min()) if cos.size else 1.0


def slices(names: list[str], sizes: dict[str, int], rows: int, budget: int) -> list[list[str]]:
    """Consecutive groups of modules whose recorded outputs (`rows` each) fit `budget` bytes."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        need = sizes[name] * rows
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += need
    return [g for g in groups if g]


def compare_layers(manifest: Manifest, artifact: Artifact, runner_cls: type, batch: np.ndarray,
                   limit: float | None, threads: int | None = None, cap: float | None = None,
                   floor: float | None = None) -> LayerReport:
    """Every module of the reference model against the artifact's tensor for it, on the first
    LAYER_ROWS rows of `batch`. `limit` is the precision's per-layer rel_l2 limit at AlexNet's depth
    (None: none), `cap` the most and `floor` the least any depth gets (tolerances.layer_limit)."""
    import torch

    from alexnet_deploy.checks import reference_model
    from alexnet_deploy.errors import CheckFailed
    from alexnet_deploy.manifest import verify_integrity

    problem = verify_integrity(manifest, artifact)  # never load a file that changed after export
    if problem:
        raise CheckFailed(problem)
    rows = np.ascontiguousarray(batch[:LAYER_ROWS])
    model = reference_model(manifest)
    order, kinds, sizes = module_order(model, torch.from_numpy(rows[:1]))
    depths = weighted_depths(model, order)
    limits = {n: None if limit is None else layer_limit(limit, depths[n], cap, floor) for n in order}
    runner = runner_cls.from_artifact(manifest, artifact, threads=threads)
    taps = choose_taps(runner.layer_ops(), order)
    tapped = [n for n in order if n in taps]
    if not tapped:  # otherwise every module reads "fused" and the result looks honest
        raise CheckFailed(f"{artifact.path}: none of its operations names a PyTorch module (its "
                          "export, or a tool run on it since, dropped the module scopes)")
    biggest = sorted((sizes[n] * len(rows) for n in tapped), reverse=True)[:2]
    budget = max(artifact.bytes, sum(biggest))
    groups = slices(tapped, sizes, len(rows), budget)
    report = LayerReport(rows=len(rows), slices=len(groups))
    measured: dict[str, LayerResult] = {}
    for group in groups:
        ref = reference_outputs(model, rows, group)
        got = runner.infer_layers(rows, [taps[n] for n in group])
        report.recorded_mb = max(report.recorded_mb, 2 * sum(sizes[n] for n in group) * len(rows) / 2**20)
        for name, y in zip(group, got, strict=True):
            measured[name] = judge_layer(name, f"{kinds[name]} / {taps[name].kind}", y, ref[name], limits[name])
            if needs_second_look(runner_cls, measured[name], report, measured):
                [alone] = runner.infer_layers(rows, [taps[name]])
                measured[name] = judge_layer(name, measured[name].kind, alone, ref[name], limits[name])
                report.remeasured.append(name)
        del ref, got
    for name in order:
        measured.setdefault(name, LayerResult(name, kinds[name], FUSED, limit=limits[name]))
        measured[name].depth = depths[name]
        report.layers.append(measured[name])
    report.first_divergence = first_divergence(report.layers)
    return report


def needs_second_look(runner_cls: type, result: LayerResult, report: LayerReport,
                      measured: dict[str, LayerResult]) -> bool:
    """A failure read beside other marked tensors, on a runner whose marks can change what it
    computes, before any failure measured alone has held (past one, failing is expected: each
    later module reads a real divergence, and measuring them all alone would cost a compile each)."""
    if result.status != FAIL or not runner_cls.layer_marks_interfere:
        return False
    return not any(measured[n].status == FAIL for n in report.remeasured)


def judge_layer(name: str, kind: str, y: np.ndarray, ref: np.ndarray, limit: float | None) -> LayerResult:
    if y.shape != ref.shape:
        return LayerResult(name, kind, MISMATCH, limit=limit)
    rel, max_abs, cos = measure(y, ref)
    status = FAIL if (limit is not None and not rel <= limit) else OK
    return LayerResult(name, kind, status, rel_l2=rel, max_abs=max_abs, cosine=cos, limit=limit)


def first_divergence(layers: list[LayerResult]) -> dict[str, Any] | None:
    """The first module in execution order past its limit; its children come before it, so a
    container is never named ahead of the layer inside it that diverged."""
    for layer in layers:
        if layer.status == FAIL:
            return {"module": layer.module, "rel_l2": layer.rel_l2, "cosine": layer.cosine}
    return None
