"""The model card (ModelCard, InputSpec): the typed, validated contract every artifact carries.

Torch-free on purpose: cards arrive from untrusted files (a safetensors header, a manifest), and
every consumer (info, predict, the C++ side's tests) reads them before any model is built. Wrong
types, absurd sizes and counts are refused with a field-path message (`model card: input.crop:
must be >= 1 (got -5)`) before anything is allocated; unknown keys are kept and written back.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from alexnet_deploy.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_IMAGE_SIDE = 8192  # crop / resize bound: a larger card is a typo or an attack, not a model
MAX_CLASSES = 100_000  # bounded before any list of names is built (a 10^9-class card must not allocate)
MAX_TEXT = 1000  # one class name, arch or source string


# ---------------------------------------------------------------------------------------------
# Errors: pydantic's ValidationError as one line with the field's path
# ---------------------------------------------------------------------------------------------
def _got(value: Any) -> str:
    text = repr(value)
    return printable(text if len(text) <= 60 else text[:57] + "...")


_MESSAGES = {
    "greater_than_equal": lambda c: f"must be >= {c.get('ge')}",
    "greater_than": lambda c: f"must be > {c.get('gt')}",
    "less_than_equal": lambda c: f"must be <= {c.get('le')}",
    "less_than": lambda c: f"must be < {c.get('lt')}",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "float_type": lambda c: "must be a number",
    "float_parsing": lambda c: "must be a number",
    "finite_number": lambda c: "must be a finite number",
    "string_type": lambda c: "must be a string",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be an object",
    "model_type": lambda c: "must be an object",
    "model_attributes_type": lambda c: "must be an object",
    "too_short": lambda c: f"must have at least {c.get('min_length')} items",
    "too_long": lambda c: f"must have at most {c.get('max_length')} items",
    "string_too_long": lambda c: f"must be at most {c.get('max_length')} characters",
    "string_too_short": lambda c: f"must be at least {c.get('min_length')} characters",
    "missing": lambda c: "is required",
    "enum": lambda c: f"must be one of {c.get('expected')}",
    "literal_error": lambda c: f"must be {c.get('expected')}",
}


def error_line(what: str, err: ValidationError) -> str:
    """`what: a.b.0: must be ... (got X)` for the first error, with a count of the others."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind in _MESSAGES:
        msg = _MESSAGES[kind](first.get("ctx") or {})
    else:
        msg = str(first["msg"]).removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
    quiet = kind == "missing" or "got" in msg or not loc or isinstance(first.get("input"), dict)
    got = "" if quiet else f" (got {_got(first.get('input'))})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{what}: {loc + ': ' if loc else ''}{msg}{got}{more}"


class _ContractMeta(type(BaseModel)):
    """Direct construction (`ModelCard(...)`) turns a ValidationError into the UserError line and
    takes positional arguments in `_positional` order (the former dataclasses' order). A metaclass,
    not `__init__`: pydantic validates nested models without calling the class, so field paths
    stay whole (`input.crop`)."""

    def __call__(cls, *args: Any, **data: Any):
        names = cls._positional
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments")
        data.update(zip(names, args, strict=False))
        try:
            return super().__call__(**data)
        except ValidationError as e:
            raise UserError(error_line(cls._what, e)) from None


class Contract(BaseModel, metaclass=_ContractMeta):
    """Base of every boundary model: unknown keys kept, a UserError with a field path on bad input."""

    model_config = ConfigDict(extra="allow", use_enum_values=True)
    _what: ClassVar[str] = "input"
    _positional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def checked(cls, value: Any, what: str):
        """`value` (parsed JSON) validated as this model; `what` names it in the message."""
        if not isinstance(value, dict):
            raise UserError(f"{what}: must be an object (got {_got(value)})")
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            raise UserError(error_line(what, e)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------
class InputSpec(Contract):
    _what: ClassVar[str] = "model card: input"
    _positional: ClassVar[tuple[str, ...]] = ("shape", "layout", "dtype", "mean", "std", "resize", "crop")

    shape: list[StrictInt] = Field(default_factory=lambda: [3, 224, 224], min_length=3, max_length=3)
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    mean: list[float] = Field(default_factory=lambda: list(IMAGENET_MEAN), min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: list(IMAGENET_STD), min_length=3, max_length=3)
    resize: StrictInt = Field(256, ge=1, le=MAX_IMAGE_SIDE)
    crop: StrictInt = Field(224, ge=1, le=MAX_IMAGE_SIDE)

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, d: Any) -> Any:
        # a card that gives only `crop` means torchvision's recipe for that size
        if not isinstance(d, dict):
            return d
        shape = d.get("shape")
        if "crop" not in d and isinstance(shape, list) and len(shape) == 3 and type(shape[-1]) is int:
            d = {**d, "crop": shape[-1]}  # a card that gives only the shape: its side is the crop
        crop = d.get("crop")
        if type(crop) is int and 1 <= crop <= MAX_IMAGE_SIDE:
            d = dict(d)
            d.setdefault("shape", [3, d["crop"], d["crop"]])
            d.setdefault("resize", int(round(d["crop"] * 256 / 224)))
        return d

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"must be 3 finite numbers (got {v})")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not all(x > 0 for x in v):
            raise ValueError(f"must be 3 numbers > 0 (got {v})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.shape != [3, self.crop, self.crop]:
            raise ValueError(f"shape {self.shape} does not match crop {self.crop}: "
                             f"it must be [3, {self.crop}, {self.crop}]")
        if self.resize < self.crop:
            raise ValueError(f"resize {self.resize} is smaller than crop {self.crop}")
        return self

    @classmethod
    def for_size(cls, crop: int) -> InputSpec:
        # torchvision's eval recipe: resize the short side to crop*256/224, then centre-crop.
        return cls(shape=[3, crop, crop], resize=int(round(crop * 256 / 224)), crop=crop)

    def resized_to(self, crop: int) -> InputSpec:
        """The same preprocessing at another input side, resizing in this spec's own ratio
        (Inception's 342 / 299, everyone else's 256 / 224) with its own mean and std."""
        resize = max(crop, int(round(crop * self.resize / self.crop)))
        return self.model_copy(update={"shape": [3, crop, crop], "crop": crop, "resize": resize})


class ModelDefinition(Contract):
    """A user's own module (`--model-def`): what to import and call to build it again. A card never
    makes anything import it: the user names it again (`--model-def`), since that runs their code."""

    _what: ClassVar[str] = "model card: model_def"
    _positional: ClassVar[tuple[str, ...]] = ("spec", "args", "sha256")

    spec: StrictStr = Field(min_length=1, max_length=MAX_TEXT)  # FILE.py:NAME or package.module:NAME
    args: dict[str, Any] = Field(default_factory=dict)  # the constructor's keyword arguments (JSON values)
    sha256: StrictStr | None = Field(None, pattern="^[0-9a-f]{64}$")  # of FILE.py when it is a file


class ModelCard(Contract):
    """Everything a consumer needs to run the weights correctly; travels with every artifact."""

    _what: ClassVar[str] = "model card"
    _positional: ClassVar[tuple[str, ...]] = ("arch", "num_classes", "classes", "input", "data", "training", "metrics",
                   "versions", "source", "model_def")

    arch: StrictStr = Field("alexnet", max_length=MAX_TEXT)
    # bounded here, before `_names` below builds a list of that length
    num_classes: StrictInt = Field(1000, ge=1, le=MAX_CLASSES)
    classes: list[StrictStr] = Field(default_factory=list, max_length=MAX_CLASSES)
    input: InputSpec = Field(default_factory=InputSpec)
    data: dict[str, Any] = Field(default_factory=dict)  # {"root": ..., "val": ...} when known
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, Any] = Field(default_factory=dict)
    source: StrictStr = ""
    model_def: ModelDefinition | None = None  # set for a user's own module (arch "user:NAME")

    @field_validator("data")
    @classmethod
    def _data_paths(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("root", "val"):
            if v.get(key) is not None and not isinstance(v[key], str):
                raise ValueError(f"data.{key} must be a folder path string (got {_got(v[key])})")
        return v

    @field_validator("classes")
    @classmethod
    def _name_lengths(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if len(name) > MAX_TEXT:
                raise ValueError(f"class name {i} is {len(name)} characters long (at most {MAX_TEXT})")
        return v

    @model_validator(mode="after")
    def _names(self) -> ModelCard:
        if not self.classes:
            self.classes = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"lists {len(self.classes)} class names for {self.num_classes} classes")
        return self

    @property
    def image_size(self) -> int:
        return self.input.crop

    @property
    def generic_names(self) -> bool:
        """The card names no classes (class_0, class_1, ...: a bare state dict exported without
        --classes): labelled folders are then matched by sorted position (data.load_labelled)."""
        return self.classes == [f"class_{i}" for i in range(self.num_classes)]

    @property
    def file_stem(self) -> str:
        """The artifacts' file names: `alexnet` for the AlexNets (the names users, scripts and the
        C++ docs know), else the architecture's (`resnet18`, `tinynet` for `user:TinyNet`)."""
        if self.arch.startswith("alexnet"):
            return "alexnet"
        return re.sub(r"[^a-z0-9_]+", "_", self.arch.removeprefix("user:").lower()).strip("_") or "model"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, what: str = "model card") -> ModelCard:
        return cls.checked(d, what)

    @classmethod
    def from_json(cls, text: str, what: str = "model card") -> ModelCard:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"the model card is not valid JSON: {e}") from None
        return cls.from_dict(d, what)


# ---------------------------------------------------------------------------------------------
# Printing untrusted text
# ---------------------------------------------------------------------------------------------
def printable(text: Any) -> str:
    """`text` with control characters (C0, DEL, C1, bidi overrides, line separators) escaped
    as \\xNN / \\uNNNN: class names and file names from others must not drive the terminal."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or (c == " ") else _escape(c) for c in s)


def _escape(c: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in named:
        return named[c]
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if unicodedata.category(c) in ("Zs",):
        return c  # ordinary wide spaces
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
