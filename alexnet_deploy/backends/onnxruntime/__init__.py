"""ONNX Runtime: runners on the CPU, CUDA and TensorRT execution providers."""
