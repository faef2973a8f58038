"""`openvino`: OpenVINO on the CPU, running an IR (.xml + .bin) or any exported ONNX directly."""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import numpy as np

from alexnet_deploy.runtimes.base import Runner, register_runner


def openvino_unavailable_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'alexnet-deploy[openvino]')"
    return None


@register_runner
class OpenVinoRunner(Runner):
    name = "openvino"
    formats = ("openvino", "onnx")
    ov_device: ClassVar[str] = "CPU"
    # CPUs with bf16 units default to bf16 inference; an artifact's precision is in its weights, so
    # compute stays f32 unless a subclass (a future `openvino-bf16`) asks for less.
    inference_precision: ClassVar[str] = "f32"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return openvino_unavailable_reason()

    def compile_config(self) -> dict[str, object]:
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def activate_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.manifest.path_of(self.artifact)))  # finds the IR's .bin
        self._compiled = core.compile_model(model, self.ov_device, self.compile_config())
        self._request = self._compiled.create_infer_request()

    @property
    def effective_precision(self) -> str:
        """The precision OpenVINO actually computes in (reports can show it)."""
        if not self.active:
            return self.inference_precision
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return self._request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    def deactivate_impl(self) -> None:
        self._request = self._compiled = None
