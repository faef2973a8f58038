"""`openvino`: OpenVINO on the CPU, running an IR (.xml + .bin) or any exported ONNX directly, in
the precision the artifact stores; `openvino-bf16`: the fp32 artifacts, and the weight-only
compressed IRs (int8w, int4w), computed in bfloat16 on CPUs with bf16 units (AVX512-BF16 or AMX-BF16).

Weight-compressed IRs (backends/openvino/compress.py) under `openvino`: OpenVINO's CPU plugin
quantizes the compressed Linears' inputs to int8 on the fly at the f32 hint on CPUs with VNNI, in
groups of DYNAMIC_QUANTIZATION_GROUP_SIZE values, which the IR itself sets (rt_info
runtime_options; OpenVINO's default is 32). The runner sets no group size of its own, so it runs
such a file as every other OpenVINO consumer of it does."""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import numpy as np

from alexnet_deploy.backends.openvino.layers import model_ops
from alexnet_deploy.card import printable
from alexnet_deploy.errors import CheckFailed
from alexnet_deploy.manifest import WEIGHT_COMPRESSED, Artifact
from alexnet_deploy.runtimes import InFlight, LayerOp, Runner


def openvino_unavailable_reason() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'alexnet-deploy[openvino]')"
    return None


class OpenVinoRunner(Runner):
    name = "openvino"
    formats = ("openvino", "onnx")
    ov_device: ClassVar[str] = "CPU"
    # CPUs with bf16 units default to bf16 inference; an artifact's precision is in its weights, so
    # compute stays f32 here (int8 graphs keep their quantized layers) and `openvino-bf16` asks for less.
    inference_precision: ClassVar[str] = "f32"
    layer_taps = True
    has_streams = True
    # A marked output changes how the CPU plugin compiles the graph around it, and not always
    # faithfully: with an int8 squeeze-excitation's first convolution marked (MobileNetV3, QDQ ONNX
    # and NNCF IR alike), its ReLU is folded into the next FakeQuantize, which then outputs zeros,
    # so the second convolution reads 0 (rel_l2 1.0, cosine 0) where, marked alone, it reads rel_l2
    # 0.015 on the QDQ ONNX and ONNX Runtime 0.017 on the same file (untrained MobileNetV3-Large, 224 px).
    layer_marks_interfere = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return openvino_unavailable_reason()

    def compile_config(self) -> dict[str, object]:
        # LATENCY: one stream owning every thread, the shape of a synchronous infer() call (the
        # THROUGHPUT hint splits the threads into streams that only pay off with parallel requests).
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": self.inference_precision,
                                     "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def activate_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))  # finds the IR's .bin
        self._compiled = core.compile_model(model, self.ov_device, self.compile_config())
        self.check_declared_input([d.get_length() if d.is_static else None
                                   for d in self._compiled.input(0).get_partial_shape()])
        self._request = self._compiled.create_infer_request()

    def layer_ops(self) -> list[LayerOp]:
        import openvino as ov

        ops = model_ops(ov.Core().read_model(str(self.path)))
        if not any(op.module for op in ops):
            raise CheckFailed(f"{printable(self.shown)} carries no module map (rt_info framework/modules): "
                              "re-export it with this version of alexnet-deploy to compare layers")
        return ops

    def infer_layers_impl(self, batch: np.ndarray, ops: list[LayerOp]) -> list[np.ndarray]:
        # Two compiled twins, alternate operations each: with a convolution's output marked the CPU
        # plugin can compute what follows it wrongly in int8 graphs (see layer_marks_interfere), so a
        # convolution and the ReLU after it are never marked together; other pairs still can be,
        # and validate measures whatever fails again, alone.
        keys = list(dict.fromkeys(op.key for op in ops))
        values: dict[str, np.ndarray] = {}
        for half in (keys[0::2], keys[1::2]):
            if half:
                values.update(zip(half, self._tapped_outputs(batch, half), strict=True))
        return [values[op.key] for op in ops]

    def _tapped_outputs(self, batch: np.ndarray, keys: list[str]) -> list[np.ndarray]:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))
        by_name = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        # add_outputs returns the Result of each tensor, an existing one when it is already an output
        added = model.add_outputs([by_name[key].output(0) for key in keys])
        results = [o.get_node().get_friendly_name() for o in model.outputs]
        positions = [results.index(o.get_node().get_friendly_name()) for o in added]
        compiled = core.compile_model(model, self.ov_device, self.compile_config())
        request = compiled.create_infer_request()
        request.infer({0: batch})
        return [request.get_output_tensor(i).data.copy() for i in positions]

    def runtime_precision(self) -> str:
        """What OpenVINO says it computes in once compiled ("f32", "bf16"), else what was asked."""
        if not self.active:
            return self.inference_precision
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return self._request.get_output_tensor(0).data.copy()  # the request reuses its buffer

    def in_flight(self, n: int, streams: int | None = None) -> InFlight:
        """OpenVINO's own machinery: an AsyncInferQueue of n requests on the model compiled again
        with the THROUGHPUT hint for n requests, whose streams split the threads between them:
        `streams` of them, or as many as the hint chooses; the number it runs is read back."""
        import openvino as ov

        self._require_active("in_flight")
        config = {**self.compile_config(), "PERFORMANCE_HINT": "THROUGHPUT", "PERFORMANCE_HINT_NUM_REQUESTS": n}
        if streams is not None:
            config["NUM_STREAMS"] = streams  # an explicit property wins over the hint's choice
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(self.path)), self.ov_device, config)
        queue = _AsyncQueue(ov.AsyncInferQueue(compiled, n), self)
        queue.streams = int(compiled.get_property("NUM_STREAMS"))
        return queue

    def deactivate_impl(self) -> None:
        self._request = self._compiled = None


class _AsyncQueue(InFlight):
    """InFlight over an AsyncInferQueue: start_async waits for an idle request; the callback runs
    on OpenVINO's thread with the request's own latency."""

    def __init__(self, queue, runner: OpenVinoRunner) -> None:
        self._queue, self._runner, self.errors = queue, runner, []
        self.streams: int | None = None
        queue.set_callback(self._done)

    def submit(self, batch: np.ndarray, done) -> None:
        self._runner.check_input(batch)
        self._queue.start_async({0: batch}, userdata=done)

    def _done(self, request, done) -> None:
        try:
            out = request.get_output_tensor(0).data.copy()
            self._runner.check_output(out.shape[0], out.shape)
            done(out, request.latency)
        except BaseException as e:
            self.errors.append(e)

    def drain(self) -> None:
        self._queue.wait_all()
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self._queue = None


class OpenVinoBf16Runner(OpenVinoRunner):
    """fp32 weights, bf16 arithmetic: about half the weight traffic and the CPU's bf16 dot-product
    units, at bf16's 8-bit mantissa (validated with the bf16 limits in tolerances.py). Weight-only
    compressed IRs (int8w, int4w) too: their weights are read as stored and decompressed to bf16."""

    name = "openvino-bf16"
    inference_precision = "bf16"
    computes_in = "bf16"  # reports, limits and the floor follow it (Runner.as_executed)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from alexnet_deploy.machine import cpu_has_bf16

        reason = openvino_unavailable_reason()
        if reason is None and not cpu_has_bf16():
            reason = ("this CPU has no bf16 units (neither avx512_bf16 nor amx_bf16); OpenVINO would "
                      "emulate bf16 more slowly than fp32")
        return reason

    # int8 graphs (int8, int4w-a8) are not: their quantized layers compute in int8 whatever the
    # hint, and bf16 between them measured no faster (benchmarks/results/cpu-fast-*.md)
    ACCEPTED = ("fp32", "int8w", "int4w")

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return super().accepts(artifact) and artifact.precision in cls.ACCEPTED

    @classmethod
    def as_executed(cls, artifact: Artifact) -> Artifact:
        """An fp32 file is labelled bf16 (what it computes in); a weight-compressed one keeps its
        label: its weights' rounding, not bf16's, bounds its answers (int8 limits) and its weights'
        bytes bound its floor. The arithmetic is noted in extra["computed_in"]."""
        if artifact.precision not in WEIGHT_COMPRESSED:
            return super().as_executed(artifact)
        return artifact.model_copy(update={"extra": {**artifact.extra,
                                                     "computed_in": f"{cls.computes_in} ({cls.name})"}})
