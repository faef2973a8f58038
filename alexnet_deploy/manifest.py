"""manifest.json (schema 1): what an export folder holds, with hashes, for every consumer."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alexnet_deploy.errors import UserError
from alexnet_deploy.model import ModelCard
from alexnet_deploy.utils import sha256_file, write_json

SCHEMA = 1
FORMATS = ("torchscript", "onnx", "torch-export", "aoti", "openvino", "tensorrt", "triton")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class Artifact:
    format: str
    precision: str
    device: str
    path: str  # relative to the export folder
    sha256: str = ""
    bytes: int = 0
    input_name: str = "images"
    output_name: str = "logits"
    batch: dict[str, int] = field(default_factory=lambda: {"min": 1, "max": 64})
    export_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (agreement, ...)

    @property
    def key(self) -> str:
        """A stable, human-readable id: format/precision/device."""
        return f"{self.format}/{self.precision}/{self.device}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Skipped:
    format: str
    reason: str


@dataclass
class Manifest:
    card: ModelCard
    weights: dict[str, str]
    artifacts: list[Artifact] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA
    root: Path | None = None  # the export folder; not serialised
    # `export --target cpu`: the fastest checked (runner, artifact) per precision on the export machine
    recommended: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "card": self.card.to_dict(),
            "weights": self.weights,
            "artifacts": [asdict(a) for a in self.artifacts],
            "skipped": [asdict(s) for s in self.skipped],
            "versions": self.versions,
            **({"recommended": self.recommended} if self.recommended else {}),
        }

    def write(self, root: str | os.PathLike) -> Path:
        path = Path(root) / "manifest.json"
        write_json(path, self.to_dict())
        return path

    def path_of(self, artifact: Artifact) -> Path:
        assert self.root is not None, "manifest was not read from a folder"
        return self.root / artifact.path

    def weights_artifact(self) -> Artifact:
        """The source weights (copied into the export folder) as an artifact torch-eager runs."""
        return Artifact(format="weights", precision="fp32", device="cpu",
                        path=self.weights.get("path", "weights.safetensors"),
                        sha256=self.weights.get("sha256", ""),
                        batch={"min": 1, "max": 1 << 16})

    def find(self, fmt: str, precision: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts
                if a.format == fmt and (precision is None or a.precision == precision)]

    @classmethod
    def read(cls, root: str | os.PathLike) -> Manifest:
        root = Path(root)
        path = root / "manifest.json" if root.is_dir() else root
        if not path.is_file():
            raise UserError(f"no manifest.json in {root}: run `alexnet-deploy export WEIGHTS --out {root}` first")
        try:
            d = json.loads(path.read_text())
            m = cls(card=ModelCard.from_dict(d["card"]), weights=d.get("weights", {}),
                    artifacts=[Artifact.from_dict(a) for a in d.get("artifacts", [])],
                    skipped=[Skipped(**s) for s in d.get("skipped", [])],
                    versions=d.get("versions", {}), schema=d.get("schema", SCHEMA),
                    recommended=d.get("recommended", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path} is not a valid manifest ({type(e).__name__}: {e}); re-run export") \
                from None
        if m.schema != SCHEMA:
            raise UserError(f"{path} has manifest schema {m.schema}; this version reads schema {SCHEMA}")
        m.root = path.parent
        return m


def verify_integrity(manifest: Manifest, artifact: Artifact) -> str | None:
    """None when the file on disk is the one the manifest lists, else the failure message."""
    path = manifest.path_of(artifact)
    if not path.exists():
        return f"integrity: {artifact.path} is listed in the manifest but missing"
    checks = [(artifact.path, artifact.sha256)] + list(artifact.extra.get("files", {}).items())
    for rel, expected in checks:
        # companion files (an OpenVINO .bin, a TensorRT sidecar) are listed in extra["files"]
        f = manifest.root / rel
        if not f.exists():
            return f"integrity: {rel} is listed in the manifest but missing"
        actual = sha256_file(f) if f.is_file() else _dir_hash(f)
        if actual != expected:
            return (f"integrity: {rel} has sha256 {actual[:12]}..., the manifest lists "
                    f"{expected[:12]}...: the file changed after export; re-export it")
    return None


def _dir_hash(path: Path) -> str:
    """Hash of a folder artifact (e.g. a Triton model dir): sorted relative paths and contents."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def hash_artifact(path: Path) -> tuple[str, int]:
    """sha256 and size of a file or folder artifact."""
    if path.is_dir():
        return _dir_hash(path), sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return sha256_file(path), path.stat().st_size
