"""Triton Inference Server: the model repository written from the other artifacts."""
