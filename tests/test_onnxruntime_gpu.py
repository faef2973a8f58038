"""The ONNX Runtime GPU runners: clear reasons where they cannot run, the provider options they
ask for, and a real comparison with eager wherever onnxruntime-gpu and a GPU exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from standins import CARD, tiny_onnx_export

from alexnet_deploy.backends.onnxruntime.runner import OrtCudaRunner, OrtTensorRTRunner
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Artifact
from alexnet_deploy.runtimes import RUNNERS

GPU_RUNNERS = ["onnxruntime-cuda", "onnxruntime-tensorrt"]


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
    manifest, art = tiny_onnx_export(tmp_path)
    with pytest.raises(UserError, match=f"backend {name} cannot run here: {reason}"):
        RUNNERS[name].from_artifact(manifest, art).activate()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_ep_options_follow_the_artifact(precision, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    manifest, art = tiny_onnx_export(tmp_path, precision)
    trt, cuda, cpu = OrtTensorRTRunner.from_artifact(manifest, art).providers()
    name, opts = trt
    assert name == "TensorrtExecutionProvider"
    assert opts["trt_fp16_enable"] is (precision == "fp16")
    assert opts["trt_int8_enable"] is (precision == "int8")
    assert opts["trt_engine_cache_enable"] is True
    cache = tmp_path / "cache" / "alexnet-deploy" / "ort-tensorrt" / f"{precision}-{art.sha256[:16]}"
    assert opts["trt_engine_cache_path"] == str(cache) and cache.is_dir()
    assert cuda[0] == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"  # fallbacks, in order
    cuda_name, cuda_opts = OrtCudaRunner.from_artifact(manifest, art).providers()[0]
    assert cuda_name == "CUDAExecutionProvider"
    assert cuda_opts["use_tf32"] == (0 if precision == "fp32" else 1)  # fp32 stays true fp32
    assert cuda[1] == cuda_opts


def test_tensorrt_ep_cache_of_a_bare_file_is_keyed_on_its_hash(tmp_path, monkeypatch):
    """Built without a manifest, the runner hashes the file itself: the same engine cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    manifest, art = tiny_onnx_export(tmp_path, "fp16")
    bare = OrtTensorRTRunner(tmp_path / art.path, CARD, precision="fp16")
    listed = OrtTensorRTRunner.from_artifact(manifest, art)
    assert bare.trt_options()["trt_engine_cache_path"] == listed.trt_options()["trt_engine_cache_path"]
    assert bare.trt_options()["trt_engine_cache_path"].endswith(f"fp16-{art.sha256[:16]}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_RUNNERS)
def test_real_gpu_session_matches_onnxruntime_cpu(name, tmp_path):
    reason = RUNNERS[name].unavailable_reason()
    if reason:
        pytest.skip(reason)
    import onnxruntime as ort

    manifest, art = tiny_onnx_export(tmp_path)
    x = torch.randn(3, *CARD.input.shape, generator=torch.Generator().manual_seed(0)).numpy()
    ref = ort.InferenceSession(str(tmp_path / art.path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    with RUNNERS[name].from_artifact(manifest, art) as runner:
        got = runner.infer(x)
    # same function on the GPU; exact fp32 limits are validate's job (the TensorRT EP may use TF32)
    np.testing.assert_allclose(got, ref, atol=1e-2, rtol=1e-2)
