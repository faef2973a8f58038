"""The Runner interface (after Polygraphy: activate / infer / deactivate, public methods check,
subclasses implement `*_impl`) and the registry every command dispatches through.

A runner is built from what it runs: a file, the model card, the batch range (and threads);
`Runner.from_artifact` builds one from an export's manifest entry. What a runner can do beyond
`infer` on numpy is declared on its class (`device_tensors`, `computes_in`), never probed.

Runners live in their backend's package (alexnet_deploy/backends/<name>/runner.py); heavy runtimes
(onnxruntime, openvino, tensorrt) are imported only inside `activate`, so listing runners costs nothing."""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alexnet_deploy.card import ModelCard, printable
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.manifest import MAX_BATCH, Artifact, BatchRange, Manifest
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


def stored_precision(artifact: Artifact) -> str:
    """The precision the artifact's file holds (an `as_executed` copy is labelled with the one it
    is computed in and keeps the stored one in extra)."""
    return artifact.extra.get("stored_precision", artifact.precision)


@dataclass(frozen=True)
class LayerOp:
    """One operation of a runner's file for `validate --layers`: `key` is what the runner needs to
    read its output (a tensor name, an operation's friendly name, an fx node name), `module` the raw
    PyTorch module path it came from (None: unknown)."""

    key: str
    kind: str
    module: str | None


Done = Callable[[np.ndarray, float], None]  # (logits, the request's own latency in ms)


class InFlight:
    """Up to `n` requests of one active runner at once (`benchmark --concurrency`): submit() returns
    once the request has started (it waits while n are running) and `done(logits, latency_ms)` is
    called from the runtime's thread when it completes. This default runs `infer` on n threads:
    ONNX Runtime sessions and torch modules may be called from several threads at once (both
    release the GIL while they compute). Runtimes with their own asynchronous machinery override
    Runner.in_flight (OpenVINO's AsyncInferQueue)."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._infer, self._n, self._slots = infer, n, threading.Semaphore(n)
        self.streams: int | None = None  # the runtime's own streams serving the requests, where it has them
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="in-flight")
        self.errors: list[BaseException] = []

    def submit(self, batch: np.ndarray, done: Done) -> None:
        self._slots.acquire()
        self._pool.submit(self._run, batch, done)

    def _run(self, batch: np.ndarray, done: Done) -> None:
        try:
            t0 = time.perf_counter()
            out = self._infer(batch)
            done(out, (time.perf_counter() - t0) * 1e3)
        except BaseException as e:  # raised by drain in the caller's thread
            self.errors.append(e)
        finally:
            self._slots.release()

    def drain(self) -> None:
        """Block until every submitted request completed; re-raise the first failure."""
        for _ in range(self._n):
            self._slots.acquire()
        for _ in range(self._n):
            self._slots.release()
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class CudaStreamsInFlight(InFlight):
    """InFlight on a CUDA device, one stream per request slot (as trtexec --streams): a request
    copies its batch in, computes and copies the logits out on its slot's stream, so requests overlap
    on the GPU instead of queueing on the default stream; `.cpu()` waits for that stream alone, and
    the latency includes both copies, as a serving client sees it. `calls[i]` runs a device tensor on
    the current stream (the same callable for every slot where the runtime may be entered from
    several streams at once, one per slot where it may not: a TensorRT execution context);
    `release` frees what the slots held, on close."""

    def __init__(self, calls: list[Callable[[Any], Any]], device: str,
                 release: Callable[[], None] | None = None) -> None:
        import queue

        super().__init__(self._on_a_stream, len(calls))
        self._calls, self._device, self._release = calls, device, release
        self._streams: list[Any] = [None] * len(calls)  # made on a slot's first request
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(len(calls)):
            self._free.put(slot)
        self.streams = len(calls)

    def _on_a_stream(self, batch: np.ndarray) -> np.ndarray:
        import torch

        slot = self._free.get()  # never blocks: InFlight admits at most n requests
        try:
            if self._streams[slot] is None:
                self._streams[slot] = torch.cuda.Stream(self._device)
            with torch.cuda.stream(self._streams[slot]):
                out = self._calls[slot](torch.from_numpy(batch).to(self._device))
                return out.float().cpu().numpy()
        finally:
            self._free.put(slot)

    def close(self) -> None:
        super().close()
        if self._release is not None:
            self._release()


class Runner(ABC):
    """Runs one model file. `infer` takes float32 NCHW numpy and returns float32 logits; a runner
    that declares `device_tensors` also runs torch tensors already on its device (`infer_device`)."""

    name: ClassVar[str]  # registry name, e.g. "onnxruntime-cpu"
    formats: ClassVar[tuple[str, ...]]  # manifest formats it executes
    device: ClassVar[str] = "cpu"  # "cpu" or "cuda"
    # Declared capabilities (callers read these instead of probing for methods):
    device_tensors: ClassVar[bool] = False  # infer_device() takes and returns torch tensors on `device`
    computes_in: ClassVar[str | None] = None  # a precision it computes in whatever the file stores (bf16)
    # in_flight(n, streams=k) splits the threads into k of the runtime's own streams (OpenVINO);
    # runners without them serve every request from one pool of threads
    has_streams: ClassVar[bool] = False
    # in_flight(n) runs each request on a CUDA stream of its own (CudaStreamsInFlight), on the
    # callables stream_calls(n) gives; without, requests share the thread's current stream
    cuda_streams: ClassVar[bool] = False
    # layer_ops() / infer_layers() for `validate --layers`; else why not, in one line
    layer_taps: ClassVar[bool] = False
    no_layers_reason: ClassVar[str] = "this runner cannot read intermediate tensors"
    layers_caveat: ClassVar[str | None] = None  # what the layer figures are of, when not the artifact itself
    # marking some outputs can change what the runtime computes for others: validate --layers
    # measures a failing module again with its tensor alone marked before it believes the failure
    layer_marks_interfere: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike, card: ModelCard, batch: BatchRange | None = None, *,
                 threads: int | None = None, precision: str = "fp32", shown: str | None = None) -> None:
        """`path`: the file (or folder) to load; `card`: the input it takes and the classes it
        outputs; `batch`: the batch sizes it accepts (default: any); `precision`: what the file
        stores; `shown`: how messages name the file (default: its name)."""
        self.path = Path(path)
        self.card = card
        self.batch = batch if batch is not None else BatchRange(1, MAX_BATCH)
        self.threads = threads
        self.precision = precision
        self.shown = shown if shown is not None else self.path.name
        self.active = False
        self.load_s: float | None = None

    @classmethod
    def from_artifact(cls, manifest: Manifest, artifact: Artifact, threads: int | None = None) -> Runner:
        """The runner for one artifact of an export (its path contained in the export folder)."""
        return cls(manifest.path_of(artifact), manifest.card, artifact.batch, threads=threads,
                   **cls.options_from(manifest, artifact))

    @classmethod
    def options_from(cls, manifest: Manifest, artifact: Artifact) -> dict[str, Any]:
        """The keyword arguments this runner takes from a manifest entry besides path, card and
        batch range; runners that need more (a cache key, a sidecar) extend it."""
        return {"precision": stored_precision(artifact), "shown": artifact.path}

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
        """The artifact as this runner computes it. A runner that computes in another precision
        than the file stores (`computes_in`: OpenVINO's bf16 hint on fp32 weights) returns a copy
        labelled with that precision, so validate's limits, benchmark's floor and reports follow
        what runs; the stored precision stays in extra["stored_precision"]."""
        if cls.computes_in is None or cls.computes_in == artifact.precision:
            return artifact
        return artifact.model_copy(update={"precision": cls.computes_in, "extra": {
            **artifact.extra, "stored_precision": artifact.precision,
            "computed_in": f"{cls.computes_in} ({cls.name})"}})

    # -- what reports show -----------------------------------------------------------------
    @property
    def effective_precision(self) -> str:
        """The precision it computes in (manifest names: fp32, fp16, bf16, int8)."""
        return self.computes_in or self.precision

    def runtime_precision(self) -> str | None:
        """What the runtime itself reports computing in, for runtimes that report it, else None."""
        return None

    @property
    def label(self) -> str:
        return f"{self.name} [{self.effective_precision}]"

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
        self._require_active("infer")
        self.check_input(batch)
        # Compiled artifacts (AOTInductor) read the buffer as C-order NCHW whatever its strides say:
        # a channels-last batch (torchvision's resize leaves one) would be silently misread.
        out = np.asarray(self.infer_impl(np.ascontiguousarray(batch)), dtype=np.float32)
        self.check_output(batch.shape[0], out.shape)
        return out

    def infer_device(self, x: Any) -> Any:
        """Run a float32 NCHW torch tensor already on this runner's device, on the current torch
        stream, and return the logits as a tensor on the device (the benchmark times this apart
        from the host<->device copies). Only for runners that declare `device_tensors`."""
        if not self.device_tensors:
            raise TypeError(f"{self.name} takes host arrays only: call infer() with a numpy array "
                            "(it does not declare device_tensors)")
        return self._checked_on_device(x, self.infer_device_impl)

    def _checked_on_device(self, x: Any, impl: Callable[[Any], Any]) -> Any:
        """`impl(x)` between infer_device's checks (also for a stream's own execution state)."""
        self._require_active("infer_device")
        self.check_device_input(x)
        out = impl(x)
        self.check_output(x.shape[0], tuple(out.shape))
        return out

    def in_flight(self, n: int, streams: int | None = None) -> InFlight:
        """Up to `n` concurrent requests on this active runner (see InFlight; close it after use),
        served by `streams` of the runtime's own streams (None: the runtime's choice) where it has
        them (`has_streams`); on a CUDA device each request has a stream of its own (`cuda_streams`)."""
        self._require_active("in_flight")
        if streams is not None and not self.has_streams:
            raise UserError(f"{self.name} has no streams of its own (--streams applies to OpenVINO's runners)")
        if self.cuda_streams:
            calls, release = self.stream_calls(n)
            return CudaStreamsInFlight(calls, self.device, release)
        return InFlight(self.infer, n)

    def stream_calls(self, n: int) -> tuple[list[Callable[[Any], Any]], Callable[[], None] | None]:
        """For `cuda_streams` runners: what each of n concurrent streams calls on a device tensor,
        and what frees it after (None: nothing). Entering one model from several streams at once
        is safe for torch modules; runtimes with per-execution state override this."""
        return [self.infer_device] * n, None

    # -- validate --layers -----------------------------------------------------------------
    def layer_ops(self) -> list[LayerOp]:
        """The file's operations in execution order, each with the module it came from."""
        raise NotImplementedError(f"{self.name}: {self.no_layers_reason}")

    def infer_layers(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        """The outputs of `ops` (from layer_ops) on `batch`, as float32, in chunks the artifact's
        batch range takes. Loads its own copy of the file with those tensors made outputs (adding
        outputs can stop a runtime fusing across them: what this measures is per layer)."""
        if not self.layer_taps:
            raise NotImplementedError(f"{self.name}: {self.no_layers_reason}")
        self.check_input(batch[: self.batch.max])
        step = self.batch.max
        parts = [self.infer_layers_impl(np.ascontiguousarray(batch[i:i + step]), ops)
                 for i in range(0, len(batch), step)]
        return [np.concatenate([np.asarray(p[k], dtype=np.float32) for p in parts]) for k in range(len(ops))]

    def infer_layers_impl(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        raise NotImplementedError(f"{self.name}: {self.no_layers_reason}")

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- checks ----------------------------------------------------------------------------
    def _require_active(self, what: str) -> None:
        if not self.active:
            raise RuntimeError(f"{self.name}: call activate() before {what}()")

    def check_input(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = getattr(batch, "dtype", type(batch).__name__)
            raise UserError(f"{self.name}: expected a float32 numpy array, got {got}")
        self.check_shape(tuple(batch.shape))

    def check_device_input(self, x: Any) -> None:
        import torch

        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != self.device:
            got = f"{x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise UserError(f"{self.name}: expected a float32 torch tensor on {self.device}, got {got}")
        self.check_shape(tuple(x.shape))

    def check_shape(self, shape: tuple[int, ...]) -> None:
        expected = tuple(self.card.input.shape)
        lo, hi = self.batch.min, self.batch.max
        if len(shape) != 4 or shape[1:] != expected:
            raise UserError(f"{self.name}: expected input of shape (N, {', '.join(map(str, expected))}), "
                            f"got {shape}")
        if not lo <= shape[0] <= hi:
            raise UserError(f"{self.name}: batch size {shape[0]} is outside the artifact's "
                            f"range {lo}..{hi}; re-export with a larger --max-batch")

    def check_output(self, n: int, shape: tuple[int, ...]) -> None:
        """The file's real output must be one row of card.num_classes logits per image: a card
        that lists other classes than the file computes would name the wrong class."""
        classes = self.card.num_classes
        if len(shape) != 2 or shape[0] != n:
            raise CheckFailed(f"{printable(self.shown)} returned output of shape {shape} for a "
                              f"batch of {n}; expected ({n}, {classes}): re-export it")
        if shape[1] != classes:
            raise CheckFailed(f"the card lists {classes} classes but {printable(self.shown)} outputs "
                              f"{shape[1]} logits: the manifest does not match the artifact; re-export")

    def check_declared_input(self, dims: Any) -> None:
        """`dims` (the input shape the loaded model declares; symbolic dims as strings, None or
        -1) must take the card's image shape: else every image would fail deep inside the runtime.
        Runners call it at activation wherever the runtime tells the shape."""
        expected = list(self.card.input.shape)
        fixed = [d if isinstance(d, int) and d > 0 else None for d in list(dims)[1:]]
        if len(fixed) != len(expected) or any(d is not None and d != e for d, e in zip(fixed, expected, strict=True)):
            shown = "x".join("?" if d is None else str(d) for d in fixed)
            raise CheckFailed(f"the card's input is {'x'.join(map(str, expected))} but "
                              f"{printable(self.shown)} takes {shown}: the manifest does not match "
                              "the artifact; re-export")

    # -- what subclasses implement ---------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray: ...

    def infer_device_impl(self, x: Any) -> Any:
        """Runners that declare `device_tensors` implement this."""
        raise NotImplementedError(f"{self.name} declares device_tensors but has no infer_device_impl")

    def deactivate_impl(self) -> None:  # noqa: B027  (optional hook; most runtimes need nothing)
        """Release the session / engine and put back what activate changed; the default does nothing."""


@dataclass
class RunnerChoice:
    """One (runner class, artifact) pair a command may run, or the reason it cannot."""

    runner_cls: type[Runner]
    artifact: Artifact
    reason: str | None = None  # None means available

    @property
    def runner(self) -> str:
        """The registry name (what reports and --backends use)."""
        return self.runner_cls.name

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
                choices.append(RunnerChoice(cls, cls.as_executed(art), cls.unavailable_reason()))
    return choices
