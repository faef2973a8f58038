"""Atomic writes: the new file's mode follows the process umask of the moment, the umask itself is
never touched, and the folder entry of the rename is synced to disk."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from alexnet_deploy.files import atomic_path, output_lock, write_json, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    """The process umask set to 027 for one test (after alexnet_deploy.files was imported)."""
    before = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(before)


def test_written_files_follow_the_umask_of_the_moment(tmp_path, umask_027):
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"\0")
    assert _mode(tmp_path / "a.json") == 0o640 and _mode(tmp_path / "b.bin") == 0o640
    with output_lock(tmp_path / "out"):
        assert _mode(tmp_path / ".out.lock") == 0o640


def test_atomic_writes_never_set_the_umask(tmp_path, monkeypatch):
    """Setting the umask (the only portable way to read it) would change other threads' files."""
    def refuse(mask):
        raise AssertionError(f"os.umask({mask:#o}) called")

    monkeypatch.setattr(os, "umask", refuse)
    write_text(tmp_path / "t.txt", "x")
    with output_lock(tmp_path / "out"):
        pass
    assert (tmp_path / "t.txt").read_text() == "x"


def test_importing_and_writing_in_a_fresh_process_never_sets_the_umask(tmp_path):
    code = f"""
import os
calls = []
real = os.umask
os.umask = lambda m: calls.append(m) or real(m)
from alexnet_deploy.files import write_text
write_text({str(tmp_path / "t.txt")!r}, "x")
assert not calls, calls
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_folder_is_synced_after_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "t.txt", "x")
    assert events == [("fsync", "file"), ("replace", "t.txt"), ("fsync", "dir")]


def test_temporary_names_carry_the_pid_for_leftover_cleaning(tmp_path):
    """files.remove_stale_temp_files tells a dead process's leftovers by the pid in the name."""
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".checkpoint.{os.getpid()}.")
        assert tmp.name.endswith(".tmp.pt") and tmp.exists()
        tmp.write_bytes(b"ckpt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
