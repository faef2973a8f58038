"""Issue 16, bounded cost: peak memory of `validate --layers` against a plain `validate`, side by side.

For each backend named, runs `alexnet-deploy validate DIR --images 0 --backends B` with and without
`--layers` in child processes (alternating, ROUNDS times each) and reads each child's peak resident set
from the kernel (os.wait4's ru_maxrss). The export defaults to an untrained AlexNet at 224 px (memory
does not depend on the weights) written to WORK/<arch>/export with ONNX, OpenVINO and torch.export;
--archs names other registered architectures (each at its default input size). Writes
benchmarks/results/layers-memory-<machine>-<date>.{json,md}.

    .venv/bin/python benchmarks/layers_memory.py [--archs alexnet,resnet50] [--work-dir DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

from alexnet_deploy.machine import library_versions, machine_info, machine_slug  # noqa: E402

ARCHS = ("alexnet", "resnet50", "mobilenet_v3_large")  # plain, residual, depthwise + squeeze-excite

BACKENDS = ("onnxruntime-cpu", "openvino", "torch-export")
CLI = [sys.executable, "-m", "alexnet_deploy"]


def make_export(work: Path, arch: str) -> Path:
    """Run in a child (--make-export): Linux keeps a process's peak RSS across exec, so the
    measured children must be forked from a parent that never held a model."""
    import torch

    from alexnet_deploy.exporters import export_all
    from alexnet_deploy.models import ModelCard, build_model, default_input, save_weights

    out = work / arch / "export"
    if (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    card = ModelCard(arch=arch, num_classes=1000, classes=[f"class{i}" for i in range(1000)],
                     input=default_input(arch), data={})
    weights = work / arch / "weights.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    model = build_model(arch, 1000)
    settle_batch_norm(model, card.input.crop)
    save_weights(model, card, weights)
    export_all(weights, out, formats=["onnx", "openvino", "torch-export"], max_batch=8, calib_images=8,
               show=False)
    return out


def settle_batch_norm(model, size: int) -> None:
    """An untrained network's BatchNorm layers hold mean 0 / variance 1, so in eval mode activations
    grow block after block and the fp16 export fails its check on numbers no trained model has.
    A few forward passes in train mode give the statistics of random inputs: the scale of a trained
    network, still without training it."""
    import torch

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    model.train()
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(8, 3, size, size))
    model.eval()


def resource_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb(args: list[str], report: Path) -> tuple[float, int]:
    """The child's peak RSS in MB and its exit code."""
    proc = subprocess.Popen([*CLI, *args, "--report", str(report)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):
        raise SystemExit(f"validate {' '.join(args)} exited {proc.returncode}: {err[-500:]}")
    return usage.ru_maxrss / 1024, proc.returncode


def measure(export: Path, arch: str, args, work: Path) -> list[dict]:
    rows = []
    for backend in args.backends.split(","):
        plain, layered = [], []
        for _ in range(args.rounds):  # alternate so drifting load hits both alike
            base = ["validate", str(export), "--images", "0", "--backends", backend]
            plain.append(peak_mb(base, work / "plain.json")[0])
            layered.append(peak_mb([*base, "--layers"], work / "layers.json")[0])
        detail = json.loads((work / "layers.json").read_text())
        notes = sorted({r.get("layers_note") or "" for r in detail["results"]})
        rows.append({"arch": arch, "backend": backend, "plain_peak_mb": round(min(plain), 1),
                     "layers_peak_mb": round(min(layered), 1),
                     "ratio": round(min(layered) / min(plain), 2), "notes": notes,
                     # honest artifacts of this architecture against the per-layer limits: null = none exceeded
                     "first_divergence": {f"{r.get('precision')} {r.get('artifact')}": r.get("first_divergence")
                                          for r in detail["results"]},
                     "layers_compared": {f"{r.get('precision')} {r.get('artifact')}": len(r.get("layers") or [])
                                         for r in detail["results"]},
                     # how close honest artifacts come to their depth-scaled limits
                     "closest_to_limit": {f"{r.get('precision')} {r.get('artifact')}": closest_to_limit(r)
                                          for r in detail["results"] if r.get("layers")}})
        print(rows[-1], flush=True)
    return rows


def closest_to_limit(result: dict) -> dict | None:
    """The measured layer with the largest rel_l2 / limit: its module, depth, reading and limit."""
    judged = [x for x in result["layers"] if x.get("rel_l2") is not None and x.get("limit")]
    if not judged:
        return None
    worst = max(judged, key=lambda x: x["rel_l2"] / x["limit"])
    return {"module": worst["module"], "depth": worst.get("depth"), "rel_l2": worst["rel_l2"],
            "limit": worst["limit"], "ratio": round(worst["rel_l2"] / worst["limit"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--note", default="", help="a sentence for the report: what was left out, and why")
    ap.add_argument("--make-export", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layers-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.make_export:
        make_export(work, args.make_export)
        return
    archs = args.archs.split(",")
    for arch in archs:
        subprocess.run([sys.executable, __file__, "--make-export", arch, "--work-dir", str(work)], check=True)
    parent = resource_mb()
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = [row for arch in archs for row in measure(work / arch / "export", arch, args, work)]
    machine = machine_info()
    report = {"date": date.today().isoformat(), "machine": machine, "versions": library_versions(),
              "archs": archs, "rounds": args.rounds, "measure": "min over rounds of each child's "
              "peak RSS (ru_maxrss), validate --images 0 (8 random inputs, batch sizes 1, 3, 8)",
              "note": args.note, "parent_peak_mb": round(parent, 1), "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "results": rows}
    stem = REPO / "benchmarks" / "results" / f"layers-memory-{machine_slug(machine)}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# validate --layers peak memory ({report['date']})\n",
             f"{machine.get('cpu')}, load {load_before} before, {report['load_after']} after; "
             f"{report['measure']}. Exports: untrained, 1000 classes, each architecture's default input size. The measuring parent peaked at "
             f"{report['parent_peak_mb']} MB (a floor for every child: the kernel keeps the peak across exec).\n",
             *([args.note + "\n"] if args.note else []),
             "| architecture | backend | plain validate MB | --layers MB | ratio | layers compared | first divergence | closest to its limit |",
             "|---|---|---:|---:|---:|---|---|---|"]
    lines += [f"| {r['arch']} | {r['backend']} | {r['plain_peak_mb']} | {r['layers_peak_mb']} | {r['ratio']} | "
              f"{', '.join(f'{k}: {v}' for k, v in r['layers_compared'].items())} | "
              f"{', '.join(f'{k}: {v}' for k, v in r['first_divergence'].items())} | "
              f"{', '.join(f'{k}: {closest_text(v)}' for k, v in r['closest_to_limit'].items())} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


def closest_text(c: dict | None) -> str:
    if c is None:
        return "-"
    return f"{c['module']} (depth {c['depth']}) {c['rel_l2']:.3g} of {c['limit']:.3g}"


if __name__ == "__main__":
    main()
