"""The comparison rules on hand-built arrays whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet_deploy.compare import (
    accuracy,
    allclose,
    cosine_similarity,
    decisions,
    elementwise,
    judge,
    min_atol,
    softmax,
    topk,
)
from alexnet_deploy.tolerances import DEFAULT_LIMITS


@pytest.fixture
def logits() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 3, (50, 10)).astype(np.float32)


def test_identical_outputs_pass_every_precision(logits):
    for precision, limits in DEFAULT_LIMITS.items():
        v = judge(logits, logits.copy(), limits)
        assert v.passed, (precision, v.failures)
        assert v.elementwise.max_abs == 0 and v.elementwise.min_atol == 0
        assert v.elementwise.cosine == pytest.approx(1.0)
        assert v.decisions.top1_agreement == 1.0 and v.decisions.top5_overlap == 1.0


def test_a_1e3_perturbation_fails_fp32_and_passes_fp16(logits):
    # Small logits so rtol*|ref| cannot absorb 1e-3 at fp32's rtol 1e-3, but fp16's atol 1e-2 does.
    ref = (logits / 10).astype(np.float32)
    y = ref + np.float32(1e-3)
    fp32 = judge(y, ref, DEFAULT_LIMITS["fp32"])
    fp16 = judge(y, ref, DEFAULT_LIMITS["fp16"])
    assert not fp32.passed
    assert any(f.startswith("elementwise") for f in fp32.failures), fp32.failures
    assert fp16.passed, fp16.failures
    # a constant shift changes no decision
    assert fp32.decisions.top1_agreement == 1.0


def test_min_atol_is_exactly_the_boundary_of_the_allclose_rule(logits):
    rng = np.random.default_rng(1)
    ref = logits
    y = (ref + rng.normal(0, 1e-3, ref.shape)).astype(np.float32)
    rtol = 1e-3
    m = min_atol(y, ref, rtol)
    assert m > 0
    assert allclose(y, ref, m, rtol)
    assert not allclose(y, ref, float(np.nextafter(m, 0)), rtol)
    # and it is numpy's own rule (evaluated in float64)
    assert np.allclose(y.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=m)
    assert not np.allclose(y.astype(np.float64), ref.astype(np.float64), rtol=rtol,
                           atol=float(np.nextafter(m, 0)))


def test_min_atol_is_zero_when_rtol_alone_covers_the_error():
    ref = np.array([[100.0, -200.0]], np.float32)
    y = ref * np.float32(1.0005)  # relative error 5e-4 < rtol 1e-3
    assert min_atol(y, ref, 1e-3) == 0.0
    assert min_atol(y, ref, 0.0) == pytest.approx(0.1, rel=1e-3)


def test_elementwise_figures_on_known_values():
    ref = np.array([[1.0, 2.0, -4.0, 0.0]], np.float32)
    y = np.array([[1.5, 2.0, -4.0, 0.25]], np.float32)
    ew = elementwise(y, ref, rtol=0.0)
    assert ew.max_abs == 0.5
    assert ew.max_rel == 0.5  # 0.5 / 1.0; the zero reference element is left out of max_rel
    assert ew.min_atol == 0.5
    assert ew.p99_abs == pytest.approx(np.percentile([0.5, 0, 0, 0.25], 99))
    expected_cos = float(np.dot(y[0], ref[0]) / (np.linalg.norm(y[0]) * np.linalg.norm(ref[0])))
    assert ew.cosine == pytest.approx(expected_cos)


def test_cosine_is_the_worst_sample():
    ref = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # second sample orthogonal
    assert cosine_similarity(y, ref).tolist() == [1.0, 0.0]
    assert elementwise(y, ref).cosine == 0.0


def test_nan_output_fails_with_a_clear_line(logits):
    y = logits.copy()
    y[3, 2] = np.nan
    v = judge(y, logits, DEFAULT_LIMITS["int8"])
    assert not v.passed and v.failures[0] == "output holds NaN or inf"
    assert min_atol(y, logits, 0.0) == float("inf")


def test_top1_agreement_and_top5_overlap_count_changed_decisions():
    ref = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # class 9 best, top-5 = 9..5
    y = ref.copy()
    y[0, 0] = 100.0  # sample 0: class 0 becomes top-1 and enters the top 5 (class 5 leaves)
    dec = decisions(y, ref)
    assert dec.top1_agreement == 0.75
    assert dec.top5_overlap == pytest.approx((4 / 5 + 3) / 4)
    assert dec.samples == 4


def test_agreement_below_the_int8_limit_fails_and_names_the_count():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, (100, 10)).astype(np.float32)
    y = ref.copy()
    for i in range(3):  # 97% agreement < 98%
        y[i, np.argmin(ref[i])] = 50.0
    v = judge(y, ref, DEFAULT_LIMITS["int8"])
    assert v.decisions.top1_agreement == 0.97
    assert [f for f in v.failures if "agreement" in f] == [
        "top-1 agreement 97.00% is below 98.00% (3 of 100 differ)"]
    # int8 has no elementwise limit: the huge logit changes are not an elementwise failure
    assert not any(f.startswith("elementwise") for f in v.failures)


def test_accuracy_and_its_drop_as_a_fraction():
    ref = np.eye(4, dtype=np.float32)  # predicts labels 0..3
    labels = np.array([0, 1, 2, 3])
    y = ref.copy()
    y[0] = [0, 1, 0, 0]  # one of four now wrong: top-1 75%
    v = judge(y, ref, DEFAULT_LIMITS["int8"], labels=labels)
    assert v.reference_accuracy_top1 == 1.0 and v.accuracy_top1 == 0.75
    assert v.accuracy_drop == pytest.approx(0.25)  # a fraction; the failure line speaks in points
    assert any("accuracy drops 25.00 points, more than 1" in f for f in v.failures)
    assert accuracy(y, labels, k=2) == 1.0


def test_a_drop_of_exactly_the_limit_passes():
    """1 of 100 images wrong is a drop of 0.01, the int8 limit; float subtraction gives
    0.010000000000000009, which must not read as "more than 0.01"."""
    labels = np.arange(100) % 10
    ref = np.eye(10, dtype=np.float32)[labels]
    y = ref.copy()
    y[0] = np.roll(y[0], 1)
    v = judge(y, ref, DEFAULT_LIMITS["int8"], labels=labels)
    assert v.accuracy_drop == pytest.approx(0.01) and v.accuracy_drop > 0.01  # the rounding is real
    assert not any("accuracy" in f for f in v.failures), v.failures


def test_decisions_only_over_the_selected_rows():
    ref = np.tile(np.arange(5, dtype=np.float32), (4, 1))
    y = ref.copy()
    y[3, 0] = 10.0  # the changed row is outside the selection
    v = judge(y, ref, DEFAULT_LIMITS["int8"], decide=slice(0, 3))
    assert v.decisions.top1_agreement == 1.0 and v.decisions.samples == 3


def test_softmax_and_topk():
    z = np.array([[0.0, np.log(3.0)]])
    assert softmax(z).tolist()[0] == pytest.approx([0.25, 0.75])
    assert topk(np.array([[0.1, 0.9, 0.5]]), 2).tolist() == [[1, 2]]
    assert topk(np.array([[0.1, 0.9]]), 5).shape == (1, 2)  # k is capped at the class count


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differs from the reference"):
        elementwise(np.zeros((2, 10)), np.zeros((2, 9)))
