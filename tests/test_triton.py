"""The Triton model repository: every config parses back through Triton's ModelConfig schema and
describes its model file truthfully (names, dims, data types, batch), the model files are the
exported artifacts byte for byte, and each manifest entry verifies."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from fake_tensorrt import make_tensorrt
from standins import GPU, MAX_BATCH, onnx_context

import alexnet_deploy.backends.tensorrt.export as trt_export
from alexnet_deploy.backends.triton.export import TritonExporter, triton_unavailable_reason
from alexnet_deploy.files import sha256_file
from alexnet_deploy.manifest import Artifact, Manifest, hash_artifact, verify_integrity

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}
FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "tensorrt": "model.plan"}
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: pb.TYPE_FP32, onnx.TensorProto.FLOAT16: pb.TYPE_FP16}


def _with_torchscript(ctx, out: Path):
    # the exporter only links the file; a stand-in keeps this test fast (exported_dir has a real one)
    path = out / "alexnet.ts"
    path.write_bytes(b"torchscript stand-in")
    sha, size = hash_artifact(path)
    ctx.artifacts.append(Artifact("torchscript", "fp32", "cpu", path.name, sha, size,
                                  batch={"min": 1, "max": MAX_BATCH}))
    return ctx


def _config(out: Path, art: Artifact):
    return text_format.Parse((out / art.path / "config.pbtxt").read_text(), pb.ModelConfig())


def _graph_io(path: Path):
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    (inp,) = [v for v in graph.input if v.name not in inits]

    def describe(v):
        t = v.type.tensor_type
        return v.name, ONNX_TO_TRITON[t.elem_type], [d.dim_value for d in t.shape.dim][1:]

    return describe(inp), describe(graph.output[0])


def _production(models: list[Artifact]) -> list[Artifact]:
    return [m for m in models if m.extra["platform"] in PLATFORMS.values()]


def _check_repository(out: Path, sources: list[Artifact], models: list[Artifact], card) -> None:
    manifest = Manifest(card=card, weights={}, artifacts=sources + models)
    manifest.root = out
    assert all(verify_integrity(manifest, m) is None for m in models)
    models = _production(models)
    by_source = {m.extra["source"]: m for m in models}
    assert sorted(by_source) == sorted(a.path for a in sources)
    for src in sources:
        model = by_source[src.path]
        cfg = _config(out, model)
        assert model.format == "triton" and model.path == f"triton/{cfg.name}"
        assert cfg.platform == PLATFORMS[src.format]
        assert cfg.max_batch_size == src.batch["max"]
        assert list(cfg.dynamic_batching.preferred_batch_size) and \
            max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
        kind = pb.ModelInstanceGroup.KIND_GPU if src.device == "cuda" else pb.ModelInstanceGroup.KIND_CPU
        assert [g.kind for g in cfg.instance_group] == [kind]
        (inp,), (outp,) = cfg.input, cfg.output
        got = ((inp.name, inp.data_type, list(inp.dims)), (outp.name, outp.data_type, list(outp.dims)))
        if src.format == "onnx":
            assert got == _graph_io(out / src.path), src.path
        elif src.format == "torchscript":  # Triton's PyTorch backend binds <name>__<index>
            assert got == (("INPUT__0", pb.TYPE_FP32, list(card.input.shape)),
                           ("OUTPUT__0", pb.TYPE_FP32, [card.num_classes]))
        assert (out / model.path / outp.label_filename).read_text().split("\n")[:-1] == card.classes
        model_file = out / model.path / "1" / FILES[src.format]
        assert sha256_file(model_file) == src.sha256


def test_repository_configs_match_onnx_and_torchscript_artifacts(tmp_path):
    ctx = _with_torchscript(onnx_context(tmp_path), tmp_path)
    models = TritonExporter().export(ctx)
    _check_repository(tmp_path, list(ctx.artifacts), models, ctx.card)
    names = {m.extra["model"] for m in _production(models)}
    assert {"alexnet_onnx_fp32", "alexnet_onnx_fp16", "alexnet_onnx_int8", "alexnet_torchscript_fp32"} == names
    fp16 = _config(tmp_path, next(m for m in models if m.extra["model"] == "alexnet_onnx_fp16"))
    assert fp16.input[0].data_type == pb.TYPE_FP16  # as the fp16 graph really declares it
    readme = (tmp_path / "triton" / "README.md").read_text()
    assert "tritonserver --model-repository=" in readme and "alexnet_onnx_fp32" in readme


def test_tensorrt_models_appear_only_with_tensorrt_artifacts(tmp_path, monkeypatch):
    ctx = onnx_context(tmp_path)
    assert not [m for m in TritonExporter().export(ctx) if "tensorrt" in m.extra["model"]]

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.9.0"))
    monkeypatch.setattr(trt_export, "gpu_info", lambda: dict(GPU))
    engines = trt_export.TensorRTExporter().export(ctx)
    ctx.artifacts += engines
    models = TritonExporter().export(ctx)
    trt_models = [m for m in _production(models) if m.extra["source"] in {e.path for e in engines}]
    assert [m.extra["model"] for m in trt_models] == ["alexnet_tensorrt_fp32", "alexnet_tensorrt_fp16",
                                                      "alexnet_tensorrt_int8"]
    for engine, model in zip(engines, trt_models, strict=True):
        cfg = _config(tmp_path, model)
        assert cfg.platform == "tensorrt_plan"
        assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        io = engine.extra["io"]
        assert (cfg.input[0].name, list(cfg.input[0].dims)) == ("images", io["images"]["shape"][1:])
        assert cfg.output[0].name == "logits" and cfg.input[0].data_type == pb.TYPE_FP32
    _check_repository(tmp_path, list(ctx.artifacts), models, ctx.card)


def test_reexport_replaces_model_dirs_without_leftovers(tmp_path):
    ctx = onnx_context(tmp_path, ("fp32",))
    TritonExporter().export(ctx)
    TritonExporter().export(ctx)
    entries = sorted(p.name for p in (tmp_path / "triton").iterdir())
    assert entries == ["README.md", "alexnet_image", "alexnet_onnx_fp32", "alexnet_postprocess",
                       "alexnet_preprocess", "alexnet_python_onnxruntime_fp32"]  # no half-built temporary folders


def test_triton_is_exported_after_the_formats_it_serves():
    from alexnet_deploy.exporters import EXPORTERS, plan_formats

    assert EXPORTERS["triton"].requires == ("onnx",)
    assert plan_formats(["triton"])[0] == ["onnx", "triton"]  # onnx is added, torchscript is not
    order = plan_formats(["triton", "torchscript"])[0]
    assert order.index("triton") > max(order.index("onnx"), order.index("torchscript"))


def test_unavailable_without_tritonclient(monkeypatch):
    assert triton_unavailable_reason() is None  # installed in the dev environment
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # as if it were not installed
    assert "tritonclient is not installed" in triton_unavailable_reason()


@pytest.mark.slow
def test_export_all_repository_serves_its_real_artifacts(exported_dir):
    """On a real `export --formats all`: one Triton model per ONNX / TorchScript / TensorRT file."""
    manifest = Manifest.read(exported_dir)
    sources = [a for a in manifest.artifacts if a.format in PLATFORMS]
    models = manifest.find("triton")
    assert {a.format for a in sources} >= {"onnx", "torchscript"}
    _check_repository(exported_dir, sources, models, manifest.card)
    assert bool(manifest.find("tensorrt")) == any(m.extra["platform"] == "tensorrt_plan" for m in models)


def test_a_resnet18_repository_describes_resnet18_not_alexnet(resnet18_export):
    """Dims, names and labels come from the exported model: 10 classes at 64 px, named resnet18_*."""
    manifest = Manifest.read(resnet18_export)
    sources = [a for a in manifest.artifacts if a.format in PLATFORMS]
    models = manifest.find("triton")
    _check_repository(resnet18_export, sources, models, manifest.card)
    assert {m.extra["model"] for m in _production(models)} == {"resnet18_onnx_fp32", "resnet18_onnx_fp16",
                                                   "resnet18_onnx_int8", "resnet18_torchscript_fp32"}
    cfg = _config(resnet18_export, next(m for m in models if m.extra["model"] == "resnet18_onnx_fp32"))
    assert list(cfg.input[0].dims) == [3, 64, 64] and list(cfg.output[0].dims) == [10]


def test_cpu_models_run_the_exported_files_and_the_ensemble_chains_them(tmp_path):
    """The Python-backend models serve each ONNX file with alexnet-deploy's runner (their names say
    python_, apart from the production ones), and the image ensemble is preprocess -> fp32 -> top-K."""
    ctx = onnx_context(tmp_path)
    models = {m.extra["model"]: m for m in TritonExporter().export(ctx)}
    sources = {a.path: a for a in ctx.artifacts}
    python = {n: m for n, m in models.items() if m.extra["platform"] == "python"}
    assert sorted(python) == ["alexnet_python_onnxruntime_fp16", "alexnet_python_onnxruntime_fp32",
                              "alexnet_python_onnxruntime_int8"]
    for _name, model in python.items():
        cfg = _config(tmp_path, model)
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        src = sources[model.extra["source"]]
        assert cfg.backend == "python" and params["runner"] == "onnxruntime-cpu" and params["precision"] == src.precision
        assert sha256_file(tmp_path / model.path / "1" / params["file"]) == src.sha256
        assert (tmp_path / model.path / "1" / "model.py").read_text().count("class TritonPythonModel") == 1
        assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == \
            [("images", pb.TYPE_FP32, list(ctx.card.input.shape))]  # fp32 in and out whatever the file stores
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0 and cfg.max_batch_size == src.batch["max"]
    ens = _config(tmp_path, models["alexnet_image"])
    assert ens.platform == "ensemble"
    assert [s.model_name for s in ens.ensemble_scheduling.step] == \
        ["alexnet_preprocess", "alexnet_python_onnxruntime_fp32", "alexnet_postprocess"]
    assert [(t.name, t.data_type) for t in ens.input] == [("image", pb.TYPE_STRING)]
    assert {t.name for t in ens.output} == {"logits", "top_classes", "top_labels", "top_scores"}
    for step in ("alexnet_preprocess", "alexnet_postprocess"):
        text = (tmp_path / "triton" / step / "config.pbtxt").read_text()
        assert text_format.Parse(text, pb.ModelConfig()).backend == "python"
        assert (tmp_path / "triton" / step / "card.json").read_text() == ctx.card.to_json()
