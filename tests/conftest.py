"""Shared, session-scoped fixtures: small demo data, weights and exports that every test module reuses.

Everything is generated here; nothing is downloaded. Sizes are tiny so the suite fits in
minutes on two cores, but the network is the real AlexNet (61 M parameters).

Two kinds of model: `random_weights` / `random_export` (untrained: one export, about a minute) for the
mechanics (containment, integrity, formats, errors, I/O), and `trained_weights` / `exported_dir`
(the demo recipe, minutes to make) only where accuracy matters (int8 agreement, task accuracy,
the recipe's own results). Shared: a test that changes files must copy them first.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import REPO, TEST_IMAGE_SIZE, Result, assert_user_error, cli, cli_subprocess  # noqa: F401

from alexnet_deploy.data import check_class_folders, make_demo, resolve_split
from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights

# REPO, TEST_IMAGE_SIZE, assert_user_error and run_cli stay importable from here for the modules
# that do so today; helpers.py is where they live (conftest holds fixtures).


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


def run_cli(*args, cwd: Path | None = None, env: dict | None = None) -> Result:
    """`alexnet-deploy ARGS` through the real entry point, in this process (helpers.cli): the exit
    code and the stdout / stderr a user sees, as .returncode / .stdout / .stderr. Tests of what
    only a child process shows use helpers.cli_subprocess."""
    return cli(*args, cwd=cwd, env=env)


RANDOM_EXPORT_ARGS = ("--formats", "torchscript,onnx", "--max-batch", "4", "--calib-images", "6")


@dataclass
class ExportRun:
    """One `alexnet-deploy export` as a user ran it: what it printed and returned, where it wrote,
    and the calibration folder it was given."""

    result: Result
    out: Path
    calib_data: Path


@pytest.fixture(scope="session")
def random_export_run(tmp_path_factory, random_weights, demo_data) -> ExportRun:
    """`alexnet-deploy export random_weights --out E RANDOM_EXPORT_ARGS --calib-data C`, where C is
    the demo val images under class names the model does not have ("square" spelled "sqaure").
    Two trial cases read this run instead of exporting again: #104 (6 calibration images, no
    multiple of the batch) and #112 (calibration data needs no matching class names)."""
    import os

    root = tmp_path_factory.mktemp("random-export")
    calib = root / "calib"
    shutil.copytree(demo_data / "val", calib, copy_function=os.link)
    (calib / "square").rename(calib / "sqaure")
    out = root / "E"
    result = cli("export", random_weights, "--out", out, *RANDOM_EXPORT_ARGS, "--calib-data", calib)
    return ExportRun(result, out, calib)


@pytest.fixture(scope="session")
def random_export(random_export_run) -> Path:
    """The untrained export for mechanics: torchscript, onnx fp32 / fp16 / int8, the weights copy
    and manifest.json, 64 px, 10 classes, max batch 4. Shared by the session: tests that change
    anything work on a copy (trial_support.mkex: hard links and a fresh manifest)."""
    run = random_export_run
    assert run.result.code == 0 and "Traceback" not in run.result.err, (run.result.code, run.result.err[-2000:])
    return run.out


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory, trained_weights) -> Path:
    """`export --formats all` of the demo recipe's trained model (every format this machine can
    export, the rest skipped with the reason) at max batch 8 with 32 calibration images: for
    checks where accuracy matters (int8 and fp16 agreement, accuracy drops, recommend) and those
    that need every format. Shared by the whole session: tests that change files must copy it
    first (shutil.copytree). Mechanics that need only torchscript / onnx use `random_export`."""
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


@pytest.fixture(scope="session")
def resnet18_export(tmp_path_factory, demo_data) -> Path:
    """Not an AlexNet: an untrained torchvision ResNet-18 state dict (10 classes) exported as a user
    would (`export r.pth --classes TRAIN --image-size 64`) to ONNX, TorchScript and the Triton
    repository, for the consumers that must read the model instead of assuming AlexNet's shapes
    (the C++ programs, the Triton configs). Shared: copy before changing anything."""
    import torchvision

    root = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    pth = root / "resnet18_finetuned.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), pth)
    out = root / "E"
    r = cli("export", pth, "--out", out, "--formats", "torchscript,onnx,triton", "--image-size", 64,
            "--classes", demo_data / "train", "--max-batch", 4, "--calib-images", 8,
            "--calib-data", demo_data / "val")
    assert r.code == 0, r.err[-2000:]
    return out
