"""`validate --layers` for TensorRT engines: which tensors can be read, and the engine that outputs them.

A built engine keeps neither module names nor most intermediate tensors (fused layers never write
theirs to memory), so the layers are read from a *tapped* engine instead: the engine's network parsed
again from its source ONNX (named in the sidecar, with its sha256), the chosen tensors marked as extra
network outputs, built with the engine's own settings. TensorRT's ONNX parser names every ITensor after
the ONNX tensor it computes, so the ONNX export's module scopes (backends/onnx/layers.py) name them.

The tapped engine is a diagnostic twin of the shipped one, not the same engine: a network output has to
be written to memory in full, so TensorRT cannot fuse across it (a convolution into its ReLU, a Q/DQ pair
into its layer) and may pick other kernels. A fault in the weights or graph shows in both; an error
of one fused kernel that only the shipped engine runs may not.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from alexnet_deploy.backends.tensorrt.export import BuildSettings, build_plan, configure, parse_network
from alexnet_deploy.backends.tensorrt.util import Sidecar
from alexnet_deploy.card import printable
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.files import sha256_file
from alexnet_deploy.manifest import contained, lexical_problem

CAVEAT = ("layers read from a tapped twin of the engine (rebuilt from its source ONNX with these "
          "tensors as outputs, which TensorRT cannot fuse across)")


def build_settings(root: Path | None, sidecar: Sidecar, shown: str) -> BuildSettings:
    """How the engine was built, from its sidecar, with the source ONNX checked to be the very file
    it was built from (a tapped twin of another ONNX would explain nothing about the engine)."""
    if root is None:
        raise UserError(f"comparing the layers of {printable(shown)} needs its export folder (run it "
                        "from the export's manifest)")
    known = {f.name for f in fields(BuildSettings)}
    if not sidecar.settings.get("source_onnx") or not known <= set(sidecar.settings):
        raise UserError(f"{printable(shown)} has no sidecar recording how it was built from which "
                        "ONNX: re-export it with this version of alexnet-deploy to compare its layers")
    s = BuildSettings(**{k: sidecar.settings[k] for k in known})
    source = contained(root, s.source_onnx)
    if sha256_file(source) != s.source_sha256:
        raise CheckFailed(f"{printable(s.source_onnx)}, the ONNX {printable(shown)} was built from, changed "
                          "after the build: its layers would not be the engine's; re-export both")
    return s


def network_tensors(network: Any) -> dict[str, Any]:
    """Every tensor a layer of the parsed network computes, by name."""
    found = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            found[tensor.name] = tensor
    return found


def is_activation(trt: Any, tensor: Any) -> bool:
    # shape tensors live on the host and a Quantize's int8 output is not the module's value:
    # neither is a layer's output to compare
    return not tensor.is_shape_tensor and tensor.dtype in (trt.DataType.FLOAT, trt.DataType.HALF)


def mark_outputs(trt: Any, network: Any, names: list[str]) -> set[str]:
    """Mark `names` as network outputs; return those the network now outputs. A name missing from
    the parsed network (TensorRT folded it away) or refused by mark_output (TensorRT logs why and
    leaves the tensor unmarked) is left out: its module is reported "fused"."""
    tensors = network_tensors(network)
    usable = {n: tensors[n] for n in names if n in tensors and is_activation(trt, tensors[n])}
    for tensor in usable.values():
        if not tensor.is_network_output:
            network.mark_output(tensor)
    return {n for n, tensor in usable.items() if tensor.is_network_output}


def readable(trt: Any, root: Path, s: BuildSettings, names: list[str]) -> set[str]:
    """The `names` a tapped engine can output, found on a parsed network (no build)."""
    builder, logger = _builder(trt)
    network, _parser = parse_network(trt, builder, logger, root, s)
    return mark_outputs(trt, network, names)


def build_tapped(trt: Any, root: Path, s: BuildSettings, names: list[str]) -> Any:
    """The serialized tapped engine outputting `names` (all of them readable) besides its own outputs.
    The export's timing cache gives the build a head start; it is read, never written (validate leaves
    the export folder as it found it)."""
    builder, logger = _builder(trt)
    network, _parser = parse_network(trt, builder, logger, root, s)  # the parser owns the weights
    missing = set(names) - mark_outputs(trt, network, names)
    if missing:
        raise CheckFailed(f"TensorRT would not output {', '.join(sorted(missing))} of {s.source_onnx}")
    return build_plan(builder, network, configure(trt, builder, s, _timing_cache(root, s)), s)


def _builder(trt: Any) -> tuple[Any, Any]:
    logger = trt.Logger(trt.Logger.WARNING)
    return trt.Builder(logger), logger


def _timing_cache(root: Path, s: BuildSettings) -> Path | None:
    """The export's timing cache when the sidecar names one inside the export folder, else None."""
    if lexical_problem(s.timing_cache) or not (root / s.timing_cache).exists():
        return None
    return contained(root, s.timing_cache)
