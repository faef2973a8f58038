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


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory, trained_weights) -> Path:
    """`export --formats all` of the demo recipe's trained model (every format this machine can
    export, the rest skipped with the reason) at max batch 8 with 32 calibration images. Shared by
    the whole session: tests that change files must copy it first (shutil.copytree)."""
    from alexnet_deploy.exporters import export_all

    out = tmp_path_factory.mktemp("export") / "exported"
    export_all(trained_weights, out, formats=["all"], max_batch=8, calib_images=32, show=False)
    return out


@pytest.fixture(scope="session")
def recipe_data(tmp_path_factory) -> Path:
    """The demo data exactly as `make demo` generates it (training.DEMO_RECIPE["data"])."""
    from alexnet_deploy.training import DEMO_RECIPE

    return make_demo(tmp_path_factory.mktemp("recipe") / "demo", **DEMO_RECIPE["data"])


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, recipe_data):
    """`make demo`'s training step: DEMO_RECIPE["train"] on `recipe_data` (about 2.5 minutes on two
    cores). Its weights are the session's trained model: they learned the classes, so int8 and
    accuracy checks downstream are meaningful."""
    from alexnet_deploy.training import DEMO_RECIPE, TrainConfig, fit

    run = tmp_path_factory.mktemp("train") / "run"
    return fit(TrainConfig(data=str(recipe_data), out=str(run), **DEMO_RECIPE["train"], quiet=True))


@pytest.fixture(scope="session")
def trained_weights(learned_run) -> Path:
    """The learned run's weights; its run folder beside them holds metrics.jsonl, curves.png and
    checkpoint.pt."""
    return Path(learned_run.weights)
