"""What the ONNX files carry besides the graph: module name scopes yes, the exporting machine's
source paths (the exporter's stack traces) no."""

from __future__ import annotations

import site
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TEST_IMAGE_SIZE

pytestmark = pytest.mark.slow

SCOPES = "pkg.torch.onnx.name_scopes"


def _all_nodes(graph):
    """Every node of `graph`, with those of subgraphs held in attributes (If, Loop, Scan)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _machine_paths() -> list[str]:
    """Folders whose names would tell where, and by whom, a file was exported."""
    paths = {str(REPO), sys.prefix, sys.base_prefix, str(Path(torch.__file__).parents[1]),
             str(Path.home()), *site.getsitepackages()}
    return sorted(p for p in paths if len(p) > 1)


@pytest.fixture(scope="module")
def onnx_files(random_export) -> dict[str, Path]:
    """The onnx exporter's three files (fp32, fp16, int8) in the session's untrained export."""
    from alexnet_deploy.manifest import Manifest

    manifest = Manifest.read(random_export)
    files = {a.precision: manifest.path_of(a) for a in manifest.find("onnx")}
    assert set(files) == {"fp32", "fp16", "int8"} and manifest.card.input.crop == TEST_IMAGE_SIZE
    return files


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_nodes_keep_module_scopes_but_no_stack_traces(onnx_files, precision):
    import onnx

    proto = onnx.load(str(onnx_files[precision]))
    nodes = [n for g in (proto.graph, *proto.functions) for n in _all_nodes(g)]
    keys = {p.key for n in nodes for p in n.metadata_props}
    assert not [k for k in keys if "stack_trace" in k], sorted(keys)
    leaks = [(n.name, p.key, path) for n in nodes for p in n.metadata_props for path in _machine_paths()
             if path in p.value]
    assert not leaks, leaks[:5]
    # the name scopes map each compute node back to its PyTorch module (features.0, classifier.6)
    compute = [n for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert compute
    for n in compute:
        scopes = {p.key: p.value for p in n.metadata_props}.get(SCOPES)
        assert scopes and ("features." in scopes or "classifier." in scopes), (n.name, n.op_type, scopes)
