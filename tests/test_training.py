"""The trainer: accuracy on demo data, bitwise resume after kill -9, torchrun on CPU, outputs, errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO, TEST_IMAGE_SIZE, assert_user_error, run_cli
from safetensors.torch import load_file

from alexnet_deploy.models import build_model, load_weights, read_card
from alexnet_deploy.training import (
    CHECKPOINT,
    DEMO_RECIPE,
    TrainConfig,
    make_optimizer,
    make_scheduler,
    rng_states,
    save_checkpoint,
    set_rng_states,
)

# A few epochs on the 120-image demo_data fixture; small enough for every process-level test.
TINY = ["--image-size", str(TEST_IMAGE_SIZE), "--batch-size", "40", "--optimizer", "adamw",
        "--device", "cpu", "--seed", "1"]


def _tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_recipe_reaches_90_percent_val_top1_at_64_px(learned_run):
    """make demo's training step as it runs there (DEMO_RECIPE, 64 px, two CPU cores)."""
    assert DEMO_RECIPE["train"]["image_size"] == TEST_IMAGE_SIZE
    assert 0.90 <= learned_run.val_top1 <= 1, [round(h["val_top1"], 3) for h in learned_run.history]  # fractions
    assert learned_run.test_top1 is not None and learned_run.test_top1 >= 0.88


def test_written_weights_load_strictly_into_torchvision_alexnet(trained_weights, recipe_data):
    state = _tensors(trained_weights)
    theirs = torchvision.models.alexnet(num_classes=10).eval()
    theirs.load_state_dict(state, strict=True)
    ours, card = load_weights(trained_weights)
    x = torch.randn(2, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    # the card: what export/validate/predict rely on
    assert card.classes == sorted(p.name for p in (recipe_data / "train").iterdir())
    assert card.input.crop == TEST_IMAGE_SIZE and card.input.shape == [3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE]
    assert card.data == {"root": str(recipe_data.resolve()), "val": str((recipe_data / "val").resolve())}
    assert card.training["image_size"] == TEST_IMAGE_SIZE and card.training["arch"] == "alexnet"
    assert {"val_top1", "val_top5", "test_top1", "test_top5"} <= card.metrics.keys()


def test_run_folder_has_metrics_curves_and_a_safe_checkpoint(trained_weights):
    run = Path(trained_weights).parent
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    card = read_card(trained_weights)
    assert [row["epoch"] for row in lines] == list(range(1, card.training["epochs"] + 1))
    assert {"train_loss", "val_top1", "val_top5", "images_per_s"} <= lines[-1].keys()
    assert lines[-1]["val_top1"] == card.metrics["val_top1"]
    assert all(0 <= line[k] <= 1 for line in lines for k in ("val_top1", "val_top5")), "accuracies are fractions"
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == card.training["epochs"] - 1 and ckpt["config"]["arch"] == "alexnet"
    assert {"torch", "numpy", "python", "cuda"} <= ckpt["rng"].keys()
    assert not list(run.glob(".*tmp*")), "no temporary files left behind"


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


# ---------------------------------------------------------------------------------------------
# Resume: kill -9 mid-run, then --resume, ends bitwise where an uninterrupted run ends
# ---------------------------------------------------------------------------------------------
# The real CLI, with the trainer's train_one_epoch wrapped so that the process SIGKILLs itself at a
# fixed point: in epoch 2, after its first optimizer step (checkpoint 1 on disk, epoch 2's progress
# not). No timing is involved, so the kill lands in the same place on any machine.
KILL_IN_EPOCH_2 = """
import os, signal, sys
import alexnet_deploy.training as training

real, epochs = training.train_one_epoch, []

class DieAfterFirstStep:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 1:  # the first batch has been trained on when the second is asked for
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

def train_one_epoch(model, criterion, optimizer, scheduler, scaler, loader, *rest):
    epochs.append(1)
    if len(epochs) == 2:
        loader = DieAfterFirstStep(loader)
    return real(model, criterion, optimizer, scheduler, scaler, loader, *rest)

training.train_one_epoch = train_one_epoch
sys.argv = ["alexnet-deploy", *sys.argv[1:]]
from alexnet_deploy.cli import main
main()
"""


@pytest.mark.slow
def test_kill_9_then_resume_gives_bitwise_identical_weights(demo_data, tmp_path):
    import alexnet_deploy.training as training

    assert callable(training.train_one_epoch)  # what KILL_IN_EPOCH_2 wraps
    # ResNet-18: its batch-norm running statistics must resume too, and its checkpoint is a sixth of
    # AlexNet's (three full trainings here; the loop is the same for every architecture)
    args = ["train", "--data", demo_data, *TINY, "--epochs", "2", "--workers", "1", "--deterministic",
            "--arch", "resnet18"]
    whole = run_cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    killed = tmp_path / "killed"
    # its own process group: whatever the killed trainer leaves behind can be found and ended
    proc = subprocess.Popen([sys.executable, "-c", KILL_IN_EPOCH_2, *map(str, args), "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        assert proc.wait(timeout=600) == -signal.SIGKILL, proc.stderr.read()[-3000:]
        # stderr closes once no process of the run holds it: the DataLoader worker and its fork
        # server must end with the trainer, not live on as orphans.
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the killed trainer's DataLoader worker / fork server outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert torch.load(killed / CHECKPOINT, weights_only=True)["epoch"] == 0, "checkpoint 1 is the last"
    assert not (killed / "weights.safetensors").exists()

    resumed = run_cli(*args, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "after epoch 1 of 2" in resumed.stdout
    _assert_bitwise_equal(_tensors(whole_w := tmp_path / "whole" / "weights.safetensors"),
                          _tensors(killed / "weights.safetensors"))
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "epoch_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (whole_w.parent, killed)]
    assert metrics[0] == metrics[1]


# ---------------------------------------------------------------------------------------------
# torchrun on CPU (gloo): two processes, identical replicas, one writer
# ---------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, logging, os, sys
from alexnet_deploy.training import TrainConfig, fit

# a script's own stdlib logging set-up shows the library's progress records
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
rank = int(os.environ["RANK"])
data, base, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
# Each rank gets its own run folder so the test can prove that only rank 0 writes into it.
r = fit(TrainConfig(data=data, out=f"{base}/run{rank}", **extra))
with open(f"{base}/rank{rank}.json", "w") as f:
    json.dump({"digest": r.params_sha256, "val_top1": r.val_top1, "world": os.environ["WORLD_SIZE"]}, f)
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_identical_replicas_and_only_rank0_writes(demo_data, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    extra = {"image_size": TEST_IMAGE_SIZE, "epochs": 1, "batch_size": 20, "workers": 0, "device": "cpu",
             "optimizer": "adamw"}
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(demo_data),
                           str(tmp_path), json.dumps(extra)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == "2"
    assert ranks[0]["digest"] == ranks[1]["digest"], "replicas diverged"
    assert ranks[0]["val_top1"] == ranks[1]["val_top1"], "metrics must be all-reduced"
    assert sorted(p.name for p in (tmp_path / "run0").iterdir()) == \
        ["checkpoint.pt", "curves.png", "metrics.jsonl", "weights.safetensors"]
    assert not (tmp_path / "run1").exists(), "rank 1 wrote files"
    assert proc.stdout.count("epoch 1:") == 1, proc.stdout  # only rank 0 logs


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "alexnet_deploy", "train", "--help"], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0 and "--resume" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2, no traceback
# ---------------------------------------------------------------------------------------------
def _fake_run(run: Path, arch: str, classes: list[str]) -> None:
    """A checkpoint written by the trainer's own writer for another model, without training it."""
    cfg = TrainConfig(data="unused", out=str(run), arch=arch, optimizer="adamw")
    model = build_model(arch, len(classes))
    optimizer = make_optimizer(cfg, model)
    save_checkpoint(run / CHECKPOINT, model, optimizer, make_scheduler(optimizer, cfg, 1),
                    torch.amp.GradScaler("cpu", enabled=False), 0, cfg, classes, [])


def _other_arch(run, classes):
    _fake_run(run, "alexnet-2012", classes)
    return "checkpoint of 'alexnet-2012'"


def _other_classes(run, classes):
    _fake_run(run, "alexnet", classes[:5])
    return "trained on 5 classes"


def _corrupt(run, classes):
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    return "not a readable checkpoint"


def _missing(run, classes):
    return "no checkpoint"


@pytest.mark.parametrize("make", [_other_arch, _other_classes, _corrupt, _missing])
def test_resume_refuses_unusable_checkpoints(demo_data, tmp_path, make):
    classes = sorted(p.name for p in (demo_data / "train").iterdir())
    needle = make(tmp_path / "run", classes)
    proc = run_cli("train", "--data", demo_data, "--out", tmp_path / "run", *TINY, "--epochs", "1", "--resume")
    assert_user_error(proc, needle, str(tmp_path / "run" / CHECKPOINT))


def test_existing_checkpoint_is_not_overwritten_without_resume(demo_data, tmp_path):
    _corrupt(tmp_path / "run", [])
    proc = run_cli("train", "--data", demo_data, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert_user_error(proc, "pass --resume")
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == b"PK\x03\x04 truncated"


def test_missing_weights_file_is_a_clear_error(demo_data, tmp_path):
    proc = run_cli("train", "--data", demo_data, "--out", tmp_path / "run", *TINY, "--weights",
                   tmp_path / "nope.safetensors")
    assert_user_error(proc, "weights file not found")


def test_cuda_requested_without_a_gpu_is_a_clear_error(demo_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for machines without it")
    proc = run_cli("train", "--data", demo_data, "--out", tmp_path / "run", "--device", "cuda")
    assert_user_error(proc, "no CUDA device")


def test_demo_args_file_is_the_demo_recipe(monkeypatch):
    """train/README.md tells users to run `train $(cat train/demo.args)`: it must be DEMO_RECIPE."""
    from click.testing import CliRunner

    from alexnet_deploy.cli import cli

    parsed = {}
    # Only the parsed options are under test here, not the training they would start.
    monkeypatch.setattr("alexnet_deploy.training.fit", lambda cfg: parsed.update(vars(cfg)))
    tokens = (REPO / "train" / "demo.args").read_text().split()
    result = CliRunner().invoke(cli, ["train", "--data", "d", "--out", "o", *tokens])
    assert result.exit_code == 0, result.output
    assert {k: parsed[k] for k in DEMO_RECIPE["train"]} == DEMO_RECIPE["train"]
    # and `data demo` without options writes the recipe's data
    defaults = {p.name: p.default for p in cli.commands["data"].commands["demo"].params}
    assert {k: defaults[k] for k in DEMO_RECIPE["data"]} == DEMO_RECIPE["data"]


# A block larger than all the free space glibc holds in its heap cannot be served from a free list,
# so where it lands shows the thresholds: with glibc's defaults it is mmapped (or trimmed from the
# top of the heap) and its pages go back to the OS on free; with freed_memory_kept's it stays.
FREED_MEMORY_PROBE = """
import ctypes, sys
import numpy as np, psutil
from alexnet_deploy.training import TrainConfig, fit, freed_memory_kept

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("skip"); sys.exit()
libc.mallinfo2.restype = MallInfo2

def kept_fraction(size=None):
    size = size or libc.mallinfo2().fordblks + (256 << 20)
    rss = psutil.Process().memory_info().rss
    block = np.ones(size // 4, dtype=np.float32)  # touched
    del block
    return (psutil.Process().memory_info().rss - rss) / size

def mmapped_fraction(size=512 << 20):
    mapped = libc.mallinfo2().hblkhd
    block = np.ones(size // 4, dtype=np.float32)
    mapped = (libc.mallinfo2().hblkhd - mapped) / size
    del block
    return mapped

before = kept_fraction()
fit(TrainConfig(data=sys.argv[1], out=sys.argv[2], image_size=64, epochs=1, batch_size=40, optimizer="adamw",
                device="cpu", workers=0, quiet=True))
after, after_mmapped = kept_fraction(), mmapped_fraction()
with freed_memory_kept():  # a block under its 1 GiB mmap threshold: kept, wherever it lands
    inside = kept_fraction(256 << 20)
print(before, after, inside, after_mmapped)
"""


def _freed_memory_probe(data: Path, run: Path, **malloc_env: str) -> tuple[float, float, float, float]:
    """FREED_MEMORY_PROBE in a fresh process, with glibc's defaults or the thresholds in malloc_env as
    a user would set them (what other tests' libraries do to the allocator is not fit()'s doing)."""
    from alexnet_deploy.training import MALLOPT_PARAMS

    env = {k: v for k, v in os.environ.items() if k not in MALLOPT_PARAMS and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE, str(data), str(run)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**env, **malloc_env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.strip() == "skip":
        pytest.skip("this C library has no mallinfo2 (glibc < 2.33): the heap's free space is unknown")
    before, after, inside, after_mmapped = map(float, proc.stdout.split())
    return before, after, inside, after_mmapped


@pytest.mark.slow
def test_freed_memory_goes_back_to_the_os_after_cpu_training(demo_data, tmp_path):
    """fit() keeps freed memory only while it trains (fast steps); afterwards glibc's defaults are
    back, so e.g. a benchmark's per-runner peak memory in the same process stays true."""
    before, after, inside, after_mmapped = _freed_memory_probe(demo_data, tmp_path / "run")
    assert before < 0.2, "a freed block goes back before any training"
    assert inside > 0.8, "the probe tells: inside freed_memory_kept the freed block stays"
    assert after < 0.2, f"{after:.0%} of a freed block stayed in the process after fit()"
    assert after_mmapped > 0.8, "after fit() glibc maps a 512 MB block of its own again"


@pytest.mark.slow
def test_a_users_own_malloc_thresholds_outlive_cpu_training(demo_data, tmp_path):
    """A process started with glibc's thresholds set keeps them after fit(): going back to glibc's
    defaults would undo the user's choice (here: keep freed memory, as PyTorch's CPU tuning guide's
    allocators do)."""
    from alexnet_deploy.training import KEEP_FREED_MEMORY

    before, _, _, after_mmapped = _freed_memory_probe(
        demo_data, tmp_path / "run", **{name: str(value) for name, value in KEEP_FREED_MEMORY.items()})
    assert before > 0.8, "the probe tells: with these settings a freed block stays"
    assert after_mmapped < 0.2, "after fit() a 512 MB block was mapped of its own: fit() reset the user's settings"
