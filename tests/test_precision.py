"""validate's computes_in: the precision a runner computed in, measured from its error signature
against float64 and torch's own fp16 / bf16 arithmetic, not read from its label."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet_deploy.checks import reference_model
from alexnet_deploy.machine import cpu_has_bf16
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.validate import validate
from alexnet_deploy.validate.precision import Signatures, measure_precision

ROWS = 16


def inputs(manifest: Manifest) -> np.ndarray:
    shape = tuple(manifest.card.input.shape)
    return np.random.default_rng(3).standard_normal((ROWS, *shape), dtype=np.float32)


def run(runner_cls, manifest: Manifest, fmt: str, precision: str, batch: np.ndarray) -> np.ndarray:
    [art] = manifest.find(fmt, precision)
    with runner_cls.from_artifact(manifest, art) as runner:
        return np.concatenate([runner.infer(batch[i:i + art.batch.max])
                               for i in range(0, len(batch), art.batch.max)])


def test_every_honest_row_computes_in_what_its_label_says(random_export):
    report = validate(random_export, images=0)
    measured = {(r.backend, r.precision): r.computes_in for r in report.results if r.status == "OK"}
    assert measured[("torch-eager", "fp32")] == "fp32"
    assert measured[("onnxruntime-cpu", "fp32")] == "fp32"
    assert measured[("onnxruntime-cpu", "fp16")] == "fp16"
    assert measured[("onnxruntime-cpu", "int8")] is None  # int8 has no emulated twin: not measured
    assert report.passed
    for r in report.results:
        if r.computes_in is not None:
            assert set(r.precision_errors) == {"artifact", "fp32", "fp16", "bf16"}


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: OpenVINO computes f32 "
                    "whatever it is asked, so there is no bf16 run to catch")
def test_an_fp32_row_that_computed_in_bf16_fails_and_the_honest_bf16_row_is_measured_bf16(random_export):
    pytest.importorskip("openvino", reason="openvino is not installed")
    from alexnet_deploy.backends.openvino.runner import OpenVinoRunner

    class ForcedBf16(OpenVinoRunner):  # OpenVINO's bf16 arithmetic, still labelled fp32
        name = "openvino-forced-bf16"
        inference_precision = "bf16"

    manifest = Manifest.read(random_export)
    batch = inputs(manifest)
    signatures = Signatures(reference_model(manifest), batch)
    found = measure_precision("fp32", run(ForcedBf16, manifest, "onnx", "fp32", batch), signatures)
    assert found.computes_in == "bf16"
    assert found.failure.startswith("computed in bf16, not fp32"), found.failure
    honest = measure_precision("fp32", run(OpenVinoRunner, manifest, "onnx", "fp32", batch), signatures)
    assert honest.computes_in == "fp32" and honest.failure is None

    report = validate(random_export, images=0, backends=["openvino-bf16"])
    [row] = [r for r in report.results if r.format == "onnx"]
    assert row.precision == "bf16" and row.computes_in == "bf16" and row.status == "OK"


def test_a_half_precision_label_that_ran_in_fp32_is_flagged(random_export):
    from alexnet_deploy.backends.onnxruntime.runner import OrtCpuRunner

    manifest = Manifest.read(random_export)
    batch = inputs(manifest)
    signatures = Signatures(reference_model(manifest), batch)
    fp32_logits = run(OrtCpuRunner, manifest, "onnx", "fp32", batch)  # as if labelled fp16
    found = measure_precision("fp16", fp32_logits, signatures)
    assert found.computes_in == "fp32" and found.failure is None
    assert found.note.startswith("ran in fp32: no speed-up"), found.note
    half = measure_precision("fp16", run(OrtCpuRunner, manifest, "onnx", "fp16", batch), signatures)
    assert half.computes_in == "fp16" and half.note is None
