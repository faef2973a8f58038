"""Modules that torch.onnx would decompose, exported as the one ONNX operator they are.

`nn.LocalResponseNorm` is Python over pad / avg_pool3d / pow / div, so torch.export (and with it the
dynamo ONNX exporter) sees only that decomposition; TensorRT and OpenVINO run `LRN` natively. For
the ONNX export alone, each such module is swapped (in a copy of the model) for a custom op whose
translation writes the operator; the eager model and the torch formats never see the custom op.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.library.custom_op("alexnet_deploy::local_response_norm", mutates_args=())
def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return nn.functional.local_response_norm(x, size, alpha, beta, k)


@local_response_norm.register_fake
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


def _lrn_onnx(x, size: int, alpha: float, beta: float, k: float):
    from onnxscript import opset18 as op

    # Same formula: x / (k + alpha / size * sum of squares over `size` channels) ** beta
    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)


class _LrnOp(nn.Module):
    def __init__(self, lrn: nn.LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = lrn.size, float(lrn.alpha), float(lrn.beta), float(lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.alexnet_deploy.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


def _swappable(module: nn.Module) -> bool:
    # ONNX pads (size-1)//2 channels before, PyTorch size//2: the same window for odd sizes only.
    return isinstance(module, nn.LocalResponseNorm) and module.size % 2 == 1


def with_onnx_operators(model: nn.Module) -> tuple[nn.Module, dict]:
    """(the model to export, its custom_translation_table): `model` itself and {} when nothing
    is swapped, else a copy with each swappable module replaced."""
    if not any(_swappable(m) for m in model.modules()):
        return model, {}
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if _swappable(child):
                setattr(parent, name, _LrnOp(child))
    return model, {torch.ops.alexnet_deploy.local_response_norm.default: _lrn_onnx}
