"""Importing this module registers every runner: one module per backend.

Registration order is the order `runners_for` lists them and the order export's post-export check
tries them in (the first available runner that accepts an artifact on its device checks it), so
the imports below are ordered on purpose, not alphabetically.
"""
# ruff: noqa: I001, F401

# CPU runners; torch eager is the reference every other runner is compared with
from alexnet_deploy.runtimes import torch_runners
from alexnet_deploy.runtimes import onnxruntime_runner
from alexnet_deploy.runtimes import openvino_runner

# GPU runners (helper B2): heavy runtimes are imported only when a runner is activated
from alexnet_deploy.runtimes import onnxruntime_cuda, tensorrt_runner
