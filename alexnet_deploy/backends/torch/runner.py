"""PyTorch runners: eager (the reference every other runner is compared with), TorchScript,
torch.export programs and AOTInductor packages, on the CPU and (when torch sees one) a CUDA device."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from alexnet_deploy.machine import cuda_unavailable_reason
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.runtimes import Runner


class TorchRunner(Runner):
    """Shared by every torch runner: threads, device transfer, inference mode."""

    def activate_impl(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)  # process-wide: torch has no per-module setting
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's upstream deprecation
            self._module = self.load(str(self.manifest.path_of(self.artifact)))

    def load(self, path: str) -> Any:
        """The callable that maps an NCHW tensor on `self.device` to logits."""
        raise NotImplementedError

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self._module(torch.from_numpy(batch).to(self.device))
        return y.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self._module = None


class CudaMixin:
    device: ClassVar[str] = "cuda"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_unavailable_reason()

    def activate_impl(self) -> None:
        import torch

        # TF32 (cuDNN's default for convolutions) rounds inputs to 10 mantissa bits: fp32 results
        # would then miss the fp32 tolerance against the CPU reference.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        super().activate_impl()


class DeviceBound(TorchRunner):
    """Compiled artifacts run on the device they were exported for."""

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.format in cls.formats and artifact.device == cls.device


class TorchEagerRunner(TorchRunner):
    name = "torch-eager"
    formats = ("weights",)

    def load(self, path: str) -> Any:
        from alexnet_deploy.model import load_weights

        return load_weights(path, device=self.device)[0]


class TorchScriptRunner(DeviceBound):
    name = "torchscript"
    formats = ("torchscript",)

    def load(self, path: str) -> Any:
        import torch

        return torch.jit.load(path, map_location=self.device)


class TorchExportRunner(DeviceBound):
    name = "torch-export"
    formats = ("torch-export",)

    def load(self, path: str) -> Any:
        import torch

        return torch.export.load(path).module()


class AotiRunner(DeviceBound):
    name = "aoti"
    formats = ("aoti",)

    def load(self, path: str) -> Any:
        from torch._inductor import aoti_load_package

        return aoti_load_package(path)


# The same runners on a CUDA device: artifacts exported with `--device cuda`.
class TorchEagerCudaRunner(CudaMixin, TorchEagerRunner):
    name = "torch-eager-cuda"


class TorchScriptCudaRunner(CudaMixin, TorchScriptRunner):
    name = "torchscript-cuda"


class TorchExportCudaRunner(CudaMixin, TorchExportRunner):
    name = "torch-export-cuda"


class AotiCudaRunner(CudaMixin, AotiRunner):
    name = "aoti-cuda"
