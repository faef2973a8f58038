"""The package's metadata as installers read it: the licence is an SPDX expression (a TOML-table
`license` makes setuptools print deprecation warnings at every install), pins that the README and
the machines rely on."""

from __future__ import annotations

import importlib.metadata

import pytest
from conftest import REPO


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_license_is_an_spdx_expression_in_the_installed_metadata():
    licenses = pytest.importorskip("packaging.licenses", reason="packaging >= 24.2 parses SPDX expressions")
    declared = _project()["license"]
    assert isinstance(declared, str), "a TOML table `license` is deprecated: setuptools warns on install"
    assert licenses.canonicalize_license_expression(declared) == declared
    meta = importlib.metadata.metadata("alexnet-deploy")
    assert meta["License-Expression"] == declared  # core metadata 2.4, what installers show
    assert not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")], \
        "licence classifiers beside an SPDX expression are refused by setuptools >= 77"


def test_torch_and_torchvision_stay_the_pair_on_this_machines_disk():
    deps = " ".join(_project()["dependencies"])
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
