"""PyTorch runners: eager (the reference every other runner is compared with), TorchScript,
torch.export programs and AOTInductor packages, on the CPU and (when torch sees one) a CUDA device.

Every torch runner takes device tensors (`infer_device`), so the benchmark times CUDA compute
apart from the copies. Only torch.export programs declare their input shape (checked against the
card at activation), and eager weights the card they carry; TorchScript modules and AOTInductor
packages expose no input shape to read."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from alexnet_deploy.backends.torch.util import TorchGlobals, graph_ops, run_recording, set_tf32
from alexnet_deploy.machine import cuda_unavailable_reason
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.runtimes import LayerOp, Runner


class TorchRunner(Runner):
    """Shared by every torch runner: threads, TF32, device transfer, inference mode. Torch's
    thread count and TF32 switches are process-wide: activate sets what the runner asks for and
    deactivate puts back what was there (also when loading fails)."""

    device_tensors = True  # the module takes tensors on `device` as they are
    tf32: ClassVar[bool | None] = None  # None: leave the process's TF32 setting as it is

    def activate_impl(self) -> None:
        import torch

        self._saved = TorchGlobals.capture()
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            if self.tf32 is not None:
                set_tf32(self.tf32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's upstream deprecation
                self._module = self.load(str(self.path))
        except BaseException:
            self._saved.restore()
            raise

    def load(self, path: str) -> Any:
        """The callable that maps an NCHW tensor on `self.device` to logits."""
        raise NotImplementedError

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        y = self.infer_device_impl(torch.from_numpy(batch).to(self.device))
        return y.float().cpu().numpy()

    def infer_device_impl(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self._module(x.contiguous())  # AOTInductor ignores strides (see Runner.infer)

    def deactivate_impl(self) -> None:
        self._module = None
        self._saved.restore()


class CudaMixin:
    """The same runner on a CUDA device, in true fp32."""

    device: ClassVar[str] = "cuda"
    cuda_streams: ClassVar[bool] = True  # `benchmark --concurrency N`: N streams into one module
    # TF32 (cuDNN's default for convolutions) rounds inputs to 10 mantissa bits: fp32 results
    # would then miss the fp32 tolerance against the CPU reference. TorchRunner restores it.
    tf32: ClassVar[bool | None] = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_unavailable_reason()


class DeviceBound(TorchRunner):
    """Compiled artifacts run on the device they were exported for."""

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.format in cls.formats and artifact.device == cls.device


class TorchEagerRunner(TorchRunner):
    name = "torch-eager"
    formats = ("weights",)
    no_layers_reason = "torch eager is the reference the layers are compared with"

    def load(self, path: str) -> Any:
        from alexnet_deploy.models import load_weights

        model, own = load_weights(path, device=self.device)
        self.check_declared_input([None, *own.input.shape])  # the card the weights file carries
        return model


class TorchScriptRunner(DeviceBound):
    name = "torchscript"
    formats = ("torchscript",)
    no_layers_reason = ("a TorchScript module runs its graph as one call (hooks are not kept when "
                        "scripting): compare the torch-export or ONNX artifact's layers")

    def load(self, path: str) -> Any:
        import torch

        return torch.jit.load(path, map_location=self.device)


class TorchExportRunner(DeviceBound):
    name = "torch-export"
    formats = ("torch-export",)
    layer_taps = True

    def layer_ops(self) -> list[LayerOp]:
        import torch

        return graph_ops(torch.export.load(str(self.path)).module())

    def infer_layers_impl(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        import torch

        module = torch.export.load(str(self.path)).module()
        with torch.inference_mode():
            found = run_recording(module, torch.from_numpy(batch).to(self.device), {op.key for op in ops})
        return [found[op.key].float().cpu().numpy() for op in ops]

    def load(self, path: str) -> Any:
        import torch

        program = torch.export.load(path)
        self.check_declared_input(program_input_dims(program))
        return program.module()


class AotiRunner(DeviceBound):
    name = "aoti"
    formats = ("aoti",)
    no_layers_reason = ("an AOTInductor package is one compiled library with no intermediate tensor to "
                        "read: compare its torch-export twin's layers")

    def load(self, path: str) -> Any:
        from torch._inductor import aoti_load_package

        return aoti_load_package(path)


def program_input_dims(program: Any) -> list[int | None]:
    """The first user input's shape in an ExportedProgram: ints where static, None where
    symbolic (the batch dimension), read from its placeholder's example value."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return [d if isinstance(d, int) else None for d in node.meta["val"].shape]


# The same runners on a CUDA device: artifacts exported with `--device cuda`.
class TorchEagerCudaRunner(CudaMixin, TorchEagerRunner):
    name = "torch-eager-cuda"


class TorchScriptCudaRunner(CudaMixin, TorchScriptRunner):
    name = "torchscript-cuda"


class TorchExportCudaRunner(CudaMixin, TorchExportRunner):
    name = "torch-export-cuda"


class AotiCudaRunner(CudaMixin, AotiRunner):
    name = "aoti-cuda"
