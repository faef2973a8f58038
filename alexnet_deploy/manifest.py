"""manifest.json (schema 1): what an export folder holds, with hashes, for every consumer.

Typed and torch-free (pydantic): a manifest from elsewhere is untrusted, so wrong types, absurd
batch ranges and paths that leave the folder are refused with a field-path message before any
file it names is touched. `contained()` is the one containment rule every path read from a
manifest goes through; `verify_integrity()` hashes a file only after it passed that rule.
The JSON Schema in schema/manifest.schema.json is generated from these models
(`python -m alexnet_deploy.manifest --schema`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import stat
import sys
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from alexnet_deploy.card import Contract, ModelCard, printable
from alexnet_deploy.errors import UserError
from alexnet_deploy.files import NotRegularFile, sha256_file

SCHEMA = 1
MAX_BATCH = 65536  # the largest batch range a manifest may declare (benchmark, validate allocate from it)
MAX_MANIFEST_BYTES = 64 << 20
SHA256_PATTERN = r"^([0-9a-f]{64})?$"  # empty: not recorded (integrity then fails, naming it)
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema" / "manifest.schema.json"


class Format(enum.StrEnum):
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"
    TORCH_EXPORT = "torch-export"
    AOTI = "aoti"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    TRITON = "triton"
    WEIGHTS = "weights"  # the export's copy of the source weights (torch-eager runs it)


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # int8 weights and int8 activations (calibrated)
    # Weight-only compression: the weights are stored in fewer bits, the graph's activations stay
    # float (a runtime may still quantize them on the fly; the artifact's extra["activations"] says).
    INT8W = "int8w"  # every weight int8
    INT4W = "int4w"  # the Linears' weights int4 (groups sharing a scale), the others int8
    INT4W_A8 = "int4w-a8"  # int8 activations and convolution weights (calibrated), int4 Linear weights


# Precisions whose activation ranges were calibrated on images (export's int8 calibration set), and
# those whose weights NNCF compressed to integers (roofline reads their bytes, tolerances their limits).
CALIBRATED = (Precision.INT8.value, Precision.INT4W_A8.value)
WEIGHT_COMPRESSED = (Precision.INT8W.value, Precision.INT4W.value, Precision.INT4W_A8.value)


FORMATS = tuple(f.value for f in Format if f is not Format.WEIGHTS)
PRECISIONS = tuple(p.value for p in Precision)
FOLDER_FORMATS = (Format.TRITON.value,)  # artifacts that are a folder by design


# ---------------------------------------------------------------------------------------------
# Containment: the one rule for a path read from a manifest
# ---------------------------------------------------------------------------------------------
class Uncontained(UserError):
    """A path from a manifest that is not a file (or folder) inside the export folder."""


def lexical_problem(rel: Any) -> str | None:
    """Why `rel` cannot name something inside a folder, from its text alone; None when it can."""
    if not isinstance(rel, str) or not rel:
        return "must be a non-empty relative path"
    if not rel.isprintable():
        return "must not contain control characters"
    if rel.startswith(("/", "\\")) or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        return "must be a path relative to the export folder, not an absolute one"
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        return "must not contain '..': it would leave the export folder"
    return None


def contained(root: str | os.PathLike, rel: str, kind: Literal["file", "dir", "any"] = "file") -> Path:
    """The real path of `rel` inside `root`, after checking, without opening anything, that it is
    relative, has no '..', resolves (symlinks followed) inside `root` and is a regular file (or a
    folder where `kind` allows one: no FIFOs, devices or sockets). Raises Uncontained."""
    shown = printable(rel)
    problem = lexical_problem(rel)
    if problem:
        raise Uncontained(f"{shown}: {problem}")
    base = Path(os.path.realpath(root))
    path = Path(root) / rel
    if not os.path.lexists(path):
        raise Uncontained(f"{shown} is listed in the manifest but missing")
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(base):
        # relative and without '..': only a symlink on the way can lead out
        raise Uncontained(f"{shown} is a symlink pointing outside the export folder (to {printable(real)}); "
                          "refusing to read it")
    try:
        st = os.stat(real)
    except OSError:
        raise Uncontained(f"{shown} is listed in the manifest but missing (a dangling symlink)") from None
    if stat.S_ISREG(st.st_mode):
        return real
    if stat.S_ISDIR(st.st_mode):
        if kind in ("dir", "any"):
            return real
        raise Uncontained(f"{shown} is a folder where the manifest lists a file")
    raise Uncontained(f"{shown} is not a regular file (a FIFO, socket or device); refusing to open it")


def _folder_files(base: Path, folder: Path) -> list[tuple[Path, Path]]:
    """(relative path, real path) of every file below a folder artifact; symlinks must stay inside
    the export folder and are not followed into sub-folders; FIFOs and devices are refused."""
    out = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(top) / name
            real = Path(os.path.realpath(p))
            rel = p.relative_to(folder)
            if not real.is_relative_to(base):
                raise Uncontained(f"{printable(folder.relative_to(base) / rel)} is a symlink pointing "
                                  "outside the export folder; refusing to read it")
            if p.is_symlink() and real.is_dir():
                raise Uncontained(f"{printable(folder.relative_to(base) / rel)} is a symlink to a folder; "
                                  "folder artifacts hold plain files")
            st = os.stat(real)
            if stat.S_ISREG(st.st_mode):
                out.append((rel, real))
            elif not stat.S_ISDIR(st.st_mode):
                raise Uncontained(f"{printable(folder.relative_to(base) / rel)} is not a regular file; "
                                  "refusing to open it")
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------
class BatchRange(Contract):
    """The batch sizes an artifact accepts. Reads as a mapping too (`batch["max"]`,
    `batch.get("max")`, `batch == {"min": 1, "max": 8}`) for the callers written against a dict."""

    _what: ClassVar[str] = "batch"
    _positional: ClassVar[tuple[str, ...]] = ("min", "max")

    min: StrictInt = Field(1, ge=1, le=MAX_BATCH)
    max: StrictInt = Field(64, ge=1, le=MAX_BATCH)

    @model_validator(mode="after")
    def _ordered(self) -> BatchRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in ("min", "max") else default

    def __getitem__(self, key: str) -> int:
        if key not in ("min", "max"):
            raise KeyError(key)
        return getattr(self, key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return {"min": self.min, "max": self.max} == other
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


def _check_rel(v: str) -> str:
    problem = lexical_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class Artifact(Contract):
    _what: ClassVar[str] = "artifact"
    _positional: ClassVar[tuple[str, ...]] = ("format", "precision", "device", "path", "sha256", "bytes",
                                              "input_name", "output_name", "batch", "export_s", "extra")

    format: Format
    precision: Precision
    device: Literal["cpu", "cuda"]
    path: StrictStr  # relative to the export folder
    sha256: str = Field("", pattern=SHA256_PATTERN)
    bytes: StrictInt = Field(0, ge=0)
    input_name: StrictStr = "images"
    output_name: StrictStr = "logits"
    batch: BatchRange = Field(default_factory=BatchRange)
    export_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    extra: dict[str, Any] = Field(default_factory=dict)  # format-specific facts (agreement, files, ...)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _check_rel(v)

    @field_validator("extra")
    @classmethod
    def _files(cls, v: dict[str, Any]) -> dict[str, Any]:
        files = v.get("files")
        if files is None:
            return v
        if not isinstance(files, dict):
            raise ValueError(f"extra.files must map relative paths to sha256 strings (got {type(files).__name__})")
        for rel, sha in files.items():
            problem = lexical_problem(rel)
            if problem:
                raise ValueError(f"extra.files entry {printable(repr(rel))} {problem}")
            if not isinstance(sha, str):
                raise ValueError(f"extra.files[{printable(repr(rel))}] must be a sha256 string")
        return v

    @property
    def key(self) -> str:
        """A stable, human-readable id: format/precision/device."""
        return f"{self.format}/{self.precision}/{self.device}"

    @property
    def is_folder(self) -> bool:
        return self.format in FOLDER_FORMATS

    @classmethod
    def from_dict(cls, d: Any) -> Artifact:
        return cls.checked(d, "artifact")


class Skipped(Contract):
    _what: ClassVar[str] = "skipped"
    _positional: ClassVar[tuple[str, ...]] = ("format", "reason")

    format: StrictStr
    reason: StrictStr


class Manifest(Contract):
    _what: ClassVar[str] = "manifest"

    schema_version: Literal[1] = Field(SCHEMA, alias="schema")
    card: ModelCard
    weights: dict[str, Any]
    artifacts: list[Artifact] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    versions: dict[str, Any] = Field(default_factory=dict)
    # Read only: where recommend wrote its picks before it had its own file (DIR/recommendation.json);
    # benchmark still marks them for such exports. Nothing writes it now.
    recommended: dict[str, Any] = Field(default_factory=dict)
    root: SkipJsonSchema[Path | None] = Field(None, exclude=True)  # the export folder; not serialised

    model_config = {**Contract.model_config, "populate_by_name": True}

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "path" in v:
            problem = lexical_problem(v["path"])
            if problem:
                raise ValueError(f"path {problem} (got {printable(repr(v['path']))})")
        for key in ("sha256", "source", "source_sha256"):
            if key in v and not isinstance(v[key], str):
                raise ValueError(f"{key} must be a string (got {printable(repr(v[key]))[:60]})")
        for key in ("sha256", "source_sha256"):  # the same rule as an artifact's sha256
            if key in v and not re.fullmatch(SHA256_PATTERN, v[key]):
                raise ValueError(f"{key} must be 64 lowercase hex digits (got {printable(repr(v[key]))[:60]})")
        return v

    @property
    def schema(self) -> int:  # type: ignore[override]  (the manifest's field, not pydantic's method)
        return self.schema_version

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", by_alias=True)
        if not d.get("recommended"):
            d.pop("recommended", None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write(self, root: str | os.PathLike) -> Path:
        from alexnet_deploy.files import write_json

        path = Path(root) / "manifest.json"
        write_json(path, self.to_dict())
        return path

    def path_of(self, artifact: Artifact) -> Path:
        """The artifact's real path, contained in the export folder (see `contained`)."""
        assert self.root is not None, "manifest was not read from a folder"
        return contained(self.root, artifact.path, "dir" if artifact.is_folder else "file")

    def weights_artifact(self) -> Artifact:
        """The source weights (copied into the export folder) as an artifact torch-eager runs."""
        return Artifact(format="weights", precision="fp32", device="cpu",
                        path=self.weights.get("path", "weights.safetensors"),
                        sha256=self.weights.get("sha256", ""),
                        batch={"min": 1, "max": MAX_BATCH})

    def find(self, fmt: str, precision: str | None = None) -> list[Artifact]:
        return [a for a in self.artifacts
                if a.format == fmt and (precision is None or a.precision == precision)]

    def listed(self, path: str | os.PathLike) -> Artifact | None:
        """The artifact (or the weights) `path` names, compared by its place in the folder, not
        by where symlinks lead: a symlinked artifact is found, and then refused by `contained`."""
        assert self.root is not None
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        if rel.startswith(".."):
            return None
        for art in [self.weights_artifact(), *self.artifacts]:
            own = os.path.normpath(art.path)
            if rel == own or (art.is_folder and rel.startswith(own + os.sep)):
                return art
        return None

    @classmethod
    def read(cls, root: str | os.PathLike) -> Manifest:
        root = Path(root)
        folder = root if root.is_dir() or root.name != "manifest.json" else root.parent
        path = folder / "manifest.json"
        if not folder.is_dir() or not os.path.lexists(path):
            raise UserError(f"no manifest.json in {root}: run `alexnet-deploy export WEIGHTS --out {root}` first")
        try:
            real = contained(folder, "manifest.json")
        except Uncontained as e:
            raise UserError(f"{folder}: {e}") from None
        if real.stat().st_size > MAX_MANIFEST_BYTES:
            raise UserError(f"{path} is {real.stat().st_size:,} bytes: not a manifest this tool wrote")
        try:
            d = json.loads(real.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e}); re-run export") from None
        what = str(path)
        if not isinstance(d, dict):
            raise UserError(f"{what}: must be a JSON object (got {type(d).__name__}); re-run export")
        schema = d.get("schema")
        if type(schema) is not int:
            raise UserError(f"{what}: schema: must be the integer {SCHEMA} (got {printable(repr(schema))[:40]}); "
                            "re-run export")
        if schema != SCHEMA:
            raise UserError(f"{what} has manifest schema {schema}; this version reads schema {SCHEMA}: "
                            "re-export with this version")
        d.pop("root", None)  # never taken from the file
        m = cls.checked(d, what)
        m.root = folder
        return m


# ---------------------------------------------------------------------------------------------
# Integrity
# ---------------------------------------------------------------------------------------------
def verify_integrity(manifest: Manifest, artifact: Artifact) -> str | None:
    """None when the files on disk are the ones the manifest lists, else the failure message.
    Every path is contained first: nothing outside the export folder is opened or hashed."""
    assert manifest.root is not None
    checks = [(artifact.path, artifact.sha256, "dir" if artifact.is_folder else "file")]
    # companion files (an OpenVINO .bin, a TensorRT sidecar) are listed in extra["files"]
    checks += [(rel, sha, "file") for rel, sha in artifact.extra.get("files", {}).items()]
    located = []
    try:
        for rel, expected, kind in checks:
            real = contained(manifest.root, rel, kind)
            located.append((rel, expected, real,
                            _dir_hash(real, Path(os.path.realpath(manifest.root))) if real.is_dir() else None))
    except Uncontained as e:
        return f"integrity: {e}"
    for rel, expected, real, folder_hash in located:
        actual = folder_hash if folder_hash is not None else _sha256(real)
        if actual != expected:
            return (f"integrity: {printable(rel)} has sha256 {actual[:12]}..., the manifest lists "
                    f"{printable(expected[:12])}...: the file changed after export; re-export it")
    return None


def _sha256(path: Path) -> str:
    try:
        return sha256_file(path)
    except NotRegularFile:
        raise Uncontained(f"{printable(path.name)} is not a regular file; refusing to read it") from None


def _dir_hash(path: Path, base: Path | None = None) -> str:
    """Hash of a folder artifact (e.g. a Triton model dir): sorted relative paths and contents."""
    h = hashlib.sha256()
    for rel, real in _folder_files(base or Path(os.path.realpath(path)), path):
        h.update(str(rel).encode())
        h.update(_sha256(real).encode())
    return h.hexdigest()


def hash_artifact(path: Path) -> tuple[str, int]:
    """sha256 and size of a file or folder artifact (one this tool just wrote)."""
    if path.is_dir():
        base = Path(os.path.realpath(path))
        return _dir_hash(path, base), sum(real.stat().st_size for _, real in _folder_files(base, path))
    return _sha256(path), path.stat().st_size


# ---------------------------------------------------------------------------------------------
# The published JSON Schema
# ---------------------------------------------------------------------------------------------
def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(by_alias=True)
    schema["title"] = "alexnet-deploy manifest.json (schema 1)"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] != ["--schema"]:
        print("usage: python -m alexnet_deploy.manifest --schema [--write]", file=sys.stderr)
        return 2
    if argv[1:2] == ["--write"]:
        SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_FILE.write_text(json_schema_text())
        print(f"wrote {SCHEMA_FILE}")
    else:
        sys.stdout.write(json_schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
