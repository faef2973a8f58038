"""MLPerf LoadGen scenarios (`benchmark --scenario`) through the real mlcommons-loadgen wheel, on a tiny
model so that every run meets LoadGen's own minimums (early stopping needs hundreds of queries)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from helpers import assert_user_error, cli
from torch import nn

import alexnet_deploy as ad
from alexnet_deploy.bench import loadgen

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed (make test installs it)")


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, demo_data):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("loadgen") / "E"
    classes = sorted(p.name for p in (demo_data / "val").iterdir())
    card = {"num_classes": 10, "classes": classes, "input": {"shape": [3, 24, 24]},
            "data": {"val": str(demo_data / "val")}}
    ad.export(Tiny(), out, formats=["onnx"], card=card, max_batch=8)
    return out


@pytest.mark.slow
def test_every_scenario_is_valid_by_loadgens_rules_and_accuracy_is_validates_top1(tiny_export):
    report = ad.benchmark(tiny_export, [1], backends=["onnxruntime-cpu"], warmup_s=0, duration_s=0.5,
                          min_duration_s=0.3, scenarios=list(loadgen.SCENARIOS), latency_ms=50,
                          only=lambda choice: choice.artifact.precision == "fp32")  # the others: the same path
    fp32 = {r.scenario: r for r in report.scenarios}
    assert set(fp32) == set(loadgen.SCENARIOS) and {r.precision for r in report.scenarios} == {"fp32"}
    for name, r in fp32.items():
        assert r.valid, (name, r.why_invalid, r.summary[-1500:])
        assert "Result is : VALID" in r.summary and r.headline > 0
    assert fp32["single-stream"].unit == "p90 latency ms"
    assert fp32["single-stream"].headline == pytest.approx(fp32["single-stream"].latency_ms["p90"])
    assert fp32["multi-stream"].headline == pytest.approx(fp32["multi-stream"].latency_ms["p99"])
    server = fp32["server"]
    assert server.latency_budget_ms == 50 and server.latency_ms["p99"] <= 50
    assert any(run["valid"] for run in server.runs) and len(server.runs) == loadgen.SERVER_SEARCH_RUNS
    # the headline is the fastest rate LoadGen judged VALID in the search
    assert server.headline <= max(run["target_qps"] for run in server.runs if run["valid"]) * 1.2

    # the sample set is the card's labelled val images; LoadGen's accuracy mode scored as validate does
    samples, labels, said = loadgen.scenario_samples(report_card(tiny_export))
    assert labels is not None and "labelled images" in said
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_export / "tiny.onnx"), providers=["CPUExecutionProvider"])
    top1 = float(np.mean(session.run(None, {session.get_inputs()[0].name: samples})[0].argmax(1) == labels))
    assert all(r.accuracy_top1 == pytest.approx(top1) for r in fp32.values())


def test_offline_on_torch_eager_batches_within_the_sample_set(tiny_export):
    """torch eager runs the weights, whose batch range is the manifest's whole 1..65536: the offline
    rate was probed on the sample set but scaled by 65536, so LoadGen was asked for one query of
    tens of millions of samples (a 64 px AlexNet grew past 6 GB and never finished)."""
    report = ad.benchmark(tiny_export, [1], backends=["torch-eager"], warmup_s=0, duration_s=0.3,
                          min_duration_s=0.3, scenarios=["offline"])
    (r,) = report.scenarios
    assert r.valid and r.backend == "torch-eager", (r.why_invalid, r.summary[-1500:])
    per_query = int(re.search(r"samples_per_query\s*:\s*(\d+)", r.summary).group(1))
    assert per_query / r.headline < 30, (per_query, r.headline)  # seconds of work at its own rate, not hours


def report_card(export):
    from alexnet_deploy.manifest import Manifest

    return Manifest.read(export).card


def test_summary_parsing_reads_loadgens_verdict_and_why():
    text = """Scenario : Server
Completed samples per second    : 90.25
Result is : INVALID
  Performance constraints satisfied : Yes
  Min duration satisfied : Yes
  Early stopping satisfied: NO
50.00 percentile latency (ns)   : 1302177
99.00 percentile latency (ns)   : 2452149
"""
    parsed = loadgen.parse_summary(text)
    assert not parsed["valid"] and parsed["unmet"] == ["early stopping not satisfied"]
    assert parsed["server"] == 90.25 and parsed["percentiles_ms"] == {"p50": 1.302177, "p99": 2.452149}


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--scenario", "server"], "needs a latency budget: pass --latency-ms"),
    (["--scenario", "cloud"], "'cloud' is not one of"),
    (["--scenario", "server", "--latency-ms", "0"], "--latency-ms"),
])
def test_bad_scenario_options_are_one_line(args, needle, tiny_export, tmp_path):
    r = cli("benchmark", tiny_export, "--backends", "onnxruntime-cpu", *args, "--report", tmp_path / "b.json")
    assert_user_error(r, needle)
    assert not (tmp_path / "b.json").exists()


def test_the_cli_report_holds_the_scenarios(tiny_export, tmp_path):
    out = tmp_path / "b.json"
    r = cli("benchmark", tiny_export, "--backends", "onnxruntime-cpu", "--batch-sizes", "1", "--duration-s", "0.3",
            "--warmup-s", "0", "--scenario", "offline", "--report", out)
    assert r.code == 0, r.err[-2000:]
    data = json.loads(out.read_text())
    assert {s["scenario"] for s in data["scenarios"]} == {"offline"} and data["settings"]["scenarios"] == ["offline"]
    assert "## MLPerf LoadGen scenarios" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_a_budget_below_one_samples_time_is_refused_without_a_search(tiny_export):
    report = ad.benchmark(tiny_export, [1], backends=["onnxruntime-cpu"], warmup_s=0, duration_s=0.2,
                          scenarios=["server"], latency_ms=1e-4)
    for r in report.scenarios:
        assert not r.valid and r.runs == [] and r.headline == 0
        assert "no rate meets it" in r.why_invalid[0] and "0.0001 ms budget" in r.why_invalid[0]


class _BusyWhileProbed:
    """A runner whose first `slow_calls` take `slow_s` each (the probe, on a machine that was busy
    then), and every later call is quick."""

    name = "busy-then-idle"

    def __init__(self, slow_calls: int, slow_s: float) -> None:
        self.calls, self.slow_calls, self.slow_s = 0, slow_calls, slow_s

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.slow_s)
        return np.eye(10, dtype=np.float32)[np.arange(len(x)) % 10]


def test_an_offline_run_sized_by_a_busy_probe_is_rerun_at_the_rate_it_measured():
    """Offline sizes its one query from a probe; when the probe ran 20 ms a call and the run then
    ran in microseconds, the first run ended before LoadGen's minimum duration (INVALID). It is rerun
    sized from the rate it measured, and both runs are reported."""
    from types import SimpleNamespace

    samples = np.zeros((40, 3, 8, 8), dtype=np.float32)
    artifact = SimpleNamespace(batch=SimpleNamespace(max=8), format="onnx", precision="fp32", path="x.onnx")
    runner = _BusyWhileProbed(slow_calls=10, slow_s=0.02)  # both probes: 5 calls at batch 1, 5 at 8
    r = loadgen.run_scenario(runner, artifact, samples, None, "offline", duration_s=0.3, min_queries=1)
    assert r.valid and r.runs[-1]["valid"] and not r.why_invalid
    assert r.runs[0] == {"valid": False, "unmet": ["min duration not satisfied"],
                         "target_qps": pytest.approx(2e3 * 8 / 20, rel=0.5)}
    assert len(r.runs) >= 2 and r.runs[1]["target_qps"] > 10 * r.runs[0]["target_qps"]
    assert "Result is : VALID" in r.summary  # the summary is the valid run's
