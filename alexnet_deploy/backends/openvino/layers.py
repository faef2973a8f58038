"""Which PyTorch module each operation of an OpenVINO model came from, for `validate --layers`.

OpenVINO names an operation converted from ONNX after the ONNX node (`node_conv2d`), with a suffix
for pieces it split off or added (`node_conv2d/WithoutBiases`, `node_relu/fq_output_0` for NNCF's
FakeQuantize): the part before the first "/" is looked up in the ONNX export's module map, which
OpenVINO carries into the model's rt_info under "framework" (see backends/onnx/layers.py).
"""

from __future__ import annotations

import json
from typing import Any

from alexnet_deploy.backends.onnx import MODULES_KEY
from alexnet_deploy.runtimes import LayerOp

SKIPPED = {"Parameter", "Result", "Constant"}


def module_map(model: Any) -> dict[str, str]:
    """The export's {ONNX node name: module path}, or {} when the model carries none (an IR
    exported before the map existed, or converted from elsewhere)."""
    path = ["framework", MODULES_KEY]
    if not model.has_rt_info(path):
        return {}
    try:
        raw = json.loads(model.get_rt_info(path).astype(str))
    except (ValueError, TypeError):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(raw, dict) else {}


def model_ops(model: Any) -> list[LayerOp]:
    """Operations that depend on the input, in topological order; weight subgraphs (a constant's
    Convert and scale) are left out so a layer's tensor is never its weights."""
    modules = module_map(model)
    live: set[str] = set()
    ops = []
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        feeds = {v.get_node().get_friendly_name() for v in op.input_values()}
        if kind == "Parameter":
            live.add(name)
        if kind in SKIPPED or not feeds & live:
            continue
        live.add(name)
        ops.append(LayerOp(key=name, kind=kind, module=modules.get(name.split("/")[0])))
    return ops
