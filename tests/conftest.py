"""Shared, session-scoped fixtures: small demo data and weights that every test module reuses.

Everything is generated here; nothing is downloaded. Sizes are tiny so the suite fits in
minutes on two cores, but the network is the real AlexNet (61 M parameters).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet_deploy.data import check_class_folders, make_demo, resolve_split
from alexnet_deploy.model import InputSpec, ModelCard, build_model, save_weights

REPO = Path(__file__).resolve().parents[1]
TEST_IMAGE_SIZE = 64  # AlexNet's smallest comfortable input; the classifier is unchanged


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """10 classes, 12 train / 4 val / 4 test images per class, 72 px."""
    root = tmp_path_factory.mktemp("data") / "demo"
    return make_demo(root, classes=10, per_class=12, size=72, seed=0)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory, demo_data) -> Path:
    """Untrained AlexNet weights with a card for the demo classes at 64 px."""
    torch.manual_seed(0)
    model = build_model("alexnet", 10)
    card = ModelCard(arch="alexnet", num_classes=10,
                     classes=check_class_folders(resolve_split(demo_data, "train")),
                     input=InputSpec.for_size(TEST_IMAGE_SIZE),
                     data={"root": str(demo_data), "val": str(demo_data / "val")})
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(model, card, path)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    exe = shutil.which("alexnet-deploy", path=str(Path(sys.executable).parent)) or "alexnet-deploy"
    return subprocess.run([exe, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    """One clear line on stderr, the expected exit code, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n.lower() in proc.stderr.lower(), (n, proc.stderr)
