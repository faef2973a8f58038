"""OUT/report.md + OUT/report.json for a finished pipeline, assembled from each step's outputs."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Manifest
from alexnet_deploy.report import markdown_table, write_report


def _divergence(v: dict) -> str:
    """Where a failed artifact's layers first diverge (the pipeline compares layers of failures)."""
    fd = v.get("first_divergence")
    return f" (first diverges at {fd.get('module')})" if isinstance(fd, dict) else ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _train_summary(out: Path) -> dict[str, Any]:
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines() if \
        (out / "train" / "metrics.jsonl").is_file() else []
    epochs = [json.loads(line) for line in lines if line.strip()]
    last = epochs[-1] if epochs else {}
    summary = {"epochs": len(epochs), **{k: v for k, v in last.items() if k != "epoch"}}
    summary.update(_final_metrics(out / "train" / "weights.safetensors"))
    return summary


def _final_metrics(weights: Path) -> dict[str, Any]:
    """The trainer's final metrics (test figures included) from the card in the weights' header."""
    from safetensors import SafetensorError, safe_open

    from alexnet_deploy.card import ModelCard

    try:
        with safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get("card")
        return ModelCard.from_json(text).metrics if text else {}
    except (OSError, ValueError, SafetensorError, UserError):  # a report is still written without them
        return {}


def _read_manifest(out: Path) -> Manifest | None:
    try:
        return Manifest.read(out / "export")
    except UserError:  # no export yet, or a broken one: the report says what there is
        return None


def _export_summary(manifest: Manifest | None) -> dict[str, Any]:
    if manifest is None:
        return {}
    card = manifest.card
    return {
        "model": {"arch": card.arch, "num_classes": card.num_classes, "input": card.input.crop},
        "artifacts": [{"format": str(a.format), "precision": str(a.precision), "device": a.device,
                       "path": a.path, "bytes": a.bytes, "export_s": a.export_s}
                      for a in manifest.artifacts],
        "skipped": [s.to_dict() for s in manifest.skipped],
        "versions": manifest.versions,
    }


def write_pipeline_report(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    manifest = _read_manifest(out)
    validation = _read_json(out / "validate" / "validation.json") or {}
    bench = _read_json(out / "benchmark" / "benchmark.json") or {}
    report = {
        "train": _train_summary(out),
        "export": _export_summary(manifest),
        "validate": validation,
        "benchmark": bench,
        "machine": bench.get("machine") or {"platform": platform.platform(),
                                            "processor": platform.processor()},
        "steps": state.get("steps", {}),
    }
    write_report(out / "report.json", report, _markdown(out, report))
    return report


_SECTION = {"validate": "validation"}  # the table each step's findings are in, where not its own name


def _markdown(out: Path, r: dict[str, Any]) -> str:
    t = r["train"]
    md = ["# alexnet-deploy pipeline report\n"]
    if model := r["export"].get("model"):
        md.append(f"Model: `{model['arch']}`, {model['num_classes']} classes, {model['input']} px input.\n")
    for name, step in r["steps"].items():
        if step.get("findings"):
            md.append(f"> **{name}: {step['findings']}** -- see the {_SECTION.get(name, name)} table below.\n")
    md.append("## Steps\n")
    md.append(markdown_table(["step", "status", "seconds", "log"],
                             [[k, getattr(v["status"], "value", v["status"]), v["seconds"], Path(v["log"]).relative_to(out)
                               if v.get("log") else ""] for k, v in r["steps"].items()]))
    md.append("\n## Training\n")
    md.append(markdown_table(["epochs", "val top-1", "val top-5", "test top-1", "images/s"],
                             [[t.get("epochs"), _pct(t.get("val_top1")), _pct(t.get("val_top5")),
                               _pct(t.get("test_top1")), _num(t.get("images_per_s"))]]))
    if (out / "train" / "curves.png").is_file():
        md.append("\n![training curves](train/curves.png)\n")
    md.append("\n## Formats and validation\n")
    checks = {(v.get("format"), v.get("precision"), v.get("backend")): v
              for v in r["validate"].get("results", [])}
    rows = []
    for a in r["export"].get("artifacts", []):
        runs = [v for (f, p, _), v in checks.items() if f == a["format"] and p == a["precision"]]
        verdict = ", ".join(f"{v.get('backend')}: {v.get('status') or ('PASS' if v.get('passed') else 'FAIL')}"
                            + _divergence(v) for v in runs) or "not validated"
        rows.append([a["format"], a["precision"], a["path"], f"{a['bytes'] / 1e6:.1f}", a["export_s"], verdict])
    md.append(markdown_table(["format", "precision", "file", "MB", "export s", "validation"], rows))
    for sk in r["export"].get("skipped", []):
        md.append(f"- skipped `{sk['format']}`: {sk['reason']}\n")
    md.append("\n## Benchmark\n")
    rows = [[b.get("backend"), b.get("precision"), b.get("batch_size"),
             _num(b.get("latency_ms", {}).get("p50")), _num(b.get("latency_ms", {}).get("p99")),
             _num(b.get("throughput_ips")), _pct(b.get("efficiency")) + (" floor wrong" if b.get("floor_wrong") else ""),
             b.get("stable")]
            for b in r["benchmark"].get("results", [])]
    md.append(markdown_table(["backend", "precision", "batch", "p50 ms", "p99 ms", "images/s",
                              "efficiency", "stable"], rows))
    if (out / "benchmark" / "benchmark.png").is_file():
        md.append("\n![latency and throughput](benchmark/benchmark.png)\n")
    md.append("\n## Machine\n")
    md.append("```\n" + json.dumps(r["machine"], indent=2) + "\n```\n")
    return "\n".join(md)


def _pct(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.1%}"  # accuracies are fractions everywhere


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.3g}"
