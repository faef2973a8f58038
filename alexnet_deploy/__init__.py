"""alexnet-deploy: train AlexNet (or your own classifier), export it everywhere, prove every
artifact, measure them all.

The public Python API (alexnet_deploy.api), as thin re-exports resolved on first use (so
`import alexnet_deploy.manifest` stays torch-free and the CLI starts fast):

    export(model_or_weights, out, formats=..., card=...)   -> Manifest
    validate(export_dir, data=...)                          -> ValidationReport
    benchmark(export_dir, batch_sizes=...)                  -> BenchmarkReport
    recommend(export_dir, latency_ms=..., scenario=...)     -> dict, also DIR/recommendation.json
    compare_outputs(export_dir, inputs_npy, outputs_npy)    -> ValidationReport
    preprocess(images, card, out_npy)                       -> Path of the .npy batch
    UserError, CheckFailed                                  what they raise

`validate` is also the name of a subpackage; importing it replaces this attribute by the package,
so the package itself is callable as the function (alexnet_deploy/validate/__init__.py).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "export": ("alexnet_deploy.api", "export"),
    "validate": ("alexnet_deploy.validate", None),  # the callable package
    "compare_outputs": ("alexnet_deploy.validate.outside", "compare_outputs"),  # not "compare": a module of that name
    "benchmark": ("alexnet_deploy.api", "benchmark"),
    "preprocess": ("alexnet_deploy.preprocessing", "run_preprocess"),  # not "preprocess": a module of that name would shadow it
    "recommend": ("alexnet_deploy.bench.recommend", "recommend_export"),
    "UserError": ("alexnet_deploy.errors", "UserError"),
    "CheckFailed": ("alexnet_deploy.errors", "CheckFailed"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'alexnet_deploy' has no attribute {name!r}")
    module, attr = _API[name]
    value = importlib.import_module(module)
    value = getattr(value, attr) if attr else value
    globals()[name] = value  # resolved once
    return value
