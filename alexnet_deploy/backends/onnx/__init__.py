"""ONNX: the dynamo export, fp16 conversion and int8 QDQ quantization, with the card in metadata_props.

What other backends use of it: the module scopes an export records in its files (`MODULES_KEY`), and
how a runner reads a graph's operations and taps their outputs (`graph_ops`, `with_outputs`), for the
runtimes that run these files (onnxruntime, TensorRT) and OpenVINO, which carries the same metadata."""

from alexnet_deploy.backends.onnx.layers import MODULES_KEY, graph_ops, with_outputs

__all__ = ["MODULES_KEY", "graph_ops", "with_outputs"]
