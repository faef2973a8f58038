"""`alexnet-deploy info PATH`: describe weights, an export folder, or one artifact.

Each kind has a describer that returns a plain dict (printed as JSON with --json, or as rich
tables); nothing here loads a model into a runtime.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alexnet_deploy.card import printable
from alexnet_deploy.errors import UserError
from alexnet_deploy.manifest import Artifact, Manifest, Uncontained, _sha256, contained, verify_integrity


def run_info(path: str | os.PathLike, as_json: bool = False) -> dict[str, Any]:
    info = describe(Path(path))
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return info


def describe(path: Path) -> dict[str, Any]:
    import stat

    if not os.path.lexists(path):
        raise UserError(f"{printable(path)} not found: pass weights, an export folder or an artifact")
    if path.is_dir() and (path / "manifest.json").is_file():
        return describe_export(path)
    if path.name == "manifest.json":
        return describe_export(path.parent)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise UserError(f"{printable(path)} is a dangling symlink: pass weights, an export folder or an artifact") \
            from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # checked before anything opens it: reading a FIFO or a device would hang or never end
        raise UserError(f"{printable(path)} is not a regular file (a FIFO, socket or device); "
                        "pass weights, an export folder or an artifact")
    if path.suffix == ".onnx":
        return describe_onnx(path)
    listed = _manifest_entry(path)
    if listed:  # before the suffix: a TorchScript artifact's .pt is not a state dict
        return {"kind": "artifact", "path": str(path), **listed}
    if path.is_file() and path.suffix in WEIGHTS:
        return WEIGHTS[path.suffix](path)
    raise UserError(f"cannot describe {printable(path)}: not weights ({', '.join(WEIGHTS)}), not ONNX, not an "
                    "export folder, and not listed in a manifest.json above it")


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def describe_safetensors(path: Path) -> dict[str, Any]:
    """Card, tensors and parameters from the header alone: the tensors are never read."""
    from safetensors import SafetensorError, safe_open

    from alexnet_deploy.card import ModelCard

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None
    card = ModelCard.from_json(meta["card"], what=f"{path}: model card").to_dict() if "card" in meta else None
    return {"kind": "weights", "path": str(path), "format": "safetensors", "bytes": path.stat().st_size,
            "sha256": _sha256(path), "tensors": len(shapes),
            "parameters": sum(_prod(s) for s in shapes.values()), "card": card}


def describe_pth(path: Path) -> dict[str, Any]:
    from alexnet_deploy.models import load_weights

    model, card = load_weights(path)  # torch.load(weights_only=True) inside
    return {"kind": "weights", "path": str(path), "format": "pth state dict",
            "bytes": path.stat().st_size, "sha256": _sha256(path),
            "tensors": len(model.state_dict()),
            "parameters": sum(p.numel() for p in model.parameters()), "card": card.to_dict()}


# ---------------------------------------------------------------------------------------------
# Export folders and artifacts
# ---------------------------------------------------------------------------------------------
def describe_export(root: Path) -> dict[str, Any]:
    manifest = Manifest.read(root)
    return {"kind": "export", "path": str(root), "card": manifest.card.to_dict(),
            "weights": manifest.weights,
            "artifacts": [_artifact_row(manifest, a) for a in manifest.artifacts],
            "skipped": [{"format": s.format, "reason": s.reason} for s in manifest.skipped],
            "versions": manifest.versions}


def _artifact_row(manifest: Manifest, art: Artifact, integrity: bool = False) -> dict[str, Any]:
    """One artifact as the manifest lists it. `problem`: why it cannot be loaded (outside the
    folder, missing, not a regular file; with `integrity`, a changed file too), else None."""
    return {"format": art.format, "precision": art.precision, "device": art.device, "path": art.path,
            "bytes": art.bytes, "sha256": art.sha256, "batch": art.batch.to_dict(),
            "input_name": art.input_name, "output_name": art.output_name,
            "problem": verify_integrity(manifest, art) if integrity else _containment(manifest, art),
            "runs_here": runners_here(art)}


def _containment(manifest: Manifest, art: Artifact) -> str | None:
    try:
        contained(manifest.root, art.path, "dir" if art.is_folder else "file")
    except Uncontained as e:
        return str(e)
    return None


def runners_here(art: Artifact) -> dict[str, str | None]:
    """Each runner that accepts the artifact: None when it can run here, else why not."""
    from alexnet_deploy.runtimes import RUNNERS

    return {name: cls.unavailable_reason() for name, cls in RUNNERS.items() if cls.accepts(art)}


def describe_onnx(path: Path) -> dict[str, Any]:
    """Opset, inputs/outputs with their symbolic (dynamic) dims, and the card in metadata_props."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not ONNX
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from None
    meta = {p.key: p.value for p in model.metadata_props}
    card = None
    if "card" in meta:
        try:
            card = json.loads(meta.pop("card"))
        except json.JSONDecodeError:
            card = None
    info = {"kind": "artifact", "path": str(path), "format": "onnx", "bytes": path.stat().st_size,
            "sha256": _sha256(path), "ir_version": model.ir_version,
            "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "inputs": [_value_info(v) for v in model.graph.input],
            "outputs": [_value_info(v) for v in model.graph.output],
            "initializers": len(model.graph.initializer),
            "parameters": sum(_prod(t.dims) for t in model.graph.initializer),
            "metadata": meta, "card": card}
    listed = _manifest_entry(path)
    if listed:
        info["manifest"] = listed
        info["runs_here"] = listed["runs_here"]
    return info


def _value_info(v) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": dims, "dynamic": [i for i, d in enumerate(dims) if isinstance(d, str)]}


def _manifest_entry(path: Path) -> dict[str, Any] | None:
    from alexnet_deploy.predict import find_manifest

    root = find_manifest(path)
    if root is None:
        return None
    manifest = Manifest.read(root)
    art = manifest.listed(path)
    if art is None or art.format == "weights":
        return None
    return {"export": str(root), **_artifact_row(manifest, art, integrity=True),
            "card": manifest.card.to_dict(), "versions": manifest.versions}


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


WEIGHTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    ".safetensors": describe_safetensors,
    ".pth": describe_pth,
    ".pt": describe_pth,
}


# ---------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------
def print_info(info: dict[str, Any]) -> None:
    from alexnet_deploy.console import make_console

    console = make_console(min_width=150)
    facts = {k: v for k, v in info.items()
             if k not in ("card", "artifacts", "skipped", "inputs", "outputs", "versions", "metadata",
                          "runs_here", "weights", "manifest")}
    if "bytes" in facts:
        facts["bytes"] = f"{facts['bytes']:,} ({facts['bytes'] / 1e6:.1f} MB)"
    if "parameters" in facts:
        facts["parameters"] = f"{facts['parameters']:,}"
    if isinstance(info.get("weights"), dict):
        facts["weights"] = f"{info['weights'].get('path')} (sha256 {info['weights'].get('sha256', '')[:12]})"
    _kv(console, f"{info['kind']}: {info['path']}", facts)
    for key in ("inputs", "outputs"):
        if info.get(key):
            _table(console, key, ["name", "dtype", "shape", "dynamic dims"],
                   [[v["name"], v["dtype"], str(v["shape"]), str(v["dynamic"]) if v["dynamic"] else "-"]
                    for v in info[key]])
    if info.get("runs_here") is not None:
        _kv(console, "runners", {n: r or "runs here" for n, r in info["runs_here"].items()})
    if info.get("manifest"):
        _kv(console, "manifest entry", {k: v for k, v in info["manifest"].items()
                                        if k not in ("card", "versions", "runs_here")})
    if info.get("artifacts") is not None:
        _table(console, "artifacts", ["format", "precision", "device", "path", "MB", "sha256",
                                      "batch", "runs here"],
               [[a["format"], a["precision"], a["device"], a["path"], f"{a['bytes'] / 1e6:.1f}",
                 a["sha256"][:12], f"{a['batch']['min']}..{a['batch']['max']}",
                 f"refused: {a['problem']}" if a.get("problem") else _runs(a["runs_here"])]
                for a in info["artifacts"]])
        for s in info.get("skipped", []):
            console.print(printable(f"skipped {s['format']}: {s['reason']}"), highlight=False, markup=False)
    if info.get("card"):
        _kv(console, "model card", _card_facts(info["card"]))
    if info.get("versions"):
        _kv(console, "versions", info["versions"])


def _runs(runs: dict[str, str | None]) -> str:
    ok = [n for n, r in runs.items() if r is None]
    if ok:
        return ", ".join(ok)
    if not runs:
        return "no runner for this format"
    return "none here: " + "; ".join(f"{n}: {r}" for n, r in runs.items())


def _card_facts(card: dict[str, Any]) -> dict[str, Any]:
    inp = card.get("input", {})
    classes = card.get("classes", [])
    shown = ", ".join(classes[:12]) + (f", ... ({len(classes)} in all)" if len(classes) > 12 else "")
    return {"arch": card.get("arch"), "num_classes": card.get("num_classes"), "classes": shown,
            "input": f"{inp.get('layout')} {inp.get('dtype')} {inp.get('shape')}",
            "preprocessing": f"resize {inp.get('resize')}, centre crop {inp.get('crop')}, "
                             f"mean {inp.get('mean')}, std {inp.get('std')}",
            "metrics": card.get("metrics") or "-", "source": card.get("source") or "-"}


def _kv(console, title: str, facts: dict[str, Any]) -> None:
    _table(console, title, ["", ""], [[str(k), str(v)] for k, v in facts.items()], header=False)


def _table(console, title: str, headers: list[str], rows: list[list[str]], header: bool = True) -> None:
    from rich.markup import escape
    from rich.table import Table

    # every cell may hold a card's or a manifest's text: markup and control characters escaped
    table = Table(title=escape(printable(title)), show_header=header, title_justify="left")
    for h in headers:
        table.add_column(h, overflow="fold")
    for r in rows:
        table.add_row(*(escape(printable(c)) for c in r))
    console.print(table)
