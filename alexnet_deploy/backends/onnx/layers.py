"""Which PyTorch module each node of an exported ONNX graph came from, for `validate --layers`.

torch.onnx's dynamo exporter writes every node's module scopes into its metadata
(pkg.torch.onnx.name_scopes: the module path from the root, then the operation). ONNX Runtime's
quantizer adds QuantizeLinear / DequantizeLinear nodes without metadata: they belong to the tensor
they quantize. The export also writes the whole map as a model property (MODULES_KEY) because
OpenVINO keeps model properties (rt_info "framework") but not node metadata.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from alexnet_deploy.runtimes import LayerOp

MODULES_KEY = "modules"  # model property: {node name: module path}, JSON
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
MAX_SCOPES_CHARS = 4096  # longer metadata is not the exporter's: ignored
FOLLOWERS = {"QuantizeLinear", "DequantizeLinear", "Cast"}  # belong to the tensor they convert


def node_module(node: Any) -> str | None:
    """The innermost module path of a node, from its name-scope metadata (None: none)."""
    raw = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    if raw is None or len(raw) > MAX_SCOPES_CHARS:
        return None
    try:
        scopes = ast.literal_eval(raw)  # the exporter writes a Python-style list of strings
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2 or not all(isinstance(s, str) for s in scopes):
        return None
    return scopes[-2] or None


def module_map(proto: Any) -> dict[str, str]:
    """{node name: module path} for every node whose metadata names one, and the same for its
    output tensors' names (OpenVINO names an operation after a graph output it produces)."""
    out = {}
    for node in proto.graph.node:
        module = node_module(node)
        if module:
            for name in [node.name, *node.output]:
                if name:
                    out.setdefault(name, module)
    return out


def graph_ops(proto: Any) -> list[LayerOp]:
    """The graph's nodes in order (ONNX keeps them topologically sorted) as LayerOps keyed by their
    first output; nodes without scopes that convert another node's output inherit its module."""
    produced_by: dict[str, str | None] = {}
    ops = []
    for node in proto.graph.node:
        if not node.output:
            continue
        module = node_module(node)
        if module is None and node.op_type in FOLLOWERS and node.input:
            module = produced_by.get(node.input[0])
        for name in node.output:
            produced_by[name] = module
        ops.append(LayerOp(key=node.output[0], kind=node.op_type, module=module))
    return ops


def with_outputs(proto: Any, names: list[str]) -> Any:
    """A copy of `proto` whose graph also outputs the tensors `names` (types from value_info when
    shape inference recorded them, else left for the runtime to infer)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    typed = {v.name: v for v in list(copy.graph.value_info) + list(copy.graph.output)}
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name in present:
            continue
        info = typed.get(name)
        if info is not None:
            copy.graph.output.append(info)
        else:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        present.add(name)
    return copy


def modules_property(proto: Any) -> dict[str, str]:
    """The model property export writes: {MODULES_KEY: JSON of module_map}."""
    return {MODULES_KEY: json.dumps(module_map(proto), separators=(",", ":"))}
