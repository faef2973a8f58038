"""Training images/s at 224 px on this machine's CPU: the plain fp32 loop against the fast path.

Variants, measured side by side in one process with the same model, batch and threads:
  fp32                      eager, contiguous NCHW, float32 (the baseline)
  channels_last             eager, NHWC memory format (oneDNN's preferred layout)
  channels_last+bf16        + torch.autocast("cpu", bfloat16), only where the CPU has avx512_bf16/amx
  channels_last+bf16+compile + torch.compile (inductor)

Synthetic inputs: this measures the training step (forward, backward, optimizer), not JPEG decoding.

--recipe measures the demo recipe's step instead (64 px, batch 64, AdamW, channels_last), adding one
change at a time: foreach -> fused AdamW, + bf16 autocast, + glibc keeping freed memory
(training.freed_memory_kept, as fit() applies it on CPU).

    .venv/bin/python benchmarks/train_speed.py [--batch-size 32] [--steps 6] [--out benchmarks/results]
    .venv/bin/python benchmarks/train_speed.py --recipe
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from alexnet_deploy.machine import cpu_flags, cpu_has_bf16, library_versions
from alexnet_deploy.models import build_model
from alexnet_deploy.report import markdown_table, write_report
from alexnet_deploy.training import TrainConfig, make_optimizer


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(name: str, *, channels_last: bool, bf16: bool, compile: bool, batch: int, size: int,
            warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model("alexnet", 1000)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    cfg = TrainConfig(data="-", out="-", optimizer="sgd")
    optimizer = make_optimizer(cfg, model)
    step_model = torch.compile(model) if compile else model
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()  # includes compilation for the compiled variant
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    row = {"variant": name, "channels_last": channels_last, "bf16_autocast": bf16, "compile": compile,
           "batch_size": batch, "image_size": size, "first_step_s": round(first_s, 3),
           "step_s_median": round(med, 4), "step_s_min": round(min(times), 4),
           "step_s_max": round(max(times), 4), "images_per_s": round(batch / med, 2), "steps": steps}
    print(f"{name:28s} {row['images_per_s']:8.2f} img/s  (median step {med:.3f} s, first {first_s:.1f} s)",
          flush=True)
    return row


def measure_recipe_step(name: str, *, fused: bool, bf16: bool, keep_memory: bool, warmup: int,
                        steps: int) -> dict:
    from alexnet_deploy.training import DEMO_RECIPE, freed_memory_kept

    recipe = DEMO_RECIPE["train"]
    torch.manual_seed(0)
    model = build_model("alexnet", 10, dropout=recipe["dropout"], init=recipe["init"])
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], fused=fused, foreach=not fused)
    batch, size = recipe["batch_size"], recipe["image_size"]
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times, cpu = [], []
    with freed_memory_kept() if keep_memory else nullcontext():
        for i in range(warmup + steps):
            t, c = time.perf_counter(), os.times()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - t)
                cpu.append(os.times().system - c.system)
    med = statistics.median(times)
    row = {"variant": name, "fused_adamw": fused, "bf16_autocast": bf16, "keep_freed_memory": keep_memory,
           "batch_size": batch, "image_size": size, "step_ms_median": round(1000 * med, 1),
           "system_ms_per_step": round(1000 * statistics.median(cpu), 1),
           "images_per_s": round(batch / med, 1), "steps": steps}
    print(f"{name:36s} {row['step_ms_median']:7.1f} ms/step  {row['images_per_s']:7.1f} img/s  "
          f"system {row['system_ms_per_step']} ms/step", flush=True)
    return row


def recipe_report(args, machine: dict) -> None:
    has_bf16 = cpu_has_bf16()
    variants = [("foreach AdamW (session-1 trainer)", False, False, False), ("fused AdamW", True, False, False)]
    if has_bf16:
        variants.append(("fused AdamW + bf16 autocast", True, True, False))
    variants.append(("... + glibc keeps freed memory", True, has_bf16, True))
    rows = [measure_recipe_step(n, fused=f, bf16=b, keep_memory=k, warmup=args.warmup, steps=args.steps)
            for n, f, b, k in variants]
    for r in rows:
        r["speedup"] = round(rows[0]["step_ms_median"] / r["step_ms_median"], 2)
    machine["load_average_at_end"] = list(os.getloadavg())
    report = {"benchmark": "train_speed_recipe", "machine": machine, "versions": library_versions(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": rows}
    md = ("# Training step of the demo recipe (AlexNet, 64 px, batch 64, AdamW, channels_last)\n\n"
          f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads; "
          f"torch {report['versions'].get('torch')}. Load average at start/end: "
          f"{machine['load_average_at_start'][0]:.2f} / {machine['load_average_at_end'][0]:.2f}. "
          "Each row adds one change to the row above; system time is the kernel's share (page faults).\n\n"
          + markdown_table(["variant", "ms/step", "images/s", "system ms/step", "speed-up"],
                           [[r["variant"], r["step_ms_median"], r["images_per_s"], r["system_ms_per_step"],
                             r["speedup"]] for r in rows]))
    json_path, md_path = write_report(args.out / "train_speed_recipe_cpu.json", report, md)
    print(f"written {json_path} and {md_path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads [default: torch's]")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--recipe", action="store_true", help="The demo recipe's step at 64 px instead.")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    flags = cpu_flags()
    has_bf16 = cpu_has_bf16()
    variants = [("fp32", False, False, False), ("channels_last", True, False, False)]
    if has_bf16:
        variants += [("channels_last+bf16", True, True, False), ("channels_last+bf16+compile", True, True, True)]
    else:
        variants += [("channels_last+compile", True, False, True)]

    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
               "mkldnn": torch.backends.mkldnn.is_available(), "platform": platform.platform(),
               "load_average_at_start": list(os.getloadavg())}
    if args.recipe:
        return recipe_report(args, machine)
    print(f"{machine['cpu']} | {machine['logical_cpus']} CPUs | {machine['torch_threads']} threads | "
          f"batch {args.batch_size} at {args.image_size} px", flush=True)
    t0 = time.perf_counter()
    rows = [measure(name, channels_last=cl, bf16=bf, compile=co, batch=args.batch_size, size=args.image_size,
                    warmup=args.warmup, steps=args.steps) for name, cl, bf, co in variants]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_vs_fp32"] = round(r["images_per_s"] / base, 3)
    machine["load_average_at_end"] = list(os.getloadavg())
    report = {"benchmark": "train_speed", "machine": machine, "versions": library_versions(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": round(time.perf_counter() - t0, 1),
              "results": rows}
    md = (f"# Training speed, AlexNet at {args.image_size} px, batch {args.batch_size}\n\n"
          f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads, "
          f"avx512_bf16: {machine['avx512_bf16']}; torch {report['versions'].get('torch')}. "
          f"Load average at start/end: {machine['load_average_at_start'][0]:.2f} / "
          f"{machine['load_average_at_end'][0]:.2f} (this benchmark alone accounts for about 2; more means other jobs shared the CPU).\n\n"
          + markdown_table(["variant", "images/s", "speed-up", "median step s", "first step s"],
                           [[r["variant"], r["images_per_s"], r["speedup_vs_fp32"], r["step_s_median"],
                             r["first_step_s"]] for r in rows]))
    json_path, md_path = write_report(args.out / "train_speed_cpu.json", report, md)
    print(f"written {json_path} and {md_path}")


if __name__ == "__main__":
    main()
