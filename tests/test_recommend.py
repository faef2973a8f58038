"""The fastest correct CPU artifacts (issue 8): a symmetric int8 ONNX every consumer accepts,
OpenVINO bf16 where the CPU has bf16 units, and `recommend` (issue 18): validate's gate, the
fastest per precision and under a latency budget or a LoadGen scenario, in DIR/recommendation.json,
which `benchmark` marks. No wall-clock figure is asserted: timings depend on the machine."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

from alexnet_deploy.machine import cpu_flags
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.runtimes import RUNNERS, get_runner, runners_for
from alexnet_deploy.tolerances import limits_for

HAS_BF16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (avx512_bf16 / amx_bf16)")


@pytest.fixture(scope="module")
def manifest(exported_dir) -> Manifest:
    return Manifest.read(exported_dir)


MAX_DROP = 0.005  # half a point: on 40 images, one more miss than the reference fails it


@pytest.fixture(scope="module")
def recommended_dir(exported_dir, tmp_path_factory):
    """A copy of the shared export with its recommendation.json from a very brief timing run, gated
    by validate on 40 labelled images with at most half a point of accuracy drop."""
    from alexnet_deploy.bench.recommend import recommend_export

    out = tmp_path_factory.mktemp("recommend") / "export"
    # hard links: recommend only adds files (its report), and copying every format is GBs
    shutil.copytree(exported_dir, out, copy_function=os.link)
    recommend_export(out, warmup_s=0.02, duration_s=0.05, latency_ms=100000, max_accuracy_drop=MAX_DROP,
                     images=40)
    return out


def recommendation(export_dir) -> dict:
    return json.loads((export_dir / "recommendation.json").read_text())


# ---------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------
def test_int8_onnx_has_only_zero_zero_points_so_tensorrt_builds_it(exported_dir, manifest):
    from alexnet_deploy.backends.tensorrt.export import has_nonzero_zero_points

    (art,) = manifest.find("onnx", "int8")
    assert art.extra["quantization"]["symmetric"] is True
    assert not has_nonzero_zero_points(exported_dir / art.path)


HAS_VNNI = bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


# Without VNNI, ONNX Runtime's x86 int8 GEMM (u8s8 through 16-bit pair sums) can saturate: on a 2-core
# AMD EPYC with AVX2 only, the int8 ONNX agreed 97.5 % with eager where VNNI Intel CPUs gave 99.2 %.
@pytest.mark.skipif(not HAS_VNNI, reason="this CPU has no VNNI (avx512_vnni / avx_vnni / amx_int8): ONNX "
                    "Runtime's u8s8 int8 GEMM may saturate on it, so the int8 limits are not promised here")
def test_int8_artifacts_agree_with_eager_on_labelled_images(manifest):
    """The int8 limits (>= 98% top-1 agreement) on the demo val images, for every int8 artifact
    and every runner that executes it."""
    from alexnet_deploy.data import load_labelled

    labelled = load_labelled(manifest.card.data["val"], manifest.card, limit=40, seed=0)
    val = labelled.images
    with get_runner("torch-eager").from_artifact(manifest, manifest.weights_artifact()) as eager:
        ref = eager.infer(val).argmax(1)
    accuracy = float((ref == labelled.labels).mean())
    assert accuracy >= 0.9, "exported_dir's model should have learned the demo classes"
    choices = [c for c in runners_for(manifest) if c.artifact.precision == "int8" and c.available]
    assert choices
    for c in choices:
        with get_runner(c.runner).from_artifact(manifest, c.artifact) as runner:
            got = np.concatenate([runner.infer(val[i:i + 8]).argmax(1) for i in range(0, len(val), 8)])
        assert (got == ref).mean() >= limits_for("int8").min_top1_agreement, (c.runner, c.artifact.path)


# ---------------------------------------------------------------------------------------------
# bf16
# ---------------------------------------------------------------------------------------------
def test_openvino_bf16_runs_only_fp32_files_and_reports_bf16(manifest):
    choices = [c for c in runners_for(manifest, ["openvino-bf16"])]
    assert choices, "openvino-bf16 applies to the fp32 ONNX and the fp32 IR"
    for c in choices:
        assert c.artifact.precision == "bf16" and c.artifact.extra["stored_precision"] == "fp32"
        (stored,) = [a for a in manifest.artifacts if a.path == c.artifact.path]
        assert stored.precision == "fp32"  # the manifest itself is unchanged
    assert {c.artifact.path for c in choices} == {a.path for a in manifest.artifacts
                                                 if a.precision == "fp32" and a.format in ("onnx", "openvino")}


def test_openvino_bf16_says_why_it_cannot_run_without_bf16_units(monkeypatch):
    import alexnet_deploy.machine as machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f"})
    reason = RUNNERS["openvino-bf16"].unavailable_reason()
    assert reason and "avx512_bf16" in reason and "amx_bf16" in reason


@needs_bf16
def test_openvino_bf16_matches_eager_within_the_bf16_limits(manifest):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, *manifest.card.input.shape)).astype(np.float32)
    with get_runner("torch-eager").from_artifact(manifest, manifest.weights_artifact()) as eager:
        ref = eager.infer(x)
    limits = limits_for("bf16")
    for c in runners_for(manifest, ["openvino-bf16"]):
        with get_runner(c.runner).from_artifact(manifest, c.artifact) as runner:
            y = runner.infer(x)
            assert "bf16" in runner.effective_precision
        # bf16 has 8 significant bits (relative step 2^-8 = 0.4 %): the logit vectors stay within 1 %
        assert np.linalg.norm(y - ref, axis=1).max() <= 1e-2 * np.linalg.norm(ref, axis=1).min()
        assert (y.argmax(1) == ref.argmax(1)).mean() >= limits.min_top1_agreement


# ---------------------------------------------------------------------------------------------
# export --target cpu and benchmark
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_recommendation_picks_a_validated_timed_candidate_per_precision(recommended_dir, exported_dir):
    rec = recommendation(recommended_dir)
    assert Manifest.read(recommended_dir).to_dict() == Manifest.read(exported_dir).to_dict()  # not written
    assert (recommended_dir / "recommendation.md").read_text().startswith("# Recommendation")
    assert rec["target"] == "cpu" and rec["batch_sizes"] == [1, 8]  # the export's max batch is 8
    assert rec["gate"] == {"check": "validate", "images": 40, "max_accuracy_drop": MAX_DROP}
    assert rec["baseline"]["runner"] == "torch-eager"
    expected = {"fp32", "int8"} | ({"bf16"} if HAS_BF16 else set())
    assert expected <= set(rec["picks"]) and set(rec["picks"]) | set(rec["missing"]) == {"fp32", "bf16", "int8"}
    paths = {a.path: a for a in Manifest.read(recommended_dir).artifacts}
    for precision, pick in rec["picks"].items():
        assert pick["precision"] == precision and pick["check"]["status"] == "OK"
        assert pick["check"]["accuracy_drop"] <= MAX_DROP
        if precision in ("fp32", "bf16"):  # measured from the error signature (int8 has none to read)
            assert pick["check"]["computes_in"] == precision
        assert pick["artifact"] == "weights.safetensors" or pick["artifact"] in paths
        assert pick["artifact"] == "weights.safetensors" or pick["sha256"] == paths[pick["artifact"]].sha256
        assert set(pick["p50_ms"]) == set(pick["ratio_to_torch_eager_fp32"]) == {"1", "8"}
        assert all(v > 0 for v in pick["p50_ms"].values())
        same = [c for c in rec["candidates"] if c["precision"] == precision]
        score = lambda c: np.prod(list(c["ratio_to_torch_eager_fp32"].values()))  # noqa: E731
        assert score(pick) == min(score(c) for c in same)  # the fastest of those that passed
    # the gate is validate's, with the user's accuracy bound: whatever dropped more is out, saying so
    for c in rec["candidates"]:
        assert c["check"]["status"] == "OK" and c["check"]["accuracy_drop"] <= MAX_DROP, c
    for failed in rec["failed_checks"]:
        assert any("accuracy" in f or "agreement" in f for f in failed["failures"]), failed


@pytest.mark.slow
def test_benchmark_marks_the_recommended_rows(recommended_dir):
    from alexnet_deploy.bench import benchmark, render_markdown

    picks = recommendation(recommended_dir)["picks"]
    report = benchmark(recommended_dir, backends=sorted({p["runner"] for p in picks.values()}),
                       batch_sizes=[1], warmup_s=0.01, duration_s=0.03, device="cpu")
    marked = {(r.backend, r.artifact, r.precision) for r in report.results if r.recommended}
    assert marked == {(p["runner"], p["artifact"], p["precision"]) for p in picks.values()}
    assert "recommended" in render_markdown(report)
    rows = report.to_dict()["results"]  # the JSON says the same, as booleans
    assert {(r["backend"], r["artifact"], r["precision"]) for r in rows if r["recommended"] is True} == marked
    assert all(r["recommended"] is False for r in rows if (r["backend"], r["artifact"], r["precision"]) not in marked)


def test_recommend_is_a_verb_and_export_target_offers_its_targets():
    from alexnet_deploy.bench.recommend import TARGETS

    proc = run_cli("recommend", "--help")
    assert proc.returncode == 0 and "--threads" in proc.stdout, proc.stderr
    text = " ".join(run_cli("export", "--help").stdout.split())
    assert f"--target [{'|'.join(TARGETS)}]" in text and "alexnet-deploy recommend OUT" in text


def test_recommend_on_a_folder_without_an_export_is_one_line(tmp_path):
    proc = run_cli("recommend", tmp_path)
    assert_user_error(proc, "no manifest.json")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_recommend_refuses_an_unwritable_report_before_any_work(random_export, tmp_path):
    from trial_support import mkex

    out = mkex(random_export, tmp_path / "e")
    (out / "recommendation.json").mkdir()  # what root cannot write either
    proc = run_cli("recommend", out)
    assert_user_error(proc, "recommendation.json", "folder")
    assert not (out / "recommendation.md").exists()
    (tmp_path / "afile").write_text("a file, not a folder")
    assert_user_error(run_cli("recommend", out, "--report", tmp_path / "afile" / "r.json"), "--report")


@pytest.mark.parametrize("args, words", [
    (("--max-accuracy-drop", "5"), ("--max-accuracy-drop", "fraction")),
    (("--max-accuracy-drop", "0.01", "--images", "0"), ("--max-accuracy-drop", "labelled images", "--data")),
    (("--scenario", "server"), ("--latency-ms",)),
    (("--scenario", "warp-speed"), ("--scenario",)),
    (("--latency-ms", "0"), ("--latency-ms",)),
    (("--backends", "warp-drive"), ("unknown", "warp-drive")),
    (("--backends", "aoti"), ("--backends aoti", "none of them runs")),  # the export holds no aoti file
])
def test_recommend_options_out_of_range_are_one_line(random_export, tmp_path, args, words):
    from trial_support import mkex

    out = mkex(random_export, tmp_path / "e")
    proc = run_cli("recommend", out, *args)
    assert_user_error(proc, *words)
    assert not (out / "recommendation.json").exists()


def test_recommend_scenario_choices_are_loadgens():
    from alexnet_deploy.bench.loadgen import SCENARIOS
    from alexnet_deploy.bench.recommend import HIGHER_IS_BETTER

    text = " ".join(run_cli("recommend", "--help").stdout.split())
    assert f"--scenario [{'|'.join(SCENARIOS)}]" in text
    assert set(HIGHER_IS_BETTER) == set(SCENARIOS)


def test_export_target_rejects_unknown_targets(random_weights, tmp_path):
    proc = run_cli("export", random_weights, "--out", tmp_path / "x", "--formats", "onnx", "--target", "gpu")
    assert_user_error(proc, "--target")


def _timed(backend, artifact, batch, p99_ms, ips):
    from alexnet_deploy.bench.harness import BenchResult
    from alexnet_deploy.bench.timing import LatencyStats

    return BenchResult(backend=backend, format="onnx", precision="fp32", device="cpu", batch_size=batch, threads=2,
                       load_s=0, first_inference_ms=0, latency_ms=LatencyStats.of([p99_ms] * 4),
                       throughput_ips=ips, stable=True, windows=[], calls=4, timed_s=1, peak_rss_mb=0,
                       rss_before_load_mb=0, input_buffers_mb=0, floor_ms=1, efficiency=0.5, floor_basis="",
                       artifact=artifact, wall_throughput_ips=ips)


def test_a_latency_budget_picks_the_most_images_per_second_within_it_and_says_why_the_rest_lost():
    from alexnet_deploy.bench.recommend import budget_pick

    results = [
        _timed("openvino", "a.xml", 1, 4.0, 250.0), _timed("openvino", "a.xml", 32, 60.0, 900.0),  # b32 over
        _timed("onnxruntime-cpu", "b.onnx", 1, 5.0, 200.0), _timed("onnxruntime-cpu", "b.onnx", 32, 9.5, 400.0),
        _timed("torch-eager", "w.safetensors", 1, 12.0, 80.0), _timed("torch-eager", "w.safetensors", 32, 90.0, 350.0),
    ]
    checks = {"openvino|c.int8.xml|int8": {"failures": ["top-1 agreement 0.80 < 0.95"]}}
    budget = budget_pick(results, checks, latency_ms=10)
    assert budget["pick"] == {"runner": "onnxruntime-cpu", "artifact": "b.onnx", "precision": "fp32", "batch": 32,
                              "p99_ms": 9.5, "images_per_s": 400.0, "accuracy_top1": None, "accuracy_drop": None}
    why = {r["artifact"]: r["lost_because"] for r in budget["runners_up"]}
    assert why["a.xml"] == "250.0 images/s at batch 1, 62% of the pick's"  # its faster batch 32 is over budget
    assert why["w.safetensors"] == "p99 12.0 ms > 10 ms even at batch 1"
    assert why["c.int8.xml"] == "failed validate's gate: top-1 agreement 0.80 < 0.95"
    none = budget_pick(results, {}, latency_ms=1)
    assert none["pick"] is None and "within 1 ms" in none["none_because"] and len(none["runners_up"]) == 3


def test_recommend_with_a_latency_budget_names_one_artifact_to_ship(recommended_dir, capsys):
    from alexnet_deploy.bench.recommend import print_recommended

    section = recommendation(recommended_dir)
    budget = section["budget"]
    pick = budget["pick"]
    assert budget["latency_ms"] == 100000 and pick["p99_ms"] <= 100000
    timed = {(c["runner"], c["artifact"]) for c in section["candidates"]}
    assert (pick["runner"], pick["artifact"]) in timed
    assert all(r["lost_because"] for r in budget["runners_up"])
    print_recommended(section)
    shown = " ".join(capsys.readouterr().out.split())
    assert f"for p99 <= 100000 ms ship {pick['runner']} {pick['artifact']}" in shown
    assert pick["accuracy_top1"] is not None and f"top-1 {pick['accuracy_top1']:.1%}" in shown
    assert_user_error(run_cli("recommend", recommended_dir, "--latency-ms", "0"), "--latency-ms")


def _scenario(backend, artifact, valid, headline, why=()):
    from alexnet_deploy.bench.loadgen import ScenarioResult

    return ScenarioResult(scenario="server", backend=backend, format="onnx", precision="int8", valid=valid,
                          headline=headline, unit="samples/s at p99 <= the budget", latency_ms={"p99": 9.0},
                          samples=64, why_invalid=list(why), latency_budget_ms=10, artifact=artifact)


def test_a_scenario_picks_the_best_valid_loadgen_run_and_says_why_the_rest_lost():
    from alexnet_deploy.bench.recommend import scenario_pick

    runs = [_scenario("openvino", "a.xml", False, 900.0, ["99.00 percentile latency > 10 ms"]),  # fastest, INVALID
            _scenario("onnxruntime-cpu", "b.onnx", True, 300.0), _scenario("openvino", "c.xml", True, 450.0)]
    checks = {"onnxruntime-cpu|b.onnx|int8": {"failures": [], "accuracy_top1": 0.9, "accuracy_drop": 0.0},
              "openvino|c.xml|int8": {"failures": [], "accuracy_top1": 0.88, "accuracy_drop": 0.02},
              "openvino|d.xml|int8": {"failures": ["accuracy drop 0.050 > 0.010"]}}
    budget = scenario_pick(runs, checks, "server", latency_ms=10)
    assert budget["scenario"] == "server" and budget["latency_ms"] == 10
    assert (budget["pick"]["artifact"], budget["pick"]["headline"], budget["pick"]["accuracy_top1"]) == ("c.xml", 450.0, 0.88)
    why = {r["artifact"]: r["lost_because"] for r in budget["runners_up"]}
    assert why == {"b.onnx": "300.0 samples/s at p99 <= the budget against the pick's 450.0",
                   "a.xml": "LoadGen INVALID: 99.00 percentile latency > 10 ms",
                   "d.xml": "failed validate's gate: accuracy drop 0.050 > 0.010"}
    # latency scenarios: the lowest figure wins
    stream = [dataclasses.replace(r, scenario="single-stream", valid=True) for r in runs]
    assert scenario_pick(stream, {}, "single-stream", None)["pick"]["artifact"] == "b.onnx"
    none = scenario_pick(runs[:1], {}, "server", 10)
    assert none["pick"] is None and "VALID with p99 <= 10 ms" in none["none_because"]


@pytest.mark.slow
def test_recommend_under_a_loadgen_scenario_end_to_end(random_export, tmp_path):
    """The CLI on the untrained export, among the runtimes a deployment ships (--backends): validate's
    gate, then LoadGen single-stream on each candidate that passed; the pick is the VALID run with the
    lowest p90, of a gated candidate of those runners, in the file and on the screen."""
    from trial_support import mkex

    out = mkex(random_export, tmp_path / "e")
    proc = run_cli("recommend", out, "--scenario", "single-stream", "--images", "12", "--threads", "1",
                   "--backends", "onnxruntime-cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    budget = recommendation(out)["budget"]
    pick = budget["pick"]
    assert budget["scenario"] == "single-stream" and pick["valid"] and pick["headline"] > 0
    gated = {(c["runner"], c["artifact"]) for c in recommendation(out)["candidates"]}
    assert (pick["runner"], pick["artifact"]) in gated
    assert {r for r, _ in gated} == {"onnxruntime-cpu"} and len(gated) == 2, gated  # fp32, int8
    for r in budget["runners_up"]:
        assert r["lost_because"]
        if r.get("valid"):
            assert r["headline"] >= pick["headline"]  # a latency: the lowest wins
    assert f"for the single-stream scenario ship {pick['runner']} {pick['artifact']}" in " ".join(proc.stdout.split())


def test_benchmark_marks_only_picks_that_still_name_the_manifests_files(random_export, tmp_path, caplog):
    from trial_support import mkex

    from alexnet_deploy.bench.picks import read_picks

    out = mkex(random_export, tmp_path / "e")
    manifest = Manifest.read(out)
    (onnx,) = manifest.find("onnx", "fp32")
    pick = {"runner": "onnxruntime-cpu", "artifact": onnx.path, "precision": "fp32", "sha256": onnx.sha256}
    rec = out / "recommendation.json"
    rec.write_text(json.dumps({"picks": {"fp32": pick}}))
    assert read_picks(manifest) == {"fp32": pick}
    rec.write_text(json.dumps({"picks": {"fp32": {**pick, "sha256": "0" * 64}}}))  # made for other files
    assert read_picks(manifest) == {} and "rerun `alexnet-deploy recommend`" in caplog.text
    for hostile in (b"[1, 2]", b"{not json", json.dumps({"picks": [pick]}).encode(), b" " * (9 << 20)):
        rec.write_bytes(hostile)
        assert read_picks(manifest) == {}
