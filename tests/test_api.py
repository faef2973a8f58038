"""The public names of `import alexnet_deploy as ad` stay what the docstring promises, whatever else
was imported first: a submodule named like an API function would replace it on import."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib, inspect, pkgutil, types
import alexnet_deploy as ad
for info in pkgutil.walk_packages(ad.__path__, "alexnet_deploy."):
    if ".python_models." in info.name or info.name.endswith("__main__"):  # Triton's stub's; the CLI
        continue
    importlib.import_module(info.name)
for name in ad.__all__:
    value = getattr(ad, name)
    if name == "__version__":
        continue
    assert callable(value), f"ad.{name} is {value!r}, not callable"
    if isinstance(value, types.ModuleType):
        assert name == "validate", f"ad.{name} became the module {value.__name__}"
print("ok")
"""


def test_every_api_name_is_its_function_after_every_submodule_is_imported():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
