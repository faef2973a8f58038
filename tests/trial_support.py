"""Builders and checks for the hostile-trial regression suite (tests/test_trial.py).

They mirror the trial's helpers (shared/reliability-trial.md): `mkex` (a hard-link copy of an export
with a fresh manifest the case edits), `mkst` (a copy of the weights with an edited card or tensors),
malicious pickles, hostile images, and a tripwire that tells whether a file outside the given
folders was read (its access time, set older than its modification time so the relatime mount
updates it on any read).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from helpers import Result
from PIL import Image

PWNED = "PWNED_"


# ---------------------------------------------------------------------------------------------
# running the CLI: helpers.cli (in this process) and helpers.cli_subprocess (a child process)
# ---------------------------------------------------------------------------------------------
def _is_click_usage(lines: list[str]) -> bool:
    return bool(lines) and lines[0].startswith("Usage:") and lines[-1].startswith("Error:")


def assert_error(r: Result, code: int, *needles: str, progress: bool = False) -> None:
    """The issue's contract for bad input: the exit code, no traceback, ONE clear line on stderr
    (or click's usage block), which mentions each needle. `progress`: the command logs progress on
    stderr (benchmark), so the rule is one `error:` line, and it is the last."""
    assert "Traceback" not in r.err + r.out, r.err[-3000:]
    assert r.code == code, (r.code, r.out[-800:], r.err[-1500:])
    lines = r.lines()
    if progress:
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], lines
    else:
        assert len(lines) == 1 or _is_click_usage(lines), lines
    for n in needles:
        assert n.lower() in r.err.lower(), (n, r.err)


def assert_ok(r: Result) -> None:
    assert "Traceback" not in r.err + r.out, r.err[-3000:]
    assert r.code == 0, (r.code, r.out[-800:], r.err[-1500:])


def assert_no_control_chars(text: str) -> None:
    """Nothing from an untrusted card reaches the terminal as an escape sequence."""
    bad = [c for c in text if (ord(c) < 32 and c not in "\n\t") or ord(c) == 0x7F]
    assert not bad, repr(text[-500:])


# ---------------------------------------------------------------------------------------------
# "nothing read outside", "nothing lost", "nothing half-written"
# ---------------------------------------------------------------------------------------------
class Tripwire:
    """A file outside the folders a command is given. Its atime is set well before its mtime, so
    on a relatime (or strictatime) mount any read of it moves the atime; `read()` tells."""

    def __init__(self, path: Path, data: bytes = b"secret outside the export\n") -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(data)
        self.arm()

    def arm(self) -> None:
        st = os.stat(self.path)
        self.atime = st.st_mtime - 10_000
        os.utime(self.path, (self.atime, st.st_mtime))

    def read(self) -> bool:
        return os.stat(self.path).st_atime != self.atime


def atime_works(folder: Path) -> bool:
    """Whether this mount updates atime on reads (the Tripwire's premise)."""
    t = Tripwire(folder / ".atime_probe")
    t.path.read_bytes()
    ok = t.read()
    t.path.unlink()
    return ok


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root (no symlinks followed) with its size and mtime."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def leftovers(parent: Path) -> list[str]:
    """Hidden staging / partial / temp entries a command left in parent (half-written output)."""
    return sorted(p.name for p in Path(parent).iterdir()
                  if p.name.startswith(".") and any(k in p.name for k in ("partial", "tmp", "old")))


def pwned(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(PWNED + "*"))


# ---------------------------------------------------------------------------------------------
# exports and weights
# ---------------------------------------------------------------------------------------------
def sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def link_tree(src: Path, dst: Path) -> None:
    """A copy of src made of hard links (cheap for the ~230 MB artifacts)."""
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(Path(dirpath) / f, dst / rel / f)


def mkex(src: Path, dst: Path, edit: Callable[[dict, Path], None] | None = None) -> Path:
    """The trial's mkex: a hard-link copy of export src with a FRESH manifest.json that `edit`
    (manifest dict, the new folder) may change. Artifacts a case rewrites must be unlinked first
    (`replace_file`) so the shared export is never touched."""
    link_tree(src, dst)
    man = dst / "manifest.json"
    m = json.loads(man.read_text())
    man.unlink()
    if edit is not None:
        edit(m, dst)
    man.write_text(json.dumps(m, indent=2))
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Write data to path without touching the hard-linked original."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def artifact(m: dict, fmt: str, precision: str = "fp32") -> dict:
    return next(a for a in m["artifacts"] if a["format"] == fmt and a["precision"] == precision)


class Weights:
    """R's weights held in memory once, so each `mkst` is one write."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            self.metadata = dict(f.metadata())
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}
        self.card = json.loads(self.metadata["card"])

    def mkst(self, out: Path, card: Callable[[dict], None] | None = None,
             tensors: Callable[[dict], None] | None = None, card_raw: str | None = None) -> Path:
        """The trial's mkst: a copy of the weights whose card / tensors / raw card text is edited."""
        import copy

        from safetensors.torch import save_file

        c = copy.deepcopy(self.card)
        if card is not None:
            card(c)
        st = dict(self.tensors)
        if tensors is not None:
            tensors(st)
        meta = {**self.metadata, "card": card_raw if card_raw is not None else json.dumps(c)}
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(st, str(out), metadata=meta)
        return out


def raw_safetensors(out: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A hand-written safetensors file (8-byte little-endian header length, JSON header, data)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return out


# ---------------------------------------------------------------------------------------------
# malicious pickles: running one touches PWNED_<tag> in the current folder
# ---------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}{self.tag}",))


def mal_raw(out: Path, tag: str) -> Path:
    out.write_bytes(pickle.dumps(_Payload(tag)))
    return out


def mal_zip(out: Path, tag: str, as_checkpoint: bool = False) -> Path:
    import torch

    obj = {"model": _Payload(tag), "epoch": 1, "config": {}} if as_checkpoint else _Payload(tag)
    torch.save(obj, out)
    return out


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_zero_bomb(out: Path, width: int, height: int) -> Path:
    """A bilevel PNG of zero rows: a huge image in a small file (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    out.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                    + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))
    return out


def gray16(out: Path, size: int = 64) -> Path:
    """A 16-bit grayscale gradient whose values lie far above 255 (6682..56026 in the trial)."""
    a = np.linspace(6682, 56026, size * size).reshape(size, size).astype(np.uint16)
    Image.fromarray(a).save(out)
    return out


def float_tiff(out: Path, size: int = 64) -> Path:
    a = np.linspace(0.0, 1.0, size * size, dtype=np.float32).reshape(size, size)
    Image.fromarray(a, mode="F").save(out)
    return out


def rgb(size=(64, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def image_zoo(folder: Path) -> dict[str, Path]:
    """The trial's image set (cases 4-17)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = rgb()
    z = {}

    def save(name, img, **kw):
        p = folder / name
        img.save(p, **kw)
        z[name] = p

    save("one.png", base)
    save("gif_as.png", base.convert("P"), format="GIF")
    save("cmyk.jpg", base.convert("CMYK"))
    save("rgba.png", base.convert("RGBA"))
    save("palette.png", base.convert("P"))
    save("gray.png", base.convert("L"))
    save("la.png", base.convert("LA"))
    save("bilevel.png", base.convert("1"))
    save("tiny.png", rgb((1, 1)))
    z["gray16.png"] = gray16(folder / "gray16.png")
    z["float.tiff"] = float_tiff(folder / "float.tiff")
    (folder / "zero.jpg").write_bytes(b"")
    z["zero.jpg"] = folder / "zero.jpg"
    full = (folder / "one.png").read_bytes()
    (folder / "trunc.png").write_bytes(full[: len(full) // 2])
    z["trunc.png"] = folder / "trunc.png"
    (folder / "text.png").write_text("this is not an image\n")
    z["text.png"] = folder / "text.png"
    frames = [rgb(seed=i).convert("P") for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    z["anim.gif"] = folder / "anim.gif"
    (folder / "adir.png").mkdir()
    z["adir.png"] = folder / "adir.png"
    return z
