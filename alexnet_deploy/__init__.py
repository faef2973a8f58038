"""alexnet-deploy: train AlexNet, export it everywhere, prove every artifact, measure them all.

The public Python API, as thin re-exports resolved on first use (so `import alexnet_deploy.manifest`
stays torch-free and the CLI starts fast):

    export(weights, out, formats=...)      alexnet_deploy.exporters.export_all
    benchmark(export_dir, ...)             alexnet_deploy.bench.benchmark
    recommend(export_dir, ...)             alexnet_deploy.bench.recommend.recommend_export

validate is its own package: `from alexnet_deploy.validate import validate` (a re-export named
`validate` here would be shadowed by the package itself once imported).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "export": ("alexnet_deploy.exporters", "export_all"),
    "benchmark": ("alexnet_deploy.bench", "benchmark"),
    "recommend": ("alexnet_deploy.bench.recommend", "recommend_export"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'alexnet_deploy' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # resolved once
    return value
