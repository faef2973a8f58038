"""Issue 16, bounded cost: peak memory of `validate --layers` against a plain `validate`, side by side.

For each backend named, runs `alexnet-deploy validate DIR --images 0 --backends B` with and without
`--layers` in child processes (alternating, ROUNDS times each) and reads each child's peak resident set
from the kernel (os.wait4's ru_maxrss). The export defaults to an untrained AlexNet at 224 px (memory
does not depend on the weights) written to WORK/export with ONNX, OpenVINO and torch.export. Writes
benchmarks/results/layers-memory-<machine>-<date>.{json,md}.

    .venv/bin/python benchmarks/layers_memory.py [--export DIR] [--work-dir DIR] [--rounds 2]
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

BACKENDS = ("onnxruntime-cpu", "openvino", "torch-export")
CLI = [sys.executable, "-m", "alexnet_deploy"]


def make_export(work: Path) -> Path:
    """Run in a child (--make-export): Linux keeps a process's peak RSS across exec, so the
    measured children must be forked from a parent that never held a model."""
    import torch

    from alexnet_deploy.exporters import export_all
    from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights

    out = work / "export"
    if (out / "manifest.json").is_file():
        return out
    torch.manual_seed(0)
    card = ModelCard(arch="alexnet", num_classes=1000, classes=[f"class{i}" for i in range(1000)],
                     input=InputSpec.for_size(224), data={})
    weights = work / "weights.safetensors"
    save_weights(build_model("alexnet", 1000), card, weights)
    export_all(weights, out, formats=["onnx", "openvino", "torch-export"], max_batch=8, calib_images=8,
               show=False)
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--make-export", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layers-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.make_export:
        make_export(work)
        return
    export = args.export
    if export is None:
        subprocess.run([sys.executable, __file__, "--make-export", "--work-dir", str(work)], check=True)
        export = work / "export"
    parent = resource_mb()
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for backend in args.backends.split(","):
        plain, layered = [], []
        for _ in range(args.rounds):  # alternate so drifting load hits both alike
            base = ["validate", str(export), "--images", "0", "--backends", backend]
            plain.append(peak_mb(base, work / "plain.json")[0])
            layered.append(peak_mb([*base, "--layers"], work / "layers.json")[0])
        detail = json.loads((work / "layers.json").read_text())
        notes = sorted({r.get("layers_note") or "" for r in detail["results"]})
        rows.append({"backend": backend, "plain_peak_mb": round(min(plain), 1),
                     "layers_peak_mb": round(min(layered), 1),
                     "ratio": round(min(layered) / min(plain), 2), "notes": notes})
        print(rows[-1], flush=True)
    machine = machine_info()
    report = {"date": date.today().isoformat(), "machine": machine, "versions": library_versions(),
              "export": str(export), "rounds": args.rounds, "measure": "min over rounds of each child's "
              "peak RSS (ru_maxrss), validate --images 0 (8 random inputs, batch sizes 1, 3, 8)",
              "parent_peak_mb": round(parent, 1), "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "results": rows}
    stem = REPO / "benchmarks" / "results" / f"layers-memory-{machine_slug(machine)}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# validate --layers peak memory ({report['date']})\n",
             f"{machine.get('cpu')}, load {load_before} before, {report['load_after']} after; "
             f"{report['measure']}. Export: AlexNet 224 px, 1000 classes. The measuring parent peaked at "
             f"{report['parent_peak_mb']} MB (a floor for every child: the kernel keeps the peak across exec).\n",
             "| backend | plain validate MB | --layers MB | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['plain_peak_mb']} | {r['layers_peak_mb']} | {r['ratio']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
