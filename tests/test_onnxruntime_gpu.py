"""The ONNX Runtime GPU runners: clear reasons where they cannot run, the provider options they
ask for, and a real comparison with eager wherever onnxruntime-gpu and a GPU exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tensorrt import CARD, MAX_BATCH, tiny_onnx

from alexnet_deploy.backends.onnxruntime.runner import OrtCudaRunner, OrtTensorRTRunner
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Artifact, Manifest, hash_artifact
from alexnet_deploy.runtimes import RUNNERS

GPU_RUNNERS = ["onnxruntime-cuda", "onnxruntime-tensorrt"]


def _manifest(tmp_path, precision="fp32") -> tuple[Manifest, Artifact]:
    path = tmp_path / f"alexnet_{precision}.onnx"
    tiny_onnx(path)
    sha, size = hash_artifact(path)
    art = Artifact("onnx", precision, "cpu", path.name, sha, size, batch={"min": 1, "max": MAX_BATCH})
    manifest = Manifest(card=CARD, weights={}, artifacts=[art])
    manifest.root = tmp_path
    return manifest, art


@pytest.mark.parametrize("name", GPU_RUNNERS)
def test_registered_for_onnx_artifacts(name):
    cls = RUNNERS[name]
    assert cls.device == "cuda" and cls.accepts(Artifact("onnx", "fp16", "cpu", "a.onnx"))
    assert not cls.accepts(Artifact("tensorrt", "fp16", "cuda", "a.engine"))


@pytest.mark.parametrize("name", GPU_RUNNERS)
def test_unavailable_here_with_a_clear_reason(name, tmp_path):
    reason = RUNNERS[name].unavailable_reason()
    if reason is None:
        pytest.skip(f"{name} can run on this machine")
    assert reason in ("onnxruntime is not installed", "no CUDA device") or \
        ("has no" in reason and "install onnxruntime-gpu" in reason), reason
    manifest, art = _manifest(tmp_path)
    with pytest.raises(UserError, match=f"backend {name} cannot run here: {reason}"):
        RUNNERS[name].from_artifact(manifest, art).activate()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_ep_options_follow_the_artifact(precision, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    manifest, art = _manifest(tmp_path, precision)
    trt, cuda, cpu = OrtTensorRTRunner(manifest, art).providers()
    name, opts = trt
    assert name == "TensorrtExecutionProvider"
    assert opts["trt_fp16_enable"] is (precision == "fp16")
    assert opts["trt_int8_enable"] is (precision == "int8")
    assert opts["trt_engine_cache_enable"] is True
    cache = tmp_path / "cache" / "alexnet-deploy" / "ort-tensorrt" / f"{precision}-{art.sha256[:16]}"
    assert opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert cuda[0] == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"  # fallbacks, in order
    cuda_name, cuda_opts = OrtCudaRunner(manifest, art).providers()[0]
    assert cuda_name == "CUDAExecutionProvider"
    assert cuda_opts["use_tf32"] == (0 if precision == "fp32" else 1)  # fp32 stays true fp32
    assert cuda[1] == cuda_opts


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_RUNNERS)
def test_real_gpu_session_matches_onnxruntime_cpu(name, tmp_path):
    reason = RUNNERS[name].unavailable_reason()
    if reason:
        pytest.skip(reason)
    import onnxruntime as ort

    manifest, art = _manifest(tmp_path)
    x = torch.randn(3, *CARD.input.shape, generator=torch.Generator().manual_seed(0)).numpy()
    ref = ort.InferenceSession(str(tmp_path / art.path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    with RUNNERS[name].from_artifact(manifest, art) as runner:
        got = runner.infer(x)
    # same function on the GPU; exact fp32 limits are validate's job (the TensorRT EP may use TF32)
    np.testing.assert_allclose(got, ref, atol=1e-2, rtol=1e-2)
