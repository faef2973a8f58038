"""The one comparison path (checks.py) with hand-made runners and arrays: no export, no backend.

Export's smoke check and validate both go through `check_artifact`; these tests pin what it does
with outputs that are wrong in each way a runtime can be wrong, and that the smoke limits come
from the table."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from alexnet_deploy import checks
from alexnet_deploy.card import InputSpec, ModelCard
from alexnet_deploy.checks import Eager, check_artifact, post_export_check, resolve_limits, smoke_check
from alexnet_deploy.errors import CheckFailed
from alexnet_deploy.manifest import Artifact, Manifest
from alexnet_deploy.tolerances import DEFAULT_LIMITS, SMOKE_LIMITS, limits_for

CLASSES = 3
CARD = ModelCard(arch="alexnet", num_classes=CLASSES, classes=["a", "b", "c"], input=InputSpec.for_size(64))


def manifest() -> Manifest:
    return Manifest(card=CARD, weights={"path": "weights.safetensors"})


def artifact(precision: str = "fp32", max_batch: int = 8) -> Artifact:
    return Artifact("onnx", precision, "cpu", "x.onnx", batch={"min": 1, "max": max_batch})


def fake_runner(transform, fail_on_load: Exception | None = None, seen: list | None = None):
    """A runner class whose `infer` returns transform(batch); records the batch sizes it is fed."""

    class Fake:
        name = "fake"

        @classmethod
        def from_artifact(cls, manifest, artifact, threads=None):
            return cls()

        def __enter__(self):
            if fail_on_load is not None:
                raise fail_on_load
            return self

        def __exit__(self, *exc):
            return None

        def infer(self, batch):
            if seen is not None:
                seen.append(len(batch))
            return transform(batch)

    return Fake


def logits_of(batch: np.ndarray) -> np.ndarray:
    """A fixed, deterministic 'model': three weighted sums of the pixels."""
    w = np.random.default_rng(0).standard_normal((CLASSES, int(np.prod(batch.shape[1:])))).astype(np.float32)
    return batch.reshape(len(batch), -1) @ w.T


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((10, *CARD.input.shape)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The limits table
# ---------------------------------------------------------------------------------------------
def test_smoke_rows_come_from_the_table():
    for p in ("fp32", "fp16"):  # elementwise limits hold for any batch: the same as validate's
        assert limits_for(p, "smoke") == DEFAULT_LIMITS[p]
    for p in ("bf16", "int8"):  # two images cannot measure agreement: the logits' direction only
        row = limits_for(p, "smoke")
        assert (row.atol, row.min_top1_agreement, row.max_accuracy_drop, row.min_cosine) == (None, None, None, 0.95)
    assert set(SMOKE_LIMITS) == set(DEFAULT_LIMITS)


def test_accuracy_limits_are_fractions():
    assert limits_for("int8").max_accuracy_drop == limits_for("bf16").max_accuracy_drop == 0.01
    assert all(0 <= (lim.min_top1_agreement or 0) <= 1 for lim in DEFAULT_LIMITS.values())


def test_overrides_never_add_an_elementwise_limit():
    int8 = resolve_limits("int8", {"atol": 1e-3, "rtol": 1e-3, "max_accuracy_drop": 0.05})
    assert (int8.atol, int8.rtol, int8.max_accuracy_drop) == (None, None, 0.05)
    fp32 = resolve_limits("fp32", {"atol": 1e-2, "rtol": None})
    assert (fp32.atol, fp32.rtol) == (1e-2, DEFAULT_LIMITS["fp32"].rtol)


# ---------------------------------------------------------------------------------------------
# check_artifact: every way a runtime can be wrong
# ---------------------------------------------------------------------------------------------
def test_matching_outputs_pass_and_batches_cycle(batch):
    seen: list[int] = []
    ref = logits_of(batch)
    result = check_artifact(manifest(), artifact(), fake_runner(logits_of, seen=seen), batch, ref,
                            limits_for("fp32"), batch_sizes=[1, 3, 8], verify=False)
    assert result.passed, result.failures
    assert seen == [1, 3, 6]  # the cycle 1, 3, 8 over 10 rows; the last batch is short
    assert result.load_s is not None and result.infer_s is not None


def test_an_offset_fails_fp32_elementwise(batch):
    ref = logits_of(batch)
    result = check_artifact(manifest(), artifact(), fake_runner(lambda b: logits_of(b) + 0.5), batch, ref,
                            limits_for("fp32"), verify=False)
    assert not result.passed and result.failures[0].startswith("elementwise")


@pytest.mark.parametrize(("transform", "needle"), [
    (lambda b: np.full((len(b), CLASSES), np.nan, np.float32), "NaN or Inf logits for"),
    (lambda b: np.zeros((len(b), CLASSES + 1), np.float32), "differs from the reference's"),
])
def test_outputs_that_cannot_be_compared_fail_with_the_reason(batch, transform, needle):
    result = check_artifact(manifest(), artifact("int8"), fake_runner(transform), batch, logits_of(batch),
                            limits_for("int8"), verify=False)
    assert not result.passed and needle in result.failures[0] and result.verdict is None


def test_a_runtime_that_cannot_load_is_a_failure_not_a_crash(batch):
    runner = fake_runner(logits_of, fail_on_load=RuntimeError("engine built for another GPU\nmore"))
    result = check_artifact(manifest(), artifact(), runner, batch, logits_of(batch), limits_for("fp32"),
                            verify=False)
    assert result.failures == ["RuntimeError: engine built for another GPU"] and result.load_s is None


def test_integrity_is_checked_before_loading(tmp_path, batch):
    m = manifest()
    m.root = tmp_path
    (tmp_path / "x.onnx").write_bytes(b"changed")
    art = Artifact("onnx", "fp32", "cpu", "x.onnx", sha256="0" * 64)
    loaded: list[int] = []
    result = check_artifact(m, art, fake_runner(logits_of, seen=loaded), batch, logits_of(batch),
                            limits_for("fp32"))
    assert result.failures[0].startswith("integrity: x.onnx has sha256") and not loaded


# ---------------------------------------------------------------------------------------------
# The smoke check
# ---------------------------------------------------------------------------------------------
def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(CARD.input.shape)), CLASSES)).eval()


def eager_runner(model: torch.nn.Module, skew: float = 0.0):
    def run(b):
        with torch.no_grad():
            y = model(torch.from_numpy(b)).numpy()
        y[:, 0] += skew  # skew: one logit pushed, as a wrong bias would
        return y
    return fake_runner(run)


def test_smoke_check_feeds_two_seeded_inputs_within_the_smoke_row():
    model = linear_model()
    result = smoke_check(manifest(), artifact("int8"), eager_runner(model), Eager(model, CARD),
                         verify=False)
    assert result.passed and result.samples == 2 and result.limits == limits_for("int8", "smoke")
    record = result.record()
    assert record["status"] == "ok" and record["batch"] == 2 and record["limits"] == asdict(result.limits)
    assert record["cosine"] == pytest.approx(1.0)


def test_int8_smoke_judges_direction_not_a_near_tie_flip():
    """One near-tie flip in two images is 50 % agreement: the smoke row does not judge it; a
    logit vector pointing elsewhere (cosine < 0.95) fails."""
    ref = np.array([[1.0, 0.99, -3.0], [4.0, -1.0, 0.0]], np.float32)
    flipped = ref.copy()
    flipped[0, :2] = [0.99, 1.0]
    from alexnet_deploy.compare import judge

    assert judge(flipped, ref, limits_for("int8", "smoke")).passed
    away = np.array([[-3.0, 0.99, 1.0], [4.0, -1.0, 0.0]], np.float32)
    failures = judge(away, ref, limits_for("int8", "smoke")).failures
    assert len(failures) == 1 and failures[0].startswith("logits cosine similarity")


def test_a_failed_post_export_check_is_check_failed_exit_1(monkeypatch):
    model = linear_model()
    monkeypatch.setattr(checks, "pick_runner", lambda art: (eager_runner(model, skew=100.0), None))
    with pytest.raises(CheckFailed, match=r"onnx fp32 \(x.onnx\) failed its check on fake against eager "
                                          "PyTorch: elementwise") as e:
        post_export_check(manifest(), artifact(), Eager(model, CARD))
    assert e.value.exit_code == 1


def test_no_runner_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setattr(checks, "pick_runner", lambda art: (None, "no runner executes onnx artifacts"))
    assert post_export_check(manifest(), artifact(), Eager(linear_model(), CARD)) == {
        "status": "skipped", "reason": "no runner executes onnx artifacts"}
