"""TensorRT: engine builds from the exported ONNX and the engine runner, through the 10.x / 11.x API."""
