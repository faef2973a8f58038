"""The standard CPU benchmark: export the standard artifact set and benchmark every CPU backend.

Weights: --weights FILE, or (default) demo weights: the demo data set is generated and trained on
for a short run when the trainer is available, else a seeded random initialisation is used. The
weights' values do not change dense timings; they only matter for int8 calibration.

Writes benchmarks/results/<machine>-<date>.{json,md,png} (the harness's report, plot beside it).

    .venv/bin/python benchmarks/suite.py [--weights W] [--batch-sizes 1,8,32] [--duration-s 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without installing

from alexnet_deploy.bench import benchmark  # noqa: E402
from alexnet_deploy.bench.output import print_table, write_outputs  # noqa: E402
from alexnet_deploy.errors import UserError  # noqa: E402
from alexnet_deploy.machine import machine_slug  # noqa: E402

# Every format that runs on a CPU; formats that cannot be exported here are skipped by export_all.
CPU_FORMATS = ["torchscript", "onnx", "torch-export", "aoti", "openvino"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="Weights to export [default: short demo training].")
    p.add_argument("--work-dir", type=Path, default=None, help="Where data, weights and exports go "
                   "[default: a temporary folder, removed afterwards].")
    p.add_argument("--reuse-export", action="store_true",
                   help="Benchmark WORK_DIR/export as it is (from an earlier run with --work-dir).")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-sizes", default="1,8,32", help="Comma-separated [default: 1,8,32].")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=6.0, help="Cap on timed seconds per result.")
    p.add_argument("--threads", type=int, default=None, help="[default: physical cores]")
    p.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--note", action="append", default=[], help="A line for the report (repeatable).")
    return p.parse_args(argv)


def demo_weights(work: Path, image_size: int) -> Path:
    """Train a short run on the demo data when the trainer exists, else seeded random weights."""
    import torch

    from alexnet_deploy.data import check_class_folders, make_demo, resolve_split
    from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights

    data = make_demo(work / "data", classes=10, per_class=16, size=image_size + 32, seed=0)
    try:
        from alexnet_deploy.training import TrainConfig, fit
    except ImportError:
        torch.manual_seed(0)
        card = ModelCard(num_classes=10, classes=check_class_folders(resolve_split(data, "train")),
                         input=InputSpec.for_size(image_size),
                         data={"root": str(data), "val": str(data / "val")})
        return save_weights(build_model("alexnet", 10), card, work / "random.safetensors")
    result = fit(TrainConfig(data=str(data), out=str(work / "run"), epochs=1, batch_size=32,
                             image_size=image_size, device="cpu", workers=0, quiet=True))
    return Path(result.weights)


def run(args, work: Path) -> Path:
    from alexnet_deploy.exporters import export_all

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    export_dir = work / "export"
    if args.reuse_export:
        weights = args.weights or "the weights of the reused export"
    else:
        weights = args.weights or demo_weights(work, args.image_size)
        print(f"exporting {weights} to {export_dir}", file=sys.stderr, flush=True)
        export_all(str(weights), export_dir, formats=CPU_FORMATS, max_batch=max(batch_sizes), force=True)
    report = benchmark(export_dir, batch_sizes=batch_sizes, warmup_s=args.warmup_s,
                       duration_s=args.duration_s, threads=args.threads, device="cpu")
    report.notes += args.note
    report.notes.append(f"benchmarks/suite.py: {weights if args.weights else 'demo weights'}, "
                        f"{args.image_size} px, formats {', '.join(CPU_FORMATS)}")
    stem = f"{machine_slug(report.machine)}-{date.today().isoformat()}"
    paths = write_outputs(report, args.results_dir / f"{stem}.json", args.results_dir / f"{stem}.png")
    print_table(report)
    print("wrote " + ", ".join(map(str, paths)))
    return paths[0]


def run_in_work_dir(run_fn, args, prefix: str) -> int:
    """Call run_fn(args, folder) in --work-dir (kept) or a temporary folder; a UserError or a
    --reuse-export without --work-dir is one line on stderr and exit code 2."""
    if args.reuse_export and not args.work_dir:
        print("error: --reuse-export needs --work-dir (the folder of an earlier run)", file=sys.stderr)
        return 2
    from alexnet_deploy.console import setup_logging

    setup_logging()  # the harness's progress lines, as the command line shows them
    try:
        if args.work_dir:
            os.makedirs(args.work_dir, exist_ok=True)
            run_fn(args, args.work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
                run_fn(args, Path(tmp))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    return run_in_work_dir(run, parse_args(argv), "alexnet-suite-")


if __name__ == "__main__":
    sys.exit(main())
