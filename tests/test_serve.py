"""`alexnet-deploy serve`: a real Triton server (the nvidia-pytriton wheel's tritonserver, Python
backend) on an export's repository, on 127.0.0.1 with free ports, always stopped. What clients get
back is judged by validate's own rules (compare_outputs) against torch eager on the weights."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line, cli
from PIL import Image

from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.serve import TritonServer, find_tritonserver, free_port, repository_of

pytestmark = pytest.mark.triton
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

try:
    find_tritonserver()
    NO_SERVER = None
except UserError as e:
    NO_SERVER = str(e)
needs_server = pytest.mark.skipif(NO_SERVER is not None, reason=f"{NO_SERVER} (make install installs it)")


@pytest.fixture(scope="module")
def server(resnet18_export):
    ports = [free_port() for _ in range(3)]
    with TritonServer(repository_of(resnet18_export), *ports) as s:
        yield s
    assert s.process.poll() is not None  # stopped


@pytest.fixture
def connect():
    """Clients closed after the test: at shutdown the server waits for open HTTP connections, up to
    its 30 s exit timeout (measured: that was the whole of a 30 s teardown)."""
    made = []

    def make(module, url, **kwargs):
        made.append(module.InferenceServerClient(url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def images(demo_data) -> list[Path]:
    folders = sorted(p for p in (demo_data / "val").iterdir() if p.is_dir())
    return [sorted(f.iterdir())[0] for f in folders[:3]]


def _infer(client, module, model: str, x: np.ndarray, name="images", dtype="FP32"):
    inp = module.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp])


def _judged(export, x, y, precision, tmp_path):
    from alexnet_deploy.validate.outside import compare_outputs

    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return compare_outputs(export, tmp_path / "x.npy", tmp_path / "y.npy", precision=precision)


@needs_server
@pytest.mark.slow
def test_every_served_model_answers_as_validate_requires_over_http_and_grpc(server, resnet18_export, tmp_path, connect):
    python_models = [m for m in server.loaded if "_python_" in m]
    assert sorted(python_models) == ["resnet18_python_onnxruntime_fp16", "resnet18_python_onnxruntime_fp32",
                                     "resnet18_python_onnxruntime_int8"]
    x = np.random.default_rng(7).standard_normal((3, 3, 64, 64)).astype(np.float32)
    clients = ((connect(http, server.http_url), http), (connect(grpc, server.grpc_url), grpc))
    for model in python_models:
        precision = model.rsplit("_", 1)[1]
        for client, module in clients:
            y = _infer(client, module, model, x).as_numpy("logits")
            report = _judged(resnet18_export, x, y, precision, tmp_path)
            assert report.passed, (model, module.__name__, report.summary)


@needs_server
@pytest.mark.slow
def test_serving_leaves_every_artifact_as_its_manifest_hashed_it(server, resnet18_export, connect):
    """The Python-backend models import model.py from the repository; nothing may be written there
    (a __pycache__ would change the folder's hash and validate would then refuse the export)."""
    from alexnet_deploy.manifest import verify_integrity

    x = np.zeros((1, 3, 64, 64), np.float32)
    client = connect(http, server.http_url)
    for model in (m for m in server.loaded if "_python_" in m):
        _infer(client, http, model, x)
    manifest = Manifest.read(resnet18_export)
    assert [a.path for a in manifest.artifacts if verify_integrity(manifest, a) is not None] == []
    assert not list((resnet18_export / "triton").rglob("__pycache__"))


@needs_server
@pytest.mark.slow
def test_image_ensemble_top1_equals_local_preprocessing_and_model(server, resnet18_export, images, tmp_path, connect):
    from alexnet_deploy.data import preprocess_files

    manifest = Manifest.read(resnet18_export)
    blobs = []
    for i, path in enumerate(images):  # one PNG as it is, the others re-encoded as JPEG
        data = path.read_bytes()
        if i:
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, "JPEG", quality=95)
            data = buf.getvalue()
            (tmp_path / f"{i}.jpg").write_bytes(data)
        blobs.append(data)
    files = [images[0]] + [tmp_path / f"{i}.jpg" for i in range(1, len(images))]
    client = connect(http, server.http_url)
    r = _infer(client, http, "resnet18_image", np.array([[b] for b in blobs], dtype=object), "image", "BYTES")
    x = preprocess_files(files, manifest.card)
    report = _judged(resnet18_export, x, r.as_numpy("logits"), "fp32", tmp_path)
    assert report.passed, report.summary  # the server's preprocessing is the card's, byte for byte
    from alexnet_deploy.validate.run import reference_logits

    ref = reference_logits(manifest, x)
    top1 = r.as_numpy("top_classes")[:, 0]
    assert top1.tolist() == ref.argmax(1).tolist()
    assert [b.decode() for b in r.as_numpy("top_labels")[:, 0]] == [manifest.card.classes[i] for i in top1]
    scores = r.as_numpy("top_scores")
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores.sum(1) <= 1 + 1e-5)


@needs_server
@pytest.mark.slow
def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, resnet18_export, tmp_path, connect):
    model = "resnet18_python_onnxruntime_fp32"
    client = connect(http, server.http_url, concurrency=8)
    xs = np.random.default_rng(3).standard_normal((16, 1, 3, 64, 64)).astype(np.float32)
    before = _batches(client, model)
    results = [None] * len(xs)

    def send(i):
        results[i] = _infer(connect(http, server.http_url), http, model, xs[i]).as_numpy("logits")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    y = np.concatenate(results)
    report = _judged(resnet18_export, xs.reshape(-1, 3, 64, 64), y, "fp32", tmp_path)
    assert report.passed, report.summary  # rows went back to the request that sent them
    grown = {k: v - before.get(k, 0) for k, v in _batches(client, model).items()}
    assert sum(k * v for k, v in grown.items()) == len(xs)
    assert any(k > 1 and v > 0 for k, v in grown.items()), grown  # the dynamic batcher merged requests


def _batches(client, model) -> dict[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


@needs_server
@pytest.mark.slow
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, connect):
    client = connect(http, server.http_url)
    model = "resnet18_python_onnxruntime_fp32"
    bad = [(model, np.zeros((1, 3, 32, 32), np.float32), "images", "FP32"),   # wrong shape
           (model, np.zeros((1, 3, 64, 64), np.float64), "images", "FP64"),   # wrong dtype
           ("resnet18_image", np.array([[b"not an image"]], dtype=object), "image", "BYTES"),
           ("no_such_model", np.zeros((1, 3, 64, 64), np.float32), "images", "FP32")]
    for name, x, tensor, dtype in bad:
        with pytest.raises(InferenceServerException) as e:
            _infer(client, http, name, x, tensor, dtype)
        assert e.value.message(), name
    assert "cannot read image" in _error(client, "resnet18_image", bad[2][1])
    y = _infer(client, http, model, np.zeros((2, 3, 64, 64), np.float32)).as_numpy("logits")
    assert y.shape == (2, 10) and np.isfinite(y).all() and server.ready()


def _error(client, model, x) -> str:
    try:
        _infer(client, http, model, x, "image", "BYTES")
    except InferenceServerException as e:
        return e.message()
    return ""


@needs_server
@pytest.mark.slow
def test_unload_reload_and_production_configs_fail_on_their_backend_not_their_config(server, connect):
    client = connect(http, server.http_url)
    model = "resnet18_python_onnxruntime_int8"
    client.unload_model(model)
    assert not client.is_model_ready(model)
    client.load_model(model)
    assert client.is_model_ready(model)
    production = {"resnet18_onnx_fp32": "onnxruntime", "resnet18_torchscript_fp32": "pytorch"}
    for name, backend in production.items():
        assert server.skipped[name] == f"this tritonserver has no {backend} backend"
        with pytest.raises(InferenceServerException) as e:
            client.load_model(name)  # Triton itself: the config parsed, the backend is missing
        assert f"unable to find backend library for backend '{backend}'" in e.value.message(), e.value.message()
    # (strict readiness now reports the server unready: a model failed to load; it still serves)
    assert client.is_server_live() and client.is_model_ready("resnet18_image")


def test_serve_refuses_bad_folders_and_busy_ports_in_one_line(tmp_path, resnet18_export):
    r = cli("serve", tmp_path / "missing")
    assert r.code == 2
    assert_one_line(r.err, "no such folder")
    r = cli("serve", tmp_path)
    assert r.code == 2
    assert_one_line(r.err, "no Triton model repository", "--formats triton")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("serve", resnet18_export, "--http-port", port)
        assert r.code == 2
        assert_one_line(r.err, f"--http-port {port}", "in use")
    r = cli("serve", resnet18_export, "--tritonserver", tmp_path / "nope")
    assert r.code == 2
    assert_one_line(r.err, "--tritonserver", "not an executable")


@needs_server
@pytest.mark.slow
def test_serve_command_lists_endpoints_and_stops_on_sigterm(resnet18_export):
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "alexnet-deploy"), "serve", str(resnet18_export), "--http-port", str(port),
           "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, out = time.monotonic() + 180, ""
        while "Ctrl-C stops" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in out and "ready    resnet18_image" in out, out
        assert "not served  resnet18_onnx_fp32: this tritonserver has no onnxruntime backend" in out
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped" in rest, err
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        s.bind(("127.0.0.1", port))  # the server is gone: nothing listens on its port
