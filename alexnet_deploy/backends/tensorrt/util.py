"""What TensorRT's export and runner share: availability, the GPU an engine is built for, and the
sidecar that records what an engine depends on (engines move across neither TensorRT versions nor
GPU architectures, so the runner checks the sidecar before it deserializes anything)."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alexnet_deploy.card import printable
from alexnet_deploy.errors import UserError
from alexnet_deploy.files import write_json
from alexnet_deploy.machine import cuda_unavailable_reason
from alexnet_deploy.manifest import contained, lexical_problem


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built or run here, or None. Imports nothing heavy."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    return cuda_unavailable_reason()


def gpu_info() -> dict[str, str]:
    """The GPU the engine is built for: engines do not move across compute capabilities."""
    import torch

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return {"name": torch.cuda.get_device_name(dev), "compute_capability": f"{major}.{minor}",
            "cuda": str(torch.version.cuda)}


@dataclass
class Sidecar:
    """`ENGINE.json` beside every engine. The build settings are written flat beside the other
    keys, so the file reads as one record of how the engine was made."""

    engine: str
    tensorrt_version: str | None = None
    gpu: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    io: dict[str, dict] = field(default_factory=dict)
    build_s: float | None = None

    FIXED = ("engine", "tensorrt_version", "gpu", "io", "build_s")

    def write(self, path: Path) -> None:
        data = asdict(self)
        settings = data.pop("settings")
        write_json(path, {**{k: data[k] for k in self.FIXED[:3]}, **settings,
                          **{k: data[k] for k in self.FIXED[3:]}})

    @classmethod
    def read(cls, path: Path, engine: str) -> Sidecar:
        """The sidecar at `path`; an engine without one (built elsewhere) gets an empty record, so
        only what is known is checked."""
        if not path.exists():
            return cls(engine=engine)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path.name}, the sidecar of {engine}: {e}; re-export it") from e
        if not isinstance(data, dict):
            raise UserError(f"{path.name}, the sidecar of {engine}, is not a JSON object; re-export it")
        gpu = data.get("gpu") if isinstance(data.get("gpu"), dict) else {}
        settings = {k: v for k, v in data.items() if k not in cls.FIXED}
        return cls(engine=str(data.get("engine", engine)), tensorrt_version=data.get("tensorrt_version"),
                   gpu=gpu, settings=settings, io=data.get("io") or {}, build_s=data.get("build_s"))

    def check_built_here(self, engine: str, trt_version: str, gpu: dict[str, str]) -> None:
        """Engines are tied to one TensorRT version and one GPU architecture: say so before loading."""
        if self.tensorrt_version and self.tensorrt_version != trt_version:
            raise UserError(f"{engine} was built with TensorRT {self.tensorrt_version} but TensorRT "
                            f"{trt_version} is installed: re-export it on this machine (--formats tensorrt)")
        built_cc = self.gpu.get("compute_capability")
        if built_cc and built_cc != gpu["compute_capability"]:
            raise UserError(f"{engine} was built for {self.gpu.get('name', 'another GPU')} (compute "
                            f"capability {built_cc}); this GPU, {gpu['name']}, has "
                            f"{gpu['compute_capability']}: re-export it on this machine (--formats tensorrt)")


def sidecar_path(root: Path, artifact_path: str, extra: dict[str, Any]) -> Path:
    """Where an engine's sidecar is (extra["sidecar"], else ENGINE.json beside it), contained in
    the export folder like every path a manifest names. A missing one is returned as it would be:
    an engine built elsewhere has none, and `Sidecar.read` checks only what is known."""
    rel = extra.get("sidecar", artifact_path + ".json")
    problem = lexical_problem(rel)
    if problem:
        raise UserError(f"the sidecar of {printable(artifact_path)}, {printable(repr(rel))}, {problem}")
    if not os.path.lexists(root / rel):
        return root / rel
    return contained(root, rel)
