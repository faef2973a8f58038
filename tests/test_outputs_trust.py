"""Outputs a user can trust: checked before any work starts, never deleting what we did not make,
one writer per export folder, leftovers of killed runs cleaned, option values in range.

Trial case numbers (#N) refer to /work/shared/reliability-trial.md. Commands run in-process
through the real entry point (alexnet_deploy.cli.main); read-only and full disks are real tmpfs
mounts (skipped, with the reason, where mounting is not allowed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line, run_main

from alexnet_deploy.models import InputSpec, ModelCard, build_model, save_weights


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2m", read_only: bool = False):
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); the disk-full "
                    "and read-only cases need one")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_ro(where: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")


@pytest.fixture(scope="module")
def data_weights(tmp_path_factory, demo_data) -> Path:
    """Random weights whose card names a private copy of the demo data (root and val)."""
    root = tmp_path_factory.mktemp("dw")
    data = root / "data"
    shutil.copytree(demo_data, data)
    torch.manual_seed(0)
    classes = sorted(p.name for p in (data / "train").iterdir())
    card = ModelCard(arch="alexnet", num_classes=len(classes), classes=classes,
                     input=InputSpec.for_size(64), data={"root": str(data), "val": str(data / "val")})
    save_weights(build_model("alexnet", len(classes)), card, root / "w.safetensors")
    return root / "w.safetensors"


def export_args(weights, out, *more):
    return ("export", weights, "--out", out, "--formats", "torchscript", "--max-batch", "2", *more)


# ---------------------------------------------------------------------------------------------
# Output paths checked before work starts (#2, #85, #109, #122, #123)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["export", "train", "data-demo"])
def test_out_that_is_a_file_is_refused_first(tmp_path, command, random_weights, demo_data):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    args = {"export": export_args(random_weights, afile),
            "train": ("train", "--data", demo_data, "--out", afile, "--epochs", "1", "--image-size", "64"),
            "data-demo": ("data", "demo", "--out", afile, "--classes", "2", "--per-class", "1")}[command]
    code, _, err = run_main(*args)
    assert code == 2
    assert_one_line(err, "is a file")
    assert afile.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]


def test_report_that_is_a_folder_is_refused_before_checks(tmp_path):  # 122
    export_dir, repdir = tmp_path / "E", tmp_path / "repdir"
    export_dir.mkdir()
    repdir.mkdir()
    code, _, err = run_main("validate", export_dir, "--report", repdir)
    assert code == 2
    assert_one_line(err, "is a folder")
    assert list(repdir.iterdir()) == []


def test_preprocess_out_below_a_file_is_refused(tmp_path, random_weights):  # 123
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    code, _, err = run_main("preprocess", tmp_path / "img.png", "--card", random_weights,
                            "--out", afile / "x.npy")
    assert code == 2
    assert_one_line(err, "is a file, not a folder")


def test_export_out_dot_is_refused(tmp_path, monkeypatch, random_weights):  # 109
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(*export_args(random_weights, "."))
    assert code == 2
    assert_one_line(err, "current folder")
    assert list(tmp_path.iterdir()) == [] and list(tmp_path.parent.glob(f".{tmp_path.name}.*")) == []


# ---------------------------------------------------------------------------------------------
# Read-only and full disks (#117, #118, #119, #121, #97)
# ---------------------------------------------------------------------------------------------
def test_read_only_outputs_fail_before_work(tmp_path, random_weights):
    ro = tmp_path / "ro"
    with tmpfs(ro):
        (ro / "E").mkdir()
        (ro / "E" / "manifest.json").write_text("{}")
        remount_ro(ro)
        code, _, err = run_main(*export_args(random_weights, ro / "x"))  # 118
        assert code == 2
        assert_one_line(err, "read-only file system")
        code, _, err = run_main("validate", ro / "E", "--images", "2")  # 119
        assert code == 2
        assert_one_line(err, "read-only file system", "pass --report elsewhere")
        code, _, err = run_main("preprocess", tmp_path / "i.png", "--card", random_weights,
                                "--out", ro / "x.npy")  # 121
        assert code == 2
        assert_one_line(err, "read-only file system")
        assert sorted(p.name for p in ro.iterdir()) == ["E"]


def test_disk_full_export_is_one_line_and_leaves_nothing(tmp_path, random_weights):  # 117
    small = tmp_path / "small"
    with tmpfs(small, size="2m"):
        code, _, err = run_main(*export_args(random_weights, small / "x"))
        assert code == 1
        assert_one_line(err, "no space left on the device writing")
        assert list(small.iterdir()) == []  # no staging folder, no lock file


def test_disk_full_torch_save_names_the_file(tmp_path):  # 97: the checkpoint writer's words
    from alexnet_deploy.errors import expected_failure
    from alexnet_deploy.files import atomic_path

    small = tmp_path / "small"
    with tmpfs(small, size="1m"):
        with pytest.raises(OSError) as e, atomic_path(small / "checkpoint.pt") as tmp:
            torch.save({"x": torch.zeros(1 << 20)}, tmp)
        assert expected_failure(e.value)[0].startswith(
            f"no space left on the device writing {small / 'checkpoint.pt'}")
        assert list(small.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Never delete what we did not make (#108, #141, --force)
# ---------------------------------------------------------------------------------------------
def test_force_never_replaces_the_cards_data(data_weights):  # 108
    data = data_weights.parent / "data"
    before = files_under(data)
    for out in (data, data / "val", data / "val" / "inside"):
        code, _, err = run_main(*export_args(data_weights, out, "--force"))
        assert code == 2
        assert_one_line(err, "which this export reads")
    assert files_under(data) == before


def test_force_replaces_only_our_own_export(tmp_path, random_weights):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user's")
    code, _, err = run_main(*export_args(random_weights, mine, "--force"))
    assert code == 2
    assert_one_line(err, "--force replaces only an export folder")
    assert files_under(mine) == ["notes.txt"]


def test_pipeline_never_deletes_the_users_data(tmp_path, demo_data):  # 141
    data = tmp_path / "Dp"
    shutil.copytree(demo_data, data)
    before = files_under(data)
    code, _, err = run_main("pipeline", "--data", data, "--out", data, "--quick")
    assert code == 2
    assert_one_line(err, "choose an --out outside the data")
    assert files_under(data) == before
    inside = tmp_path / "p" / "train"  # the data where the train step's folder would go
    shutil.copytree(demo_data, inside)
    code, _, err = run_main("pipeline", "--data", inside, "--out", tmp_path / "p", "--quick")
    assert code == 2
    assert_one_line(err, "step folder")
    assert files_under(inside) == before


def test_pipeline_removes_only_its_own_step_folders(tmp_path, demo_data):
    out = tmp_path / "pipe"
    (out / "train").mkdir(parents=True)
    (out / "train" / "thesis.tex").write_text("user's")
    code, _, err = run_main("pipeline", "--data", demo_data, "--out", out, "--quick")
    assert code == 2
    assert_one_line(err, "was not made by this pipeline")
    assert (out / "train" / "thesis.tex").read_text() == "user's"


# ---------------------------------------------------------------------------------------------
# One writer per --out (#113); leftovers of killed runs (#114, #115, #96)
# ---------------------------------------------------------------------------------------------
def test_a_concurrent_export_into_the_same_out_is_refused(tmp_path, random_weights):
    out = tmp_path / "race"
    lock = tmp_path / ".race.lock"
    with open(lock, "w") as f:  # another export holds the lock
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        f.write("4242")
        f.flush()
        code, _, err = run_main(*export_args(random_weights, out))
        assert code == 2
        assert_one_line(err, f"another export is writing {out} (pid 4242)")
    assert not out.exists()
    assert not list(tmp_path.glob(".race.partial-*"))


def test_stale_staging_of_dead_runs_is_removed_and_live_ones_kept(tmp_path, random_weights):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    dead, live = dead_pid(), os.getppid()
    for name in (f".x.partial-{dead}", f".x.old-{dead}", f".x.partial-{live}"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "big.bin").write_bytes(b"0" * 1000)
    code, stdout, err = run_main(*export_args(random_weights, out))
    assert code == 2  # refused (not empty, no --force) after the clean-up
    assert_one_line(err, "not empty")
    assert "removed 2 staging folder(s) of killed runs" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".x.partial-{live}", "x"]
    assert files_under(out) == ["keep.txt"]


def test_a_replace_cut_between_renames_puts_the_old_export_back(tmp_path, random_weights):
    old = tmp_path / f".x.old-{dead_pid()}"
    old.mkdir()
    (old / "manifest.json").write_text('{"schema": 1, "artifacts": [], "weights": {}}')
    code, stdout, err = run_main(*export_args(random_weights, tmp_path / "x"))
    assert code == 2 and "restored" in stdout
    assert (tmp_path / "x" / "manifest.json").is_file() and not old.exists()


def test_checkpoint_temp_file_of_a_killed_run_is_removed(tmp_path, demo_data):  # 96
    run = tmp_path / "run"
    run.mkdir()
    (run / ".checkpoint.ya3vcy6g.tmp.pt").write_bytes(b"0" * 100)
    (run / f".checkpoint.{dead_pid()}.abcd.tmp.pt").write_bytes(b"0" * 100)
    code, stdout, err = run_main("train", "--data", demo_data, "--out", run, "--resume",
                                 "--image-size", "64", "--workers", "0", "--device", "cpu")
    assert code == 2
    assert_one_line(err, "no checkpoint")
    assert "removed 2 temporary file(s)" in stdout
    assert list(run.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Option values (#1, #3, #79, #80, #81, #111, #127)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (("data", "demo", "--out", "{t}/d", "--seed", "-1"), "--seed"),  # 1
    (("data", "demo", "--out", "{t}/d", "--size", "60000"), "--size"),  # 3
    (("data", "demo", "--out", "{t}/d", "--classes", "1"), "--classes"),
    (("train", "--data", "{t}", "--out", "{t}/r", "--lr", "-1"), "--lr"),  # 79
    (("train", "--data", "{t}", "--out", "{t}/r", "--weight-decay", "-1"), "--weight-decay"),  # 80
    (("train", "--data", "{t}", "--out", "{t}/r", "--seed", "-1"), "--seed"),  # 81
    (("export", "w", "--out", "{t}/x", "--formats", ","), "names no format"),  # 111
    (("export", "w", "--out", "{t}/x", "--formats", ""), "names no format"),
    (("pipeline", "--out", "{t}/p", "--formats", ","), "names no format"),
    (("validate", "{t}", "--atol", "-1"), "--atol"),  # 127
    (("validate", "{t}", "--rtol", "-1"), "--rtol"),
    (("validate", "{t}", "--max-accuracy-drop", "-1"), "--max-accuracy-drop"),
])
def test_bad_option_values_are_usage_errors(tmp_path, args, needle):
    code, _, err = run_main(*(a.replace("{t}", str(tmp_path)) for a in args))
    assert code == 2
    assert "Traceback" not in err and needle in err
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a hidden staging folder


def test_library_refuses_bad_training_values(tmp_path):
    from alexnet_deploy.errors import UserError
    from alexnet_deploy.training import TrainConfig

    for kwargs, needle in (({"lr": -1.0}, "--lr"), ({"weight_decay": -1.0}, "--weight-decay"),
                           ({"seed": -1}, "--seed"), ({"lr": float("nan")}, "--lr")):
        with pytest.raises(UserError, match=needle):
            TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), **kwargs)


# ---------------------------------------------------------------------------------------------
# --resume with a checkpoint that does not fit (#88, #92, #93)
# ---------------------------------------------------------------------------------------------
def _checkpoint(run: Path, classes: list[str], **override) -> None:
    ckpt = {"model": {}, "optimizer": {}, "lr_scheduler": {}, "scaler": {}, "epoch": 0, "rng": {},
            "config": {"arch": "alexnet", "optimizer": "sgd"}, "classes": classes, "history": []}
    ckpt.update(override)
    run.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run / "checkpoint.pt")


@pytest.mark.parametrize(("case", "needle"), [
    ("optimizer", "checkpoint.pt was trained with sgd; resume with --optimizer sgd or start a new --out"),
    ("shape", "classifier.6.weight has shape (5, 4096) in the checkpoint but (10, 4096) here"),
    ("config", "not a checkpoint of this tool (config is str)"),
])
def test_resume_with_an_unfitting_checkpoint_is_one_line(tmp_path, demo_data, case, needle):
    classes = sorted(p.name for p in (demo_data / "train").iterdir())
    run = tmp_path / "run"
    override = {"shape": {"model": {"classifier.6.weight": torch.zeros(5, 4096)}},
                "config": {"config": "just a string"}}.get(case, {})
    _checkpoint(run, classes, **override)
    args = ["train", "--data", demo_data, "--out", run, "--resume", "--image-size", "64",
            "--workers", "0", "--device", "cpu", "--epochs", "2"]
    if case == "optimizer":
        args += ["--optimizer", "adamw"]
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_main(*args)
    assert code == 2
    assert_one_line(err, needle)
    assert (run / "checkpoint.pt").read_bytes() == before
