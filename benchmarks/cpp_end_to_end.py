"""Issue 15: end to end per image in C++ against the Python path, same images and artifact, one run.

Builds export/cpp at -O3 (WORK/cpp-build), exports an untrained AlexNet at 224 px to ONNX (timings
do not depend on the weights), writes 8 JPEGs of camera-like sizes from the photograph matplotlib
ships, then for batch 1 and 8, alternating C++ and Python runs:
  C++     alexnet_infer_openvino MODEL IMAGE... --threads T --repeat R (its own medians);
  Python  data.load_image (decode), the card's torchvision transform + stacking (preprocess) and
          the openvino runner (inference, fp32, T threads): medians over R runs of the batch.
Both run OpenVINO in fp32 on the same ONNX file. Writes
benchmarks/results/cpp-end-to-end-<machine>-<date>.{json,md}.

    .venv/bin/python benchmarks/cpp_end_to_end.py [--work-dir DIR] [--threads 2] [--repeat 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

from alexnet_deploy.machine import machine_info, machine_slug  # noqa: E402
from benchmarks.common import photo as sample_photo  # noqa: E402
from benchmarks.common import untrained_alexnet  # noqa: E402

SIZES = [(4032 // 4, 3024 // 4), (1280, 960), (640, 480), (512, 600), (800, 600), (1600, 1200), (720, 1280),
         (300, 400)]
BATCHES = (1, 8)
PROGRAM = "alexnet_infer_openvino"
CPP_LINES = {
    "decode": r"decode \+ preprocess per batch of \d+: decode ([\d.]+) ms",
    "preprocess": r"resize \+ crop \+ normalise ([\d.]+) ms",
    "infer": r"time per batch of \d+: mean [\d.]+ ms, median ([\d.]+) ms",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3, help="Alternating C++ / Python rounds; medians kept.")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def build(work: Path) -> Path:
    out = work / "cpp-build"
    subprocess.run(["cmake", "-S", str(REPO / "export" / "cpp"), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DALEXNET_PYTHON={sys.executable}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(out), "-j", "2", "--target", PROGRAM], check=True, capture_output=True)
    return out / PROGRAM


def export(work: Path) -> Path:
    return untrained_alexnet(work / "export", ["onnx"], max(BATCHES)) / "alexnet.onnx"


def images(work: Path) -> list[Path]:
    from PIL import Image

    photo = Image.open(sample_photo()).convert("RGB")
    folder = work / "images"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, size in enumerate(SIZES):
        path = folder / f"photo{i}_{size[0]}x{size[1]}.jpg"
        photo.resize(size).save(path, quality=90)
        paths.append(path)
    return paths


def run_cpp(exe: Path, model: Path, paths: list[Path], threads: int, repeat: int) -> dict[str, float]:
    proc = subprocess.run([str(exe), str(model), *map(str, paths), "--threads", str(threads), "--repeat",
                           str(repeat), "--quiet"], capture_output=True, text=True, check=True)
    return {k: float(re.search(rx, proc.stdout).group(1)) for k, rx in CPP_LINES.items()}


def run_python(runner, card, paths: list[Path], repeat: int) -> dict[str, float]:
    from alexnet_deploy.data import apply_transform, card_transform, load_image

    transform = card_transform(card)
    times: dict[str, list[float]] = {"decode": [], "preprocess": [], "infer": []}
    runner.infer(np.zeros((len(paths), *card.input.shape), np.float32))  # compile for this batch size
    for _ in range(repeat):
        t0 = time.perf_counter()
        decoded = [load_image(str(p)) for p in paths]
        t1 = time.perf_counter()
        batch = np.ascontiguousarray(np.stack([apply_transform(transform, im, str(p)).numpy()
                                               for im, p in zip(decoded, paths, strict=True)]))
        t2 = time.perf_counter()
        runner.infer(batch)
        t3 = time.perf_counter()
        for k, (a, b) in zip(times, ((t0, t1), (t1, t2), (t2, t3)), strict=True):
            times[k].append((b - a) * 1e3)
    alone = []  # the same inference with nothing in between: what the pipeline's preprocessing costs it
    for _ in range(repeat):
        t0 = time.perf_counter()
        runner.infer(batch)
        alone.append((time.perf_counter() - t0) * 1e3)
    return {**{k: statistics.median(v) for k, v in times.items()}, "infer_alone": statistics.median(alone)}


def measure(args, exe: Path, model: Path, paths: list[Path]) -> list[dict]:
    from alexnet_deploy.manifest import Manifest
    from alexnet_deploy.runtimes import get_runner

    manifest = Manifest.read(model.parent)
    artifact = manifest.listed(model)
    rows = []
    with get_runner("openvino").from_artifact(manifest, artifact, threads=args.threads) as runner:
        for n in BATCHES:
            chosen = paths[:n]
            rounds = {"cpp": [], "python": []}
            for _ in range(args.rounds):  # alternate so drifting machine load hits both sides alike
                rounds["cpp"].append(run_cpp(exe, model, chosen, args.threads, args.repeat))
                rounds["python"].append(run_python(runner, manifest.card, chosen, args.repeat))
            row = {"batch": n, "images": [p.name for p in chosen]}
            for side, results in rounds.items():
                per_batch = {k: statistics.median(r[k] for r in results) for k in results[0]}
                row[side] = {f"{k}_ms_per_image": round(v / n, 3) for k, v in per_batch.items()}
                row[side]["decode_preprocess_ms_per_image"] = round((per_batch["decode"] + per_batch["preprocess"]) / n, 3)
                row[side]["end_to_end_ms_per_image"] = round(
                    sum(per_batch[k] for k in ("decode", "preprocess", "infer")) / n, 3)
            row["python_infer_alone_ms_per_image"] = row["python"].pop("infer_alone_ms_per_image")
            row["python_over_cpp"] = {k.replace("_ms_per_image", ""): round(row["python"][k] / row["cpp"][k], 2)
                                      for k in row["cpp"]}
            rows.append(row)
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# C++ against Python, end to end per image ({report['date']})", "",
             f"{m['cpu']}, {m['cores_logical']} logical cores; OpenVINO fp32 on the same ONNX file "
             f"(untrained AlexNet, 224 px, 1000 classes), {report['threads']} threads each; medians of "
             f"{report['repeat']} runs, median of {report['rounds']} alternating rounds. Load average "
             f"{report['load_before']} before, {report['load_after']} after. Versions: {report['versions']}.",
             "", "Images: JPEG re-encodes (quality 90) of the photograph at "
             + ", ".join(f"{w}x{h}" for w, h in SIZES) + " (batch 1: the first).", "",
             "C++ decodes and preprocesses the images of a batch in parallel, one thread per core; Python "
             "does them one after the other, as `predict` and `preprocess` do.", "",
             "| batch | side | decode | resize + crop + normalise | decode + preprocess | inference | end to end |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for side in ("cpp", "python"):
            r = row[side]
            lines.append(f"| {row['batch']} | {side} | {r['decode_ms_per_image']} | {r['preprocess_ms_per_image']} | "
                         f"{r['decode_preprocess_ms_per_image']} | {r['infer_ms_per_image']} | "
                         f"{r['end_to_end_ms_per_image']} |")
        lines.append(f"| {row['batch']} | python, inference alone | | | | {row['python_infer_alone_ms_per_image']} | |")
        ratio = row["python_over_cpp"]
        lines.append(f"| {row['batch']} | python / cpp | {ratio['decode']}x | {ratio['preprocess']}x | "
                     f"{ratio['decode_preprocess']}x | {ratio['infer']}x | {ratio['end_to_end']}x |")
    lines += ["", "Milliseconds per image. The issue's goal: C++ decode + preprocess at least 2x faster than "
              "Python's, inference the same within noise."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cpp-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    exe, model, paths = build(work), export(work), images(work)
    import openvino
    import torch
    import torchvision
    from PIL import Image

    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = measure(args, exe, model, paths)
    report = {"date": date.today().isoformat(), "machine": machine_info(), "threads": args.threads,
              "repeat": args.repeat, "rounds": args.rounds, "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "versions": {"openvino": openvino.__version__.split("-")[0], "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "pillow": Image.__version__},
              "rows": rows}
    stem = args.results_dir / f"cpp-end-to-end-{machine_slug(report['machine'])}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
