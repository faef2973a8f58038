"""Shared, session-scoped fixtures: small demo data, weights and exports that every test module reuses.

Everything is generated here; nothing is downloaded. Sizes are tiny so the suite fits in
minutes on two cores, but the network is the real AlexNet (61 M parameters).

Two kinds of model: `random_weights` / `random_export` (untrained: one export, about a minute) for the
mechanics (containment, integrity, formats, errors, I/O), and `trained_weights` / `exported_dir`
(the demo recipe, minutes to make) only where accuracy matters (int8 agreement, task accuracy,
the recipe's own results). Shared: a test that changes files must copy them first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import REPO, TEST_IMAGE_SIZE, Result, assert_user_error, cli, cli_subprocess  # noqa: F401

from alexnet_deploy.data import check_class_folders, make_demo, resolve_split
from alexnet_deploy.files import write_json
from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights
from alexnet_deploy.training import KEEP_FREED_MEMORY, set_malloc_thresholds

# REPO, TEST_IMAGE_SIZE, assert_user_error and run_cli stay importable from here for the modules
# that do so today; helpers.py is where they live (conftest holds fixtures).

# `make test` runs the modules on pytest-xdist workers (a module is never split between two). Each
# worker then gets an equal share of the cores for torch: two workers with two threads each would put
# four threads on two cores, and each worker's threads would wait at their barriers for a sibling the
# other worker holds off its core.
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))

# NNCF's telemetry, off as NNCF asks of CI runs, for the processes tests start (in pytest's own
# process NNCF turns it off itself). Offline it waits up to 3 s for each event it cannot send:
# measured 26.2 s against 29.3 s for one `export --formats openvino` command.
os.environ.setdefault("NNCF_CI", "1")


# Every test process keeps the memory it frees, as fit() does while it trains (its glibc settings; a
# user's own, when set, are kept). On the 2-core VMs the suite runs on, memory left free for
# a few seconds goes back to the host (virtio-balloon free page reporting), and touching it again
# costs about 5 s per GiB: a fresh 1 GiB took 5.7 s, the same 1 GiB reused at once 0.06 s, and
# again after 5-10 s idle 2.6-4 s. The tests build, load and drop 244 MB models all session; with
# their memory kept the suite's system time fell by a third (README, Development).
def _keep_freed_memory() -> None:
    """training.KEEP_FREED_MEMORY for the processes this one starts (glibc reads the environment when
    a process starts; the pytest-xdist workers start after this) and, through mallopt, for this one.
    A setting already in the environment was read when this process started."""
    ours = {name: value for name, value in KEEP_FREED_MEMORY.items() if name not in os.environ}
    os.environ.update({name: str(value) for name, value in ours.items()})
    set_malloc_thresholds(ours)


def pytest_configure(config):
    _keep_freed_memory()
    if XDIST_WORKER:
        threads = max(1, (os.cpu_count() or 1) // WORKERS)
        torch.set_num_threads(threads)
        # and the processes its tests start: a test that compares a run here with one in a child
        # (kill, then resume here) needs both on the same thread count, or their sums round apart
        os.environ["OMP_NUM_THREADS"] = str(threads)


def session_root(tmp_path_factory) -> Path:
    """The folder every process of this test session shares: its base temp folder, or under
    pytest-xdist the one holding each worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST_WORKER else base


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """The session's folder NAME, filled by make(folder) in whichever process asks first; the others
    wait for it (a file lock) and reuse it. What make writes must not depend on which process ran it."""
    root = session_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left by a make that failed part-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """10 classes, 12 train / 4 val / 4 test images per class, 72 px."""
    return made_once(tmp_path_factory, "data",
                     lambda d: make_demo(d / "demo", classes=10, per_class=12, size=72, seed=0)) / "demo"


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory, demo_data) -> Path:
    """Untrained AlexNet weights with a card for the demo classes at 64 px."""
    def make(folder: Path) -> None:
        torch.manual_seed(0)
        model = build_model("alexnet", 10)
        card = ModelCard(arch="alexnet", num_classes=10,
                         classes=check_class_folders(resolve_split(demo_data, "train")),
                         input=InputSpec.for_size(TEST_IMAGE_SIZE),
                         data={"root": str(demo_data), "val": str(demo_data / "val")})
        save_weights(model, card, folder / "random.safetensors")

    return made_once(tmp_path_factory, "weights", make) / "random.safetensors"


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
    def make(root: Path) -> None:
        calib = root / "calib"
        shutil.copytree(demo_data / "val", calib, copy_function=os.link)
        (calib / "square").rename(calib / "sqaure")
        result = cli("export", random_weights, "--out", root / "E", *RANDOM_EXPORT_ARGS, "--calib-data", calib)
        write_json(root / "result.json", asdict(result))

    root = made_once(tmp_path_factory, "random-export", make)
    return ExportRun(Result(**json.loads((root / "result.json").read_text())), root / "E", root / "calib")


@pytest.fixture(scope="session")
def random_export(random_export_run) -> Path:
    """The untrained export for mechanics: torchscript, onnx fp32 / fp16 / int8, the weights copy
    and manifest.json, 64 px, 10 classes, max batch 4. Shared by the session: tests that change
    anything work on a copy (trial_support.mkex: hard links and a fresh manifest)."""
    run = random_export_run
    assert run.result.code == 0 and "Traceback" not in run.result.err, (run.result.code, run.result.err[-2000:])
    return run.out


# The demo recipe's training is the suite's longest step (about 3 CPU-minutes) while tests that do
# not need it can run. So when enough of the session does not need the trained model, its data,
# training and export run in a child process started with the session (tests/background_training.py)
# and the modules that need the model run last. Otherwise (a few tests picked) it trains here.
# Under pytest-xdist one worker starts the child and every worker waits on its markers.
TRAINED = {"recipe_data", "learned_run", "trained_weights", "exported_dir"}
OVERLAP_MIN_TESTS = 100  # fewer tests than this before the first that needs it: train in this process


def _needs_training(item) -> bool:
    return bool(TRAINED & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    """Whole modules that use the trained model move to the end, in their order: splitting a module
    would set up its module-scoped fixtures twice."""
    late = {getattr(i, "module", None) for i in items if _needs_training(i)} - {None}
    items[:] = [i for i in items if getattr(i, "module", None) not in late] + \
               [i for i in items if getattr(i, "module", None) in late]


@dataclass
class Training:
    """Where the recipe's data, run and export go, and how they are made: `background` (a child
    process, `proc` when this process started it) or, when not, in this process, each when first
    asked for."""

    data: Path
    run: Path
    result: Path
    export: Path
    log: Path
    background: bool = False
    proc: subprocess.Popen | None = None

    def wait_for(self, path: Path, what: str, timeout_s: float = 1800) -> None:
        deadline = time.monotonic() + timeout_s
        failed = Path(f"{self.result}.failed")  # the child's own last word when it fails
        while not path.exists():
            code = self.proc.poll() if self.proc is not None else None
            if (code is not None or failed.exists()) and not path.exists():
                pytest.fail(f"the background demo training stopped before {what}; its log:\n"
                            + self.log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                pytest.fail(f"the background demo training did not finish {what} in {timeout_s:.0f} s")
            time.sleep(0.2)

    def start(self) -> None:
        # idle priority alone, where the tests run on one process: it takes only what the tests leave
        # idle; under xdist it is one more single-threaded worker, at the workers' priority (at idle
        # priority two busy workers would leave it nothing, and the last modules would wait for it)
        priority = "normal" if WORKERS > 1 else "idle"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("background_training.py")), str(self.data),
                 str(self.run), str(self.result), str(self.export), priority],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if WORKERS > 1:  # other workers may still be waiting for the export
            try:
                self.proc.wait(timeout=1800)
            except subprocess.TimeoutExpired:
                pass
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _recipe_training(request, tmp_path_factory):
    items = request.session.items  # under xdist, too, every worker collects the whole session
    first = next((n for n, i in enumerate(items) if _needs_training(i)), None)
    shared = session_root(tmp_path_factory)
    root = shared / "recipe"
    training = Training(data=root / "demo", run=root / "run", result=root / "result.json",
                        export=root / "exported", log=root / "train.log",
                        background=first is not None and (first >= OVERLAP_MIN_TESTS or WORKERS > 1))
    with FileLock(shared / "recipe.lock"):
        if not root.exists():
            root.mkdir()
            if training.background:
                training.start()
    yield training
    training.stop()


@pytest.fixture(scope="session")
def recipe_data(_recipe_training) -> Path:
    """The demo data exactly as `make demo` generates it (training.DEMO_RECIPE["data"])."""
    from background_training import make_data

    t = _recipe_training
    if not t.background:
        return make_data(t.data)
    t.wait_for(Path(f"{t.result}.data"), "the demo data")
    return t.data


@pytest.fixture(scope="session")
def learned_run(_recipe_training, recipe_data):
    """`make demo`'s training step: DEMO_RECIPE["train"] on `recipe_data` (about 2 minutes on two
    cores, in the background when it can be). Its weights are the session's trained model: they
    learned the classes, so int8 and accuracy checks downstream are meaningful."""
    from background_training import train

    from alexnet_deploy.training import TrainResult

    t = _recipe_training
    if not t.background:
        return train(recipe_data, t.run)
    t.wait_for(t.result, "the training")
    return TrainResult(**json.loads(t.result.read_text()))


@pytest.fixture(scope="session")
def exported_dir(_recipe_training, trained_weights) -> Path:
    """`export --formats all` of the demo recipe's trained model (every format this machine can
    export, the rest skipped with the reason) at max batch 8 with 32 calibration images
    (background_training.EXPORT): for checks where accuracy matters (int8 and fp16 agreement,
    accuracy drops, recommend) and those that need every format. Shared by the whole session: tests
    that change files must copy it first (shutil.copytree). Mechanics that need only torchscript /
    onnx use `random_export`."""
    from background_training import export

    t = _recipe_training
    if not t.background:
        export(trained_weights, t.export)
    else:
        t.wait_for(Path(f"{t.result}.export"), "the export")
    return t.export


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

    def make(root: Path) -> None:
        torch.manual_seed(0)
        pth = root / "resnet18_finetuned.pth"
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), pth)
        r = cli("export", pth, "--out", root / "E", "--formats", "torchscript,onnx,triton", "--image-size", 64,
                "--classes", demo_data / "train", "--max-batch", 4, "--calib-images", 8,
                "--calib-data", demo_data / "val")
        assert r.code == 0, r.err[-2000:]

    return made_once(tmp_path_factory, "resnet18", make) / "E"
