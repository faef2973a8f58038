"""The Runner interface (after Polygraphy: activate / infer / deactivate, public methods check,
subclasses implement `*_impl`) and the registry every command dispatches through.

Runners live in their backend's package (alexnet_deploy/backends/<name>/runner.py); heavy runtimes
(onnxruntime, openvino, tensorrt) are imported only inside `activate`, so listing runners costs nothing."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from alexnet_deploy.card import printable
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.registry import Registry

# Order matters: `runners_for` lists runners in it and export's post-export check takes the first
# available one that accepts an artifact; torch eager (the reference) comes first. Adding a backend
# is one line here per runner it brings.
RUNNERS = Registry("runner", (
    ("torch-eager", "alexnet_deploy.backends.torch.runner:TorchEagerRunner"),
    ("torchscript", "alexnet_deploy.backends.torch.runner:TorchScriptRunner"),
    ("torch-export", "alexnet_deploy.backends.torch.runner:TorchExportRunner"),
    ("aoti", "alexnet_deploy.backends.torch.runner:AotiRunner"),
    ("torch-eager-cuda", "alexnet_deploy.backends.torch.runner:TorchEagerCudaRunner"),
    ("torchscript-cuda", "alexnet_deploy.backends.torch.runner:TorchScriptCudaRunner"),
    ("torch-export-cuda", "alexnet_deploy.backends.torch.runner:TorchExportCudaRunner"),
    ("aoti-cuda", "alexnet_deploy.backends.torch.runner:AotiCudaRunner"),
    ("onnxruntime-cpu", "alexnet_deploy.backends.onnxruntime.runner:OrtCpuRunner"),
    ("openvino", "alexnet_deploy.backends.openvino.runner:OpenVinoRunner"),
    ("openvino-bf16", "alexnet_deploy.backends.openvino.runner:OpenVinoBf16Runner"),
    ("onnxruntime-cuda", "alexnet_deploy.backends.onnxruntime.runner:OrtCudaRunner"),
    ("onnxruntime-tensorrt", "alexnet_deploy.backends.onnxruntime.runner:OrtTensorRTRunner"),
    ("tensorrt", "alexnet_deploy.backends.tensorrt.runner:TensorRTRunner"),
))


def get_runner(name: str) -> type[Runner]:
    if name not in RUNNERS:
        raise UserError(f"unknown backend {name!r}; choose from: {', '.join(RUNNERS)}")
    return RUNNERS[name]


class Runner(ABC):
    """Runs one artifact. `infer` takes float32 NCHW numpy and returns float32 logits."""

    name: ClassVar[str]  # registry name, e.g. "onnxruntime-cpu"
    formats: ClassVar[tuple[str, ...]]  # manifest formats it executes
    device: ClassVar[str] = "cpu"  # "cpu" or "cuda"

    def __init__(self, manifest: Manifest, artifact: Artifact, threads: int | None = None) -> None:
        self.manifest = manifest
        self.artifact = artifact
        self.threads = threads
        self.active = False
        self.load_s: float | None = None

    @classmethod
    def from_artifact(cls, manifest: Manifest, artifact: Artifact, threads: int | None = None) -> Runner:
        """The runner for one artifact of an export."""
        return cls(manifest, artifact, threads)

    # -- what applies where ----------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this runner can run on this machine, else why not (missing package, no GPU)."""
        return None

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.format in cls.formats

    @classmethod
    def as_executed(cls, artifact: Artifact) -> Artifact:
        """The artifact as this runner computes it. A runner that computes in a lower precision
        than the file stores (OpenVINO's bf16 hint on fp32 weights) returns a copy labelled with
        that precision, so validate's limits, benchmark's floor and reports follow what runs."""
        return artifact

    # -- properties used by reports --------------------------------------------------------
    @property
    def format(self) -> str:
        return self.artifact.format

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def label(self) -> str:
        return f"{self.name} [{self.artifact.precision}]"

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.active:
            reason = self.unavailable_reason()
            if reason:
                raise UserError(f"backend {self.name} cannot run here: {reason}")
            t0 = time.perf_counter()
            self.activate_impl()
            self.load_s = time.perf_counter() - t0
            self.active = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.active:
            raise RuntimeError(f"{self.name}: call activate() before infer()")
        self.check_input(batch)
        out = np.asarray(self.infer_impl(batch), dtype=np.float32)
        self.check_output(batch, out)
        return out

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def check_input(self, batch: np.ndarray) -> None:
        expected = tuple(self.manifest.card.input.shape)
        lo, hi = self.artifact.batch.min, self.artifact.batch.max
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = getattr(batch, "dtype", type(batch).__name__)
            raise UserError(f"{self.name}: expected a float32 numpy array, got {got}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise UserError(f"{self.name}: expected input of shape (N, {', '.join(map(str, expected))}), "
                            f"got {tuple(batch.shape)}")
        if not lo <= batch.shape[0] <= hi:
            raise UserError(f"{self.name}: batch size {batch.shape[0]} is outside the artifact's "
                            f"range {lo}..{hi}; re-export with a larger --max-batch")

    def check_output(self, batch: np.ndarray, out: np.ndarray) -> None:
        """The artifact's real output must be one row of card.num_classes logits per image: a card
        that lists other classes than the file computes would name the wrong class."""
        n = self.manifest.card.num_classes
        if out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise CheckFailed(f"{printable(self.artifact.path)} returned output of shape {out.shape} for a "
                              f"batch of {batch.shape[0]}; expected ({batch.shape[0]}, {n}): re-export it")
        if out.shape[1] != n:
            raise CheckFailed(f"the card lists {n} classes but {printable(self.artifact.path)} outputs "
                              f"{out.shape[1]} logits: the manifest does not match the artifact; re-export")

    def check_declared_input(self, dims: list) -> None:
        """`dims` (the artifact's declared input, symbolic dims as strings or None) must take the
        card's image shape: else every image would fail deep inside the runtime."""
        expected = list(self.manifest.card.input.shape)
        fixed = [d if isinstance(d, int) and d > 0 else None for d in list(dims)[1:]]
        if len(fixed) != len(expected) or any(d is not None and d != e for d, e in zip(fixed, expected, strict=True)):
            shown = "x".join("?" if d is None else str(d) for d in fixed)
            raise CheckFailed(f"the card's input is {'x'.join(map(str, expected))} but "
                              f"{printable(self.artifact.path)} takes {shown}: the manifest does not match "
                              "the artifact; re-export")

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    def deactivate_impl(self) -> None:  # noqa: B027  (optional hook; most runtimes need nothing)
        """Release the session / engine; the default drops references for the GC."""


@dataclass
class RunnerChoice:
    """One (runner, artifact) pair a command may run, or the reason it cannot."""

    runner: str
    artifact: Artifact
    reason: str | None = None  # None means available

    @property
    def available(self) -> bool:
        return self.reason is None


def runners_for(manifest: Manifest, names: list[str] | None = None) -> list[RunnerChoice]:
    """Every runner that applies to an artifact in the manifest, with its availability.

    `names` restricts to those runners; an unknown name is a UserError listing the valid ones.
    """
    if names:
        for n in names:
            get_runner(n)
    choices = []
    for name, cls in RUNNERS.items():
        if names and name not in names:
            continue
        for art in [manifest.weights_artifact(), *manifest.artifacts]:
            if cls.accepts(art):
                choices.append(RunnerChoice(name, cls.as_executed(art), cls.unavailable_reason()))
    return choices
