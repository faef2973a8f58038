"""TensorRT engines: builder configuration per TensorRT major version and precision (against a
stand-in for the tensorrt library), the sidecar, the runner's checks at activation (against the
stand-in's engines), the user-facing errors where TensorRT is missing, and a real build-and-run test
wherever TensorRT and a GPU exist."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TEST_IMAGE_SIZE, assert_user_error, run_cli
from fake_tensorrt import calls_named, make_tensorrt
from standins import CARD, GPU, MAX_BATCH, CudaStreams, answers_in_flight, onnx_context, tiny_onnx

import alexnet_deploy.backends.tensorrt.export as trt_export
import alexnet_deploy.backends.tensorrt.runner as trt_runner
from alexnet_deploy.backends.tensorrt.util import Sidecar, tensorrt_unavailable_reason
from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.exporters import ExportContext
from alexnet_deploy.manifest import Artifact, Manifest, hash_artifact, verify_integrity
from alexnet_deploy.models import InputSpec, ModelCard


@pytest.fixture
def fake_trt(monkeypatch, request):
    """Install the stand-in tensorrt library at the version the test asks for."""
    trt = make_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_export, "gpu_info", lambda: dict(GPU))  # the machine, not our logic
    return trt


def _builds(trt) -> list[list[tuple]]:
    """The recorded calls split into one list per engine build."""
    builds = []
    for name, args in trt.calls:
        if name == "create_network":
            builds.append([])
        builds[-1].append((name, args))
    return builds


def _flags(build, name) -> set[str]:
    return {args[0].name for n, args in build if n == name}


# ----------------------------------------------------------------------------------------------
# Builder configuration per version and precision
# ----------------------------------------------------------------------------------------------
EXPECTED = {  # (major, precision): (ONNX parsed, flags set, flags cleared)
    ("10", "fp32"): ("fp32", set(), {"TF32"}),
    ("10", "fp16"): ("fp32", {"FP16"}, set()),
    ("10", "int8"): ("int8", {"INT8"}, set()),
    ("11", "fp32"): ("fp32", set(), {"TF32"}),
    ("11", "fp16"): ("fp16", set(), set()),
    ("11", "int8"): ("int8", set(), set()),
}


@pytest.mark.parametrize("fake_trt", ["10.9.0", "11.1.0"], indirect=True)
def test_builder_is_configured_per_version_and_precision(fake_trt, tmp_path):
    ctx = onnx_context(tmp_path)
    arts = trt_export.TensorRTExporter().export(ctx)
    major = fake_trt.__version__.split(".")[0]

    assert [a.precision for a in arts] == ["fp32", "fp16", "int8"]
    for art, build in zip(arts, _builds(fake_trt), strict=True):
        source, set_flags, cleared = EXPECTED[(major, art.precision)]
        parsed = [args[0] for n, args in build if n == "parse_from_file"]
        assert parsed == [str(tmp_path / f"alexnet_{source}.onnx")], (major, art.precision)
        assert _flags(build, "set_flag") == set_flags, (major, art.precision)
        assert _flags(build, "clear_flag") == cleared, (major, art.precision)
        # explicit batch is the default from 10 on and strong typing is implicit in 11: no flags
        assert [args for n, args in build if n == "create_network"] == [(0,)]
        assert [(a[0].name, a[1]) for n, a in build if n == "set_memory_pool_limit"] == \
            [("WORKSPACE", trt_export.WORKSPACE_BYTES)]
        chw = (3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
        assert [a for n, a in build if n == "profile.set_shape"] == \
            [("images", (1, *chw), (MAX_BATCH // 2, *chw), (MAX_BATCH, *chw))]
        assert art.format == "tensorrt" and art.device == "cuda"
        assert (tmp_path / art.path).read_bytes().startswith(b"FAKE-ENGINE")


@pytest.mark.parametrize("fake_trt", ["11.0.0"], indirect=True)
def test_trt11_needs_the_fp16_onnx(fake_trt, tmp_path):
    """Strong typing takes precision from the graph: no fp16 ONNX, no fp16 engine (10.x would
    build one from the fp32 ONNX with the FP16 flag)."""
    arts = trt_export.TensorRTExporter().export(onnx_context(tmp_path, ("fp32", "int8")))
    assert [a.precision for a in arts] == ["fp32", "int8"]


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_asymmetric_int8_onnx_is_not_given_to_tensorrt(fake_trt, tmp_path, caplog):
    """TensorRT's explicit quantization needs zero points of 0; anything else cannot build."""
    ctx = onnx_context(tmp_path, ("fp32", "int8"))
    tiny_onnx(tmp_path / "alexnet_int8.onnx", qdq=True, zero_point=-128)
    arts = trt_export.TensorRTExporter().export(ctx)
    assert [a.precision for a in arts] == ["fp32", "fp16"]
    assert "asymmetrically" in caplog.text


@pytest.mark.parametrize("fake_trt", ["10.3.0"], indirect=True)
def test_trt10_builds_fp16_from_the_fp32_onnx(fake_trt, tmp_path):
    arts = trt_export.TensorRTExporter().export(onnx_context(tmp_path, ("fp32",)))
    assert [a.precision for a in arts] == ["fp32", "fp16"]


def test_recipe_table_covers_future_and_rejects_old_versions():
    assert trt_export.recipe_for("12.0.1") == (12, trt_export.RECIPES[11])
    assert trt_export.recipe_for("10.13.0")[1] is trt_export.RECIPES[10]
    with pytest.raises(UserError, match="TensorRT 10 or newer"):
        trt_export.recipe_for("8.6.1")


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_timing_cache_is_saved_beside_the_engines_and_reused(fake_trt, tmp_path):
    ctx = onnx_context(tmp_path, ("fp32",))
    trt_export.TensorRTExporter().export(ctx)
    cache = tmp_path / "tensorrt" / trt_export.TIMING_CACHE
    saved = cache.read_bytes()
    assert calls_named(fake_trt, "create_timing_cache")[0] == (b"",)  # first build starts empty
    fake_trt.calls.clear()
    trt_export.TensorRTExporter().export(ctx)  # a later export in the same folder
    assert calls_named(fake_trt, "create_timing_cache")[0] == (saved,)


# ----------------------------------------------------------------------------------------------
# Sidecar and manifest entry
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_sidecar_records_what_the_engine_depends_on(fake_trt, tmp_path):
    ctx = onnx_context(tmp_path)
    arts = {a.precision: a for a in trt_export.TensorRTExporter().export(ctx)}
    fp16 = arts["fp16"]
    (side_rel, side_sha), = fp16.extra["files"].items()
    side = json.loads((tmp_path / side_rel).read_text())

    assert side["tensorrt_version"] == "10.9.0"
    assert side["gpu"] == GPU and fp16.extra["compute_capability"] == "9.0"
    assert side["precision"] == "fp16" and side["builder_flags"] == ["FP16"]
    assert side["source_onnx"] == "alexnet_fp32.onnx"
    assert side["source_sha256"] == ctx.find("onnx", "fp32").sha256
    assert side["profile"]["max"] == [MAX_BATCH, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE]
    assert side["workspace_bytes"] == trt_export.WORKSPACE_BYTES
    assert side["timing_cache"] == "tensorrt/timing.cache"
    assert side["io"]["images"] == {"mode": "input", "dtype": "float32", "shape": [-1, 3, 64, 64]}
    assert side["io"]["logits"]["mode"] == "output"

    manifest = Manifest(card=CARD, weights={}, artifacts=list(arts.values()))
    manifest.root = tmp_path
    assert all(verify_integrity(manifest, a) is None for a in arts.values())
    (tmp_path / side_rel).write_text("{}")  # an edited sidecar is caught like an edited engine
    assert side_rel in verify_integrity(manifest, fp16)


@pytest.mark.parametrize("fake_trt", ["11.1.0"], indirect=True)
def test_trt11_fp16_engine_io_types_come_from_the_fp16_graph(fake_trt, tmp_path):
    fp16 = next(a for a in trt_export.TensorRTExporter().export(onnx_context(tmp_path)) if a.precision == "fp16")
    assert fp16.extra["io"]["images"]["dtype"] == "float16"


def test_engine_from_another_gpu_or_version_is_refused_clearly():
    side = Sidecar("e.engine", tensorrt_version="10.9.0", gpu={"name": "H100", "compute_capability": "9.0"})
    here = {"name": "RTX 4090", "compute_capability": "8.9"}
    with pytest.raises(UserError, match="built for H100 .*8.9"):
        side.check_built_here("e.engine", "10.9.0", here)
    with pytest.raises(UserError, match="TensorRT 10.9.0 but TensorRT 10.13.0"):
        side.check_built_here("e.engine", "10.13.0", {**here, "compute_capability": "9.0"})
    side.check_built_here("e.engine", "10.9.0", {"name": "H100 NVL", "compute_capability": "9.0"})


def test_sidecar_round_trips_and_unreadable_sidecars_are_one_line(tmp_path):
    side = Sidecar("e.engine", tensorrt_version="10.9.0", gpu={"name": "H100", "compute_capability": "9.0"},
                   settings={"workspace_bytes": 1 << 30}, io={"images": {"dtype": "float32"}}, build_s=1.5)
    side.write(tmp_path / "e.engine.json")
    flat = json.loads((tmp_path / "e.engine.json").read_text())
    assert flat["workspace_bytes"] == 1 << 30 and "settings" not in flat  # settings written flat
    assert Sidecar.read(tmp_path / "e.engine.json", "e.engine") == side
    assert Sidecar.read(tmp_path / "missing.json", "e.engine") == Sidecar("e.engine")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        Sidecar.read(tmp_path / "bad.json", "e.engine")


# ----------------------------------------------------------------------------------------------
# The runner's activation: sidecar, engine I/O, card (the stand-in's engines; nothing executes)
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_engine(fake_trt, tmp_path, monkeypatch):
    """An fp32 engine built by the stand-in, in an export folder; the runner thinks it is on GPU."""
    monkeypatch.setattr(trt_runner, "gpu_info", lambda: dict(GPU))
    monkeypatch.setattr(trt_runner.TensorRTRunner, "unavailable_reason", classmethod(lambda cls: None))
    arts = trt_export.TensorRTExporter().export(onnx_context(tmp_path, ("fp32",)))
    return tmp_path, next(a for a in arts if a.precision == "fp32")


@pytest.mark.parametrize("fake_trt", ["10.9.0", "11.1.0"], indirect=True)
def test_runner_activates_on_an_engine_that_takes_the_cards_input(fake_engine):
    root, art = fake_engine
    manifest = Manifest(card=CARD, weights={}, artifacts=[art])
    manifest.root = root
    runner = trt_runner.TensorRTRunner.from_artifact(manifest, art)
    assert runner.sidecar == root / art.extra["sidecar"] and runner.device_tensors
    with runner:
        assert runner.active
    assert not runner.active


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_runner_refuses_an_engine_whose_input_is_not_the_cards(fake_engine):
    root, art = fake_engine
    card = ModelCard(num_classes=10, input=InputSpec.for_size(32))
    runner = trt_runner.TensorRTRunner(root / art.path, card, art.batch, shown=art.path)
    with pytest.raises(CheckFailed, match="the card's input is 3x32x32 but tensorrt/alexnet_fp32.engine takes 3x64x64"):
        runner.activate()


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_bare_engine_finds_its_sidecar_beside_it(fake_engine, monkeypatch):
    """Built without a manifest, the runner still checks the sidecar next to the engine."""
    root, art = fake_engine
    monkeypatch.setattr(trt_runner, "gpu_info", lambda: {**GPU, "name": "Other GPU", "compute_capability": "8.0"})
    with pytest.raises(UserError, match="built for Stand-in GPU .* Other GPU, has 8.0"):
        trt_runner.TensorRTRunner(root / art.path, CARD).activate()


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_unreadable_engine_is_one_line(fake_engine):
    root, art = fake_engine
    (root / art.path).write_bytes(b"junk")
    with pytest.raises(UserError, match="TensorRT could not deserialize alexnet_fp32.engine"):
        trt_runner.TensorRTRunner(root / art.path, CARD).activate()


@pytest.mark.parametrize("fake_trt", ["10.9.0"], indirect=True)
def test_requests_in_flight_run_on_a_stream_each_with_a_context_of_their_own_engine(fake_trt, fake_engine, monkeypatch):
    """benchmark --concurrency 3 on an engine: three streams, three execution contexts, each of its
    own engine (a dynamic-shape engine's profile serves one context at a time), every answer the one
    a single request gets. The stand-in computes on host
    memory, so the runner's device is the CPU here and the streams are stand-ins too."""
    CudaStreams().install(monkeypatch)
    monkeypatch.setattr(trt_runner.TensorRTRunner, "device", "cpu")
    root, art = fake_engine
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 3, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE),
                                                       dtype=np.float32) for i in range(6)]
    runner = trt_runner.TensorRTRunner(root / art.path, CARD, art.batch, shown=art.path)
    with runner:
        expected = [runner.infer(x) for x in inputs]
        assert len(fake_trt.engines) == 1
        fake_trt.engines[0].contexts[0].streams.clear()  # the runner's own stream for host calls
        flight = runner.in_flight(3)
        got = answers_in_flight(flight, inputs * 3)
        assert flight.streams == 3
        engines = fake_trt.engines
        assert len(engines) == 3 and [len(e.contexts) for e in engines] == [1, 1, 1]
        assert len(calls_named(fake_trt, "serialize")) == 1  # the loaded engine, once, not the file again
        flight_streams = [c.streams for e in engines for c in e.contexts]
        assert all(len(s) == 1 for s in flight_streams), flight_streams  # one stream per context
        assert len(set().union(*flight_streams)) == 3 and 0 not in set().union(*flight_streams)
    assert sorted(got) == list(range(18))
    for i, out in got.items():
        np.testing.assert_allclose(out, expected[i % 6], rtol=1e-5, atol=1e-5)


def test_sidecar_named_outside_the_export_is_refused(tmp_path):
    art = Artifact("tensorrt", "fp32", "cuda", "e.engine", extra={"sidecar": "../elsewhere.json"})
    manifest = Manifest(card=CARD, weights={}, artifacts=[art])
    manifest.root = tmp_path
    (tmp_path / "e.engine").write_bytes(b"FAKE-ENGINE {}")
    with pytest.raises(UserError, match="must not contain '..'"):
        trt_runner.TensorRTRunner.from_artifact(manifest, art)


# ----------------------------------------------------------------------------------------------
# Where TensorRT or a GPU is missing (this machine)
# ----------------------------------------------------------------------------------------------
def test_unavailable_reason_names_what_is_missing():
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are both present")
    assert reason in ("tensorrt is not installed", "no CUDA device")
    assert trt_export.TensorRTExporter.unavailable_reason("cpu") == reason


@pytest.mark.slow
def test_export_tensorrt_alone_is_a_clear_error(random_weights, tmp_path):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are present: the export would succeed")
    proc = run_cli("export", random_weights, "--out", tmp_path / "out", "--formats", "tensorrt",
                   "--max-batch", "4")
    assert_user_error(proc, "tensorrt", reason)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_all_plans_tensorrt_as_skipped_with_the_reason():
    from alexnet_deploy.exporters import plan_formats

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are present: tensorrt is exported, not skipped")
    order, skipped = plan_formats(["all"])
    assert "tensorrt" not in order and "triton" in order  # triton goes on without engines
    assert {"format": "tensorrt", "reason": reason} in [vars(s) for s in skipped]


def test_all_lists_tensorrt_as_skipped(exported_dir):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are present: tensorrt is exported, not skipped")
    manifest = Manifest.read(exported_dir)
    assert {"format": "tensorrt", "reason": reason} in [vars(s) for s in manifest.skipped]
    assert not manifest.find("tensorrt")


# ----------------------------------------------------------------------------------------------
# The real thing, wherever TensorRT and a GPU exist
# ----------------------------------------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_engine_matches_eager(random_weights, tmp_path):
    reason = tensorrt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from alexnet_deploy.models import load_weights
    from alexnet_deploy.tolerances import limits_for

    model, card = load_weights(random_weights)
    model.eval()
    onnx_path = tmp_path / "alexnet.onnx"
    x = torch.randn(2, *card.input.shape)
    torch.onnx.export(model, (x,), onnx_path, input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
                      dynamo=True, external_data=False)
    sha, size = hash_artifact(onnx_path)
    ctx = ExportContext(model=model, card=card, out=tmp_path, max_batch=MAX_BATCH,
                        artifacts=[Artifact("onnx", "fp32", "cpu", onnx_path.name, sha, size,
                                            batch={"min": 1, "max": MAX_BATCH})])
    arts = trt_export.TensorRTExporter().export(ctx)
    manifest = Manifest(card=card, weights={}, artifacts=arts)
    manifest.root = tmp_path
    for art in arts:
        limits = limits_for(art.precision)
        with trt_runner.TensorRTRunner.from_artifact(manifest, art) as runner:
            for n in (1, 3, MAX_BATCH):
                batch = torch.randn(n, *card.input.shape, generator=torch.Generator().manual_seed(n))
                with torch.no_grad():
                    ref = model(batch).numpy()
                got = runner.infer(batch.numpy())
                assert got.shape == ref.shape
                if limits.atol is not None:  # (random weights: near-tied logits, so no top-1 check)
                    np.testing.assert_allclose(got, ref, atol=limits.atol, rtol=limits.rtol)
            _real_streams_answer_as_one_request_does(runner, card)
    _real_layers_match_eager(model, manifest, next(a for a in arts if a.precision == "fp32"))


def _real_streams_answer_as_one_request_does(runner, card):
    """Three requests in flight on three CUDA streams, each with an engine and context of its own."""
    inputs = [np.random.default_rng(i).standard_normal((1 + i, *card.input.shape), dtype=np.float32)
              for i in range(3)]
    expected = [runner.infer(x) for x in inputs]
    flight = runner.in_flight(3)
    got = answers_in_flight(flight, inputs * 4)
    assert flight.streams == 3 and sorted(got) == list(range(12))
    for i, out in got.items():
        np.testing.assert_allclose(out, expected[i % 3], rtol=1e-4, atol=1e-4)  # same engine bytes, same tactics


def _real_layers_match_eager(model, manifest, art):
    """validate --layers' path on the real library: a tapped twin of the fp32 engine, every module
    with a tensor within the fp32 per-layer limit (TF32 is off in fp32 builds)."""
    from alexnet_deploy.tolerances import LAYER_REL_L2
    from alexnet_deploy.validate.layers import choose_taps, measure, module_order, reference_outputs

    batch = torch.randn(MAX_BATCH, *manifest.card.input.shape, generator=torch.Generator().manual_seed(7))
    order, _, _ = module_order(model, batch[:1])
    runner = trt_runner.TensorRTRunner.from_artifact(manifest, art)
    taps = choose_taps(runner.layer_ops(), order)
    names = [n for n in order if n in taps]
    assert "features.0" in names and "classifier.6" in names, names  # the ONNX's name scopes reached TensorRT
    got = runner.infer_layers(batch.numpy(), [taps[n] for n in names])
    ref = reference_outputs(model, batch.numpy(), names)
    errors = {n: measure(y, ref[n])[0] for n, y in zip(names, got, strict=True)}
    assert all(e <= LAYER_REL_L2["fp32"] for e in errors.values()), errors
