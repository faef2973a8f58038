"""Issue 17: load-test the served repository with perf_analyzer, side by side with the in-process
benchmark on the same artifact, so a user sees what serving costs.

Exports an untrained AlexNet at 224 px, 1000 classes, to ONNX + Triton (timings do not depend on
the weights), unless --export names an export that has both. Then:
  served      `alexnet-deploy serve`'s server (serve.TritonServer) on 127.0.0.1; perf_analyzer over
              gRPC, batch-1 requests, concurrency 1, 2, 4, 8, against the Python-backend ONNX Runtime
              fp32 model (random tensors) and the `<stem>_image` ensemble (a real photograph's JPEG
              bytes: decode + the card's preprocessing + the model + top-K); for each run the
              server's statistics before and after give per-model request counts, queue / compute
              times and the mean batch the dynamic batcher formed;
  in-process  `alexnet-deploy benchmark` (ad.benchmark) on the same alexnet.onnx with onnxruntime-cpu,
              batch 1 at the same concurrencies, and its end-to-end row from the same photograph;
              run after the server has stopped, so the two never share the cores.
Writes benchmarks/results/serve-load-<machine>-<date>.{json,md}.

    bash benchmarks/get_perf_analyzer.sh          # once: .venv/perf-analyzer/perf_analyzer
    .venv/bin/python benchmarks/serve_load.py [--export DIR] [--concurrency 1,2,4,8] [--window-ms 5000]
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from datetime import date
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

from alexnet_deploy.machine import library_versions, machine_info, machine_slug  # noqa: E402
from benchmarks.common import PHOTO, untrained_alexnet  # noqa: E402
from benchmarks.common import photo as sample_photo  # noqa: E402

CSV_US = {"client_send": "Client Send", "network_server": "Network+Server Send/Recv", "server_queue": "Server Queue",
          "compute_input": "Server Compute Input", "compute_infer": "Server Compute Infer",
          "compute_output": "Server Compute Output", "client_recv": "Client Recv", "p50": "p50 latency",
          "p90": "p90 latency", "p95": "p95 latency", "p99": "p99 latency"}
STATS = ("queue", "compute_input", "compute_infer", "compute_output")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, default=None, help="An export with onnx and triton [default: made].")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--window-ms", type=int, default=5000, help="perf_analyzer's measurement window.")
    p.add_argument("--stability", type=int, default=25,
                   help="perf_analyzer's --stability-percentage (its default 10 rarely holds on 2 shared cores).")
    p.add_argument("--perf-analyzer", type=Path, default=REPO / ".venv" / "perf-analyzer" / "perf_analyzer")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def photo(work: Path) -> Path:
    """The photograph, alone in a folder (the in-process benchmark's --images takes a folder)."""
    folder = work / "photos"
    folder.mkdir(exist_ok=True)
    path = folder / PHOTO
    shutil.copy(sample_photo(), path)
    return path


def image_input(work: Path, image: Path) -> Path:
    """perf_analyzer's JSON input for a BYTES tensor: base64 of Triton's serialised string
    (4-byte little-endian length, then the bytes), not of the raw file (tried: it reads the
    JPEG's first bytes as a length)."""
    raw = image.read_bytes()
    path = work / "image_input.json"
    path.write_text(json.dumps({"data": [{"image": {"b64": base64.b64encode(struct.pack("<I", len(raw)) + raw)
                                                   .decode()}}]}))
    return path


def model_stats(client) -> dict[str, dict]:
    stats = client.get_inference_statistics()["model_stats"]
    return {s["name"]: s for s in stats}


def stats_delta(before: dict, after: dict) -> dict[str, dict]:
    """Per model that ran: requests, executions, mean batch, and mean ms per request in each stage."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        bi, ai = b.get("inference_stats", {}), a["inference_stats"]
        requests = ai["success"]["count"] - bi.get("success", {}).get("count", 0)
        if requests <= 0:
            continue
        executions = a["execution_count"] - b.get("execution_count", 0)
        inferences = a["inference_count"] - b.get("inference_count", 0)
        row = {"requests": requests, "executions": executions,
               "mean_batch": round(inferences / executions, 2) if executions else None}
        for k in STATS:
            ns = ai[k]["ns"] - bi.get(k, {}).get("ns", 0)
            row[f"{k}_ms"] = round(ns / requests / 1e6, 3)
        out[name] = row
    return out


def perf_analyzer(exe: Path, url: str, model: str, concurrency: int, args, work: Path,
                  input_data: Path | None) -> dict:
    report = work / f"{model}-c{concurrency}.csv"
    cmd = [str(exe), "-m", model, "-u", url, "-i", "grpc", "--concurrency-range", f"{concurrency}:{concurrency}",
           "--measurement-interval", str(args.window_ms), "--stability-percentage", str(args.stability),
           "--max-trials", "8", "-f", str(report)]
    if input_data is not None:
        cmd += ["--input-data", str(input_data), "--shape", "image:1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not report.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {"error": " / ".join(tail)}
    (row,) = list(csv.DictReader(report.open()))
    out = {"throughput_ips": float(row["Inferences/Second"])}
    out.update({k: int(row[col]) / 1e3 for k, col in CSV_US.items()})  # µs -> ms
    return out


def served(args, export_dir: Path, image: Path, concurrency: list[int], work: Path) -> dict:
    import tritonclient.http as http

    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.serve import TritonServer, free_port, repository_of

    stem = Path(Manifest.read(export_dir).find("onnx")[0].path).name.split(".")[0]
    models = {f"{stem}_python_onnxruntime_fp32": None, f"{stem}_image": image_input(work, image)}
    ports = [free_port() for _ in range(3)]
    runs = []
    with TritonServer(repository_of(export_dir), *ports) as server:
        client = http.InferenceServerClient(server.http_url)
        version = client.get_server_metadata()["version"]
        for model, data in models.items():
            for c in concurrency:
                before = model_stats(client)
                result = perf_analyzer(args.perf_analyzer, server.grpc_url, model, c, args, work, data)
                runs.append({"model": model, "concurrency": c, **result,
                             "server": stats_delta(before, model_stats(client))})
                print(model, c, {k: result.get(k) for k in ("throughput_ips", "p50", "p99", "error")}, flush=True)
    return {"tritonserver": version, "runs": runs}


def in_process(export_dir: Path, image: Path, concurrency: list[int], window_s: float) -> dict:
    import alexnet_deploy as ad

    report = ad.benchmark(export_dir, [1], backends=["onnxruntime-cpu"], concurrency=concurrency,
                          images=str(image.parent), duration_s=window_s, min_duration_s=window_s)
    rows = [{"concurrency": r.concurrency, "threads": r.threads, "throughput_ips": r.wall_throughput_ips,
             **{k: getattr(r.latency_ms, k) for k in ("p50", "p95", "p99")}}
            for r in report.results if r.precision == "fp32"]
    # what the server's dynamic batcher does with concurrent batch-1 requests, done in-process
    batched = ad.benchmark(export_dir, [2, 4, 8], backends=["onnxruntime-cpu"], duration_s=window_s,
                           min_duration_s=window_s)
    batched_rows = [{"batch": r.batch_size, "throughput_ips": r.throughput_ips, "p50": r.latency_ms.p50,
                     "p99": r.latency_ms.p99} for r in batched.results if r.precision == "fp32"]
    (e2e,) = [e for e in report.end_to_end if e.precision == "fp32"]
    end_to_end = {"throughput_ips": e2e.throughput_ips,
                  **{f"{k}_p50": getattr(e2e, f"{k}_ms").p50 for k in ("decode", "preprocess", "infer", "total")}}
    return {"rows": rows, "batched": batched_rows, "end_to_end": end_to_end}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Serving cost: Triton (perf_analyzer) against the same artifact in-process", "",
        f"- Machine: {m['cpu']}, {m['cores_physical']} physical / {m['cores_logical']} logical cores; GPU: "
        f"{m['gpu'] or 'none'}; load average at start / end {m['load_avg_start']} / {result['load_avg_end']}",
        f"- Versions: tritonserver {result['tritonserver']} (nvidia-pytriton {result['versions']['nvidia-pytriton']}),"
        f" perf_analyzer {result['versions']['perf_analyzer']}, tritonclient {result['versions']['tritonclient']},"
        f" onnxruntime {result['versions']['onnxruntime']}",
        f"- Model: untrained torchvision AlexNet, 224 px, 1000 classes, `alexnet.onnx` fp32; served by the "
        f"Python-backend model `{result['runs'][0]['model']}` (alexnet-deploy's onnxruntime-cpu runner, "
        f"{result['in_process']['rows'][0]['threads']} intra-op threads, one instance, dynamic batching with "
        "a 2 ms queue delay) and the image ensemble; client perf_analyzer over gRPC on the same cores, batch-1 "
        f"requests, {result['settings']['window_ms']} ms windows, stability {result['settings']['stability']} %",
        f"- Image: {result['image']} ({result['image_bytes']} bytes JPEG) for the ensemble and the in-process "
        "end-to-end row; the tensor model gets perf_analyzer's random data",
        "- Times in ms; server columns are means per request from Triton's statistics over the whole run "
        "(perf_analyzer's stabilisation windows included)", "",
        "| model | concurrency | served img/s | p50 | p95 | p99 | server queue | server compute | mean batch "
        "| in-process img/s | in-process p50 | in-process p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    inproc = {r["concurrency"]: r for r in result["in_process"]["rows"]}
    e2e = result["in_process"]["end_to_end"]
    for run in result["runs"]:
        if "error" in run:
            lines.append(f"| {run['model']} | {run['concurrency']} | failed: {run['error']} |" + " |" * 9)
            continue
        top = run["server"].get(run["model"], {})
        compute = sum(top.get(f"{k}_ms", 0) for k in STATS[1:])
        if run["model"].endswith("_image"):  # an ensemble's own stats hold no compute: sum its steps
            steps = [s for n, s in run["server"].items() if n != run["model"]]
            compute = sum(s[f"{k}_ms"] for s in steps for k in STATS[1:])
            top = {"queue_ms": sum(s["queue_ms"] for s in steps)}
            ref = (f"{e2e['throughput_ips']:.1f} (c=1, end to end)", f"{e2e['total_p50']:.1f}", "") \
                if run["concurrency"] == 1 else ("", "", "")
        else:
            r = inproc.get(run["concurrency"])
            ref = (f"{r['throughput_ips']:.1f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}") if r else ("", "", "")
        batch = run["server"].get(run["model"].replace("_image", "_python_onnxruntime_fp32"), {}).get("mean_batch")
        lines.append(f"| {run['model']} | {run['concurrency']} | {run['throughput_ips']:.1f} | {run['p50']:.1f} | "
                     f"{run['p95']:.1f} | {run['p99']:.1f} | {top.get('queue_ms', 0):.1f} | {compute:.1f} | "
                     f"{batch} | {' | '.join(ref)} |")
    lines += ["", "In-process, one request of a batch at a time (what the dynamic batcher forms from "
              "concurrent batch-1 requests): " + ", ".join(f"batch {b['batch']}: {b['throughput_ips']:.1f} img/s, "
                                                      f"p50 {b['p50']:.1f} ms" for b in result["in_process"]["batched"])
              + "."]
    lines += ["", "In-process end to end from the photograph (p50 ms): decode "
              f"{e2e['decode_p50']:.1f}, preprocess {e2e['preprocess_p50']:.1f}, infer {e2e['infer_p50']:.1f}, "
              f"total {e2e['total_p50']:.1f}.", "", "Per-model server split of each ensemble run (ms per request):",
              "", "| concurrency | model | requests | mean batch | queue | compute input | compute infer | "
              "compute output |", "|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        if run["model"].endswith("_image") and "error" not in run:
            for name, s in sorted(run["server"].items()):
                if name == run["model"]:
                    continue
                lines.append(f"| {run['concurrency']} | {name} | {s['requests']} | {s['mean_batch']} | "
                             + " | ".join(f"{s[f'{k}_ms']:.2f}" for k in STATS) + " |")
    return "\n".join(lines) + "\n"


def versions(exe: Path) -> dict[str, str]:
    pa = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    found = {**library_versions(),
             "perf_analyzer": (pa.stdout + pa.stderr).strip().splitlines()[0].split("Version")[-1].strip()}
    for dist in ("tritonclient", "nvidia-pytriton"):
        found[dist] = metadata.version(dist)
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.access(args.perf_analyzer, os.X_OK):
        sys.exit(f"no perf_analyzer at {args.perf_analyzer}: run bash benchmarks/get_perf_analyzer.sh")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    export_dir = args.export or untrained_alexnet(work / "export", ["onnx", "triton"], max_batch=8)
    image = photo(work)
    start = machine_info()
    result = {"settings": {"concurrency": concurrency, "window_ms": args.window_ms, "stability": args.stability,
                           "client": "perf_analyzer, gRPC, batch 1"},
              "image": PHOTO, "image_bytes": image.stat().st_size, "versions": versions(args.perf_analyzer)}
    result.update(served(args, export_dir, image, concurrency, work))
    result["in_process"] = in_process(export_dir, image, concurrency, args.window_ms / 1e3)
    result["machine"] = start
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    stem = f"serve-load-{machine_slug(start)}-{date.today().isoformat()}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.results_dir / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {args.results_dir / stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
