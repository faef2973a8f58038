"""What torch's exports, runners and the reference computation share: the process-wide settings
they change (torch has no per-module thread count or TF32 switch), captured so they go back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def _tf32_switches() -> tuple[Any, ...]:
    """The TF32 switches of torch's per-backend precision API: CUDA matmul, cuDNN convolutions and
    cuDNN RNNs, each `fp32_precision` = "ieee", "tf32" or "none" (inherit). Written only through
    this API: torch refuses to read its legacy `allow_tf32` flags once the two are mixed."""
    import torch

    b = torch.backends
    return b.cuda.matmul, b.cudnn.conv, b.cudnn.rnn


def set_tf32(allowed: bool) -> None:
    """TF32 rounds CUDA matmul/conv inputs to 10 mantissa bits: fp32 references, fp32 builds and
    fp32 checks must not use it."""
    for switch in _tf32_switches():
        switch.fp32_precision = "tf32" if allowed else "ieee"


@dataclass(frozen=True)
class TorchGlobals:
    """The process-wide torch settings a runner or an export may change, as they were."""

    threads: int
    fp32_precision: tuple[str, ...]  # of each TF32 switch, in _tf32_switches() order

    @classmethod
    def capture(cls) -> TorchGlobals:
        import torch

        return cls(torch.get_num_threads(), tuple(s.fp32_precision for s in _tf32_switches()))

    def restore(self) -> None:
        """Put back only what differs: a setting never changed is never written (torch tracks
        which API wrote its TF32 state, and refuses legacy reads once the two are mixed)."""
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        for switch, value in zip(_tf32_switches(), self.fp32_precision, strict=True):
            if switch.fp32_precision != value:
                switch.fp32_precision = value


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for the block; the previous settings come back on exit."""
    saved = TorchGlobals.capture()
    set_tf32(False)
    try:
        yield
    finally:
        saved.restore()


# ---------------------------------------------------------------------------------------------
# validate --layers on torch.export programs
# ---------------------------------------------------------------------------------------------
def graph_ops(module: Any) -> list:
    """An fx graph's computing nodes in order, each with the innermost module of its
    nn_module_stack (torch.export records the module path, e.g. features.3)."""
    from alexnet_deploy.runtimes import LayerOp

    ops = []
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else None
        ops.append(LayerOp(key=node.name, kind=getattr(node.target, "__name__", str(node.target)),
                           module=path or None))
    return ops


def run_recording(module: Any, x: Any, names: set[str]) -> dict[str, Any]:
    """Run an fx GraphModule on `x`, keeping a copy of each named node's output as it is produced
    (an in-place relu_ after a convolution would otherwise overwrite it)."""
    import torch.fx

    found: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in names and hasattr(out, "clone"):
                found[n.name] = out.detach().clone()
            return out

    Recorder(module).run(x)
    return found
