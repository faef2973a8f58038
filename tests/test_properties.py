"""Property-based tests (hypothesis) of the trust boundary: hostile manifest.json documents, model
cards and image bytes. The contract: only UserError / CheckFailed escape the readers, bad input is
never accepted as good, and nothing outside the folder is read.

HYPOTHESIS_EXAMPLES=3000 runs a larger search (the in-suite default keeps it fast).
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trial_support import Tripwire

from alexnet_deploy.errors import CheckFailed, UserError
from alexnet_deploy.exporters import EXPORTERS
from alexnet_deploy.manifest import PRECISIONS
from alexnet_deploy.runtimes import RUNNERS

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EXPECTED = (UserError, CheckFailed)

# JSON values of every shape, with the kinds of scalars that break naive readers, and the names a
# manifest may really hold (every registered format, precision and runner: a new backend's
# names are searched without editing this file)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 20), max_value=10 ** 20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                    st.sampled_from(["../../outside/secret.txt", "/etc", "..", ".", "", "\x1b[31m", "a\nb",
                                     "weights.safetensors", "alexnet.onnx", 10 ** 9, -1, 0, 1e308]),
                    st.sampled_from([*EXPORTERS, *PRECISIONS, *RUNNERS, "weights"]))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)

GOOD_CARD = {"arch": "alexnet", "num_classes": 3, "classes": ["circle", "square", "triangle"],
             "input": {"shape": [3, 64, 64], "layout": "NCHW", "dtype": "float32",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 73, "crop": 64},
             "data": {}, "training": {}, "metrics": {}, "versions": {}, "source": ""}
GOOD_ARTIFACT = {"format": "onnx", "precision": "fp32", "device": "cpu", "path": "alexnet.onnx",
                 "sha256": "0" * 64, "bytes": 4, "input_name": "images", "output_name": "logits",
                 "batch": {"min": 1, "max": 4}, "export_s": 0.0, "extra": {}}
GOOD_MANIFEST = {"schema": 1, "card": GOOD_CARD,
                 "weights": {"path": "weights.safetensors", "sha256": "0" * 64},
                 "artifacts": [GOOD_ARTIFACT], "skipped": [], "versions": {}}

PATHS = ["../../outside/secret.txt", "../outside/secret.txt", "OUTSIDE_ABS", "/etc", "link_out",
         "sub/../../outside/secret.txt", "./../outside/secret.txt", "fifo", ".", ""]


def _mutate(doc: dict, path: list, value):
    """doc with the value at `path` (a list of keys / indices, clipped to what exists) replaced."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for i, k in enumerate(path):
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[k % len(keys)] if isinstance(k, int) else k
        if i == len(path) - 1 or not isinstance(node[key], (dict, list)):
            node[key] = value
            return doc
        node = node[key]
    return doc


@pytest.fixture()
def box(tmp_path):
    """An export-like folder ex/ and an outside/ folder beside it with tripwired files."""
    ex, out = tmp_path / "a" / "ex", tmp_path / "outside"
    ex.mkdir(parents=True)
    out.mkdir()
    (ex / "alexnet.onnx").write_bytes(b"onnx")
    (ex / "weights.safetensors").write_bytes(b"weights")
    (ex / "link_out").symlink_to(out / "secret.txt")
    os.mkfifo(ex / "fifo")
    wire = Tripwire(out / "secret.txt")
    return ex, out, wire


def _paths(ex: Path, out: Path, p: str) -> str:
    return str(out / "secret.txt") if p == "OUTSIDE_ABS" else p


def _check_manifest(ex: Path, doc) -> None:
    from alexnet_deploy.manifest import Manifest, verify_integrity

    (ex / "manifest.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    try:
        m = Manifest.read(ex)
    except EXPECTED:
        return
    # read succeeded: every path it hands out must lie inside the folder, and integrity checks
    # must stay inside too (and fail: no file here matches a listed hash)
    for a in list(m.artifacts) + [m.weights_artifact()]:
        try:
            result = verify_integrity(m, a)
        except EXPECTED:
            continue
        assert result is not None, f"integrity passed for {a.path!r} with a made-up hash"


@SETTINGS
@given(path=st.lists(st.integers(0, 20), min_size=1, max_size=5), value=json_values)
def test_hostile_manifest_fields(box, path, value):
    ex, out, wire = box
    wire.arm()
    _check_manifest(ex, _mutate(GOOD_MANIFEST, path, value))
    assert not wire.read(), "a manifest made the reader open a file outside the folder"


@SETTINGS
@given(where=st.sampled_from(["artifact", "weights", "files"]), p=st.sampled_from(PATHS))
def test_manifest_paths_stay_inside(box, where, p):
    ex, out, wire = box
    wire.arm()
    doc = json.loads(json.dumps(GOOD_MANIFEST))
    p = _paths(ex, out, p)
    if where == "artifact":
        doc["artifacts"][0]["path"] = p
    elif where == "weights":
        doc["weights"]["path"] = p
    else:
        doc["artifacts"][0]["extra"] = {"files": {p: "0" * 64}}
    _check_manifest(ex, doc)
    assert not wire.read()


@SETTINGS
@given(doc=json_values | st.text(max_size=40))
def test_manifest_of_any_shape(box, doc):
    ex, out, wire = box
    _check_manifest(ex, doc if isinstance(doc, str) else {"schema": 1, "card": doc, "artifacts": doc,
                                                          "weights": doc})


# ---------------------------------------------------------------------------------------------
# cards
# ---------------------------------------------------------------------------------------------
def _card_types():
    try:
        from alexnet_deploy.card import ModelCard
    except ImportError:
        from alexnet_deploy.models import ModelCard
    return ModelCard


def _parse_card(text: str):
    ModelCard = _card_types()
    parse = getattr(ModelCard, "from_json", None) or ModelCard.model_validate_json
    return parse(text)


@SETTINGS
@given(path=st.lists(st.integers(0, 20), min_size=1, max_size=3), value=json_values)
def test_hostile_card_fields(path, value):
    doc = _mutate(GOOD_CARD, path, value)
    try:
        card = _parse_card(json.dumps(doc))
    except EXPECTED:
        return
    # accepted: it must be a card a consumer can use
    n = card.num_classes
    assert isinstance(n, int) and 1 <= n <= 10 ** 6 and len(card.classes) == n
    assert card.input.crop >= 1 and card.input.resize >= 1
    assert all(isinstance(c, str) for c in card.classes)


@SETTINGS
@given(text=st.text(max_size=60) | json_values.map(json.dumps))
def test_card_text_of_any_shape(text):
    try:
        _parse_card(text)
    except EXPECTED:
        pass


@SETTINGS
@given(card=st.text(max_size=40) | json_values.map(json.dumps))
def test_card_in_a_tiny_safetensors_file(tmp_path_factory, card):
    """read_card on a tiny safetensors (not an AlexNet): whatever the card, a one-line error."""
    import torch
    from safetensors.torch import save_file

    from alexnet_deploy.models import read_card

    p = tmp_path_factory.mktemp("st") / "tiny.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"card": card, "format": "pt"})
    with pytest.raises(EXPECTED):
        read_card(p)


@SETTINGS
@given(header=st.binary(max_size=64), length=st.integers(0, 1 << 64 - 1))
def test_safetensors_header_bytes(tmp_path_factory, header, length):
    from alexnet_deploy.models import load_weights

    p = tmp_path_factory.mktemp("st") / "h.safetensors"
    p.write_bytes(struct.pack("<Q", length % (1 << 64)) + header)
    with pytest.raises(EXPECTED):
        load_weights(p)


# ---------------------------------------------------------------------------------------------
# image bytes
# ---------------------------------------------------------------------------------------------
def _seed_images() -> list[bytes]:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    out = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("PNG", "I;16"), ("TIFF", "F"),
                      ("BMP", "RGB"), ("WEBP", "RGB")):
        b = io.BytesIO()
        try:
            (img.convert("L").convert(mode) if mode in ("I;16", "F") else img.convert(mode)).save(b, fmt)
        except (OSError, KeyError, ValueError):
            continue
        out.append(b.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def hostile_images(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    how = draw(st.sampled_from(["truncate", "flip", "header", "random", "splice"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif how == "header":  # PNG IHDR width/height or JPEG SOF fields live in the first bytes
        i = draw(st.integers(0, min(40, len(data) - 4)))
        data[i:i + 4] = draw(st.binary(min_size=4, max_size=4))
    elif how == "random":
        data = bytearray(draw(st.binary(max_size=256)))
    else:
        data = data[:16] + draw(st.binary(max_size=64)) + data[16:]
    return bytes(data)


@SETTINGS
@given(data=hostile_images())
def test_hostile_image_bytes(tmp_path_factory, data):
    from alexnet_deploy.data import load_image

    p = tmp_path_factory.mktemp("img") / "x.png"
    p.write_bytes(data)
    try:
        img = load_image(str(p))
    except EXPECTED:
        return
    # decoded: it must be the 8-bit RGB image the transforms expect
    assert img.mode == "RGB" and img.size[0] >= 1 and img.size[1] >= 1
