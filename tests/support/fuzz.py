"""Hypothesis strategies for the wire fuzz tests (tests/gateway/test_fuzz_wire.py): VALID request bodies,
mutated, then (mostly) signed, serialized and sometimes mangled at the byte level.

A drawn :class:`Case` holds everything that makes one request: the base body's name, the mutations applied
to it (in order), how it is signed, how it is serialized and what is done to the bytes afterwards. Its
``repr`` (what hypothesis prints for a failing example) lists them; :meth:`Case.raw` gives the bytes to POST.

Mutations (:func:`mutation`), each at a location drawn from the body as it stands:

* ``replace``: any JSON value (string, int, float, bool, null, list, object; nested) instead of the value;
* ``number``: an extreme or boundary number (1e308, 10**30, -2**63, 2**31, 5e-324, -0.0, 2561, ...);
* ``unicode``: a string of arbitrary Unicode (no lone surrogate: :data:`RAW_OPS` carries those);
* ``envelope``: ``Action`` deleted or replaced (another action, a near miss, any value), or a ``PublicKey``
  of any value, or the other key's, put in the body before signing;
* ``swap``: a string replaced by one the wire gives meaning to (another ModelCode, a mode, an image, ...);
* ``delete``: the field or list element removed, at any level;
* ``add``: a field added to an object, named as a wire field (so an absent field of the request appears)
  or by arbitrary Unicode (an unknown field), with any value;
* ``rename``: an object's key replaced by arbitrary Unicode;
* ``nest``: the value wrapped in 1..40 arrays/objects (the gateway refuses bodies deeper than 32 levels);
* ``grow``: a list emptied, or repeated to 2..12 elements (past ``max_images``, ``MAX_CONTROL_UNITS``, ...);
* ``image``: a base64 image string damaged (non-ASCII inside the data or the data-URL prefix, cut, foreign
  bytes, another format, a header claiming 30000x30000 pixels, URL-safe alphabet, line breaks).

Then the body is signed (by the independent signer of tests/support/signer.py) as ``pk-alice`` or
``pk-bob``, or not (no ``Signature``/``PublicKey``, a wrong signature, another key's secret); serialized by
the standard library (ASCII-escaped or raw UTF-8); and its bytes cut at a random point, spiked with bytes
that are not UTF-8, given a lone surrogate (``"\\ud800"`` escaped, or its CESU bytes), reduced to its envelope
plus an array nested 33..5000 levels deep, or left alone (most often).
"""
from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from support.api import KEYS, PUB, example_inputs, png_b64
from support.signer import picpik_signature

Path = tuple[Any, ...]  # keys and list indexes from the body's top level
ENVELOPE = ("Action", "PublicKey")
"""Top-level fields a mutation may not touch for the body to count as properly signed (a ``Signature`` in
the body is overwritten by the signing)."""

# --- the valid bases ----------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


_MAN, _MASK = example_inputs()  # 64x80
MAN, MASK = png_b64(_MAN), png_b64(_MASK)
BACKGROUND = _encoded(Image.new("RGB", (64, 80), (30, 90, 160)), "JPEG")
IMAGES = (MAN, MASK, BACKGROUND)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


_CONTROL_UNIT = {
    "ImageIndex": 0,
    "PreProcessor": {"ModelCode": "canny", "InferenceParams": {"Resolution": 64}},
    "ControlModel": {"ModelCode": "demo-controlnet",
                     "InferenceParams": {"ControlWeight": 0.8, "StartingStep": 0, "EndingStep": 1}},
}


def _generate_minimal() -> dict:
    return {
        "Action": "GenerateFromMannequin",
        "MainModel": {"ModelCode": "demo-inpaint"},
        "PositivePrompts": ["a woman", "studio photo"],
        "ImageAndMaskList": [MAN, MASK],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
        "Width": 64, "Height": 64, "Seed": 1234,
    }


def _generate_full() -> dict:
    """Every field of GenerateFromMannequin, with the ImageAndMaskList style and ControlNetList."""
    return {
        "Action": "GenerateFromMannequin",
        "MainModel": {"Name": "Demo", "ModelCode": "demo-inpaint", "IsOfficial": True,
                      "TriggerWordList": ["fashion"], "InferenceParams": {}},
        "SubModelList": [{"ModelCode": "demo-lora", "InferenceParams": {"LoraWeight": 0.7}},
                         {"ModelCode": "demo-embedding"}],
        "PositivePrompts": ["a woman", "studio photo"],
        "NegativePrompts": ["blurry"],
        "TranslatePrompts": False,
        "Seed": 7, "Width": 64, "Height": 128, "BatchSize": 2,
        "UseMainModelVAE": True,
        "ImageAndMaskList": [MAN, MASK, BACKGROUND],
        "Image2Image": {"ImageIndex": 2, "ReferStrength": 0.3, "ResizeMode": "JustResize"},
        "Mannequin": {"ImageIndex": 0, "ResizeMode": "CropAndResize", "ClothesMaskIndex": 1, "InvertMask": False},
        "ControlNetList": [_CONTROL_UNIT],
    }


def _generate_pair() -> dict:
    """The ImageList + MaskList style, no MainModel (the default one), the older ControlNet spelling."""
    return {
        "Action": "GenerateFromMannequin",
        "PositivePrompts": ["una mujer"],
        "TranslatePrompts": True,
        "Seed": -1, "Width": 128, "Height": 64,
        "ImageList": [MAN, BACKGROUND],
        "MaskList": [MASK],
        "Image2Image": {"ImageIndex": 1, "ReferStrength": 1},
        "Mannequin": {"ImageIndex": 0, "ResizeMode": "ResizeAndFill", "ClothesMaskIndex": 0, "InvertMask": True},
        "ControlNet": [{"ImageIndex": 1, "ControlModel": {"ModelCode": "demo-controlnet"}}],
    }


def _generate_no_control() -> dict:
    return {**_generate_minimal(), "ControlNetList": [], "SubModelList": [
        {"ModelCode": "demo-hypernetwork", "InferenceParams": {"LoraWeight": -1}}]}


GENERATE_BASES: dict[str, Callable[[], dict]] = {
    "generate-minimal": _generate_minimal,
    "generate-full": _generate_full,
    "generate-pair": _generate_pair,
    "generate-no-control": _generate_no_control,
}
"""Valid GenerateFromMannequin bodies (unsigned), each RetCode 0 as it stands."""

_CUTOUT = Image.new("RGBA", (48, 64), (0, 0, 0, 0))
_CUTOUT.paste((200, 40, 60, 255), (12, 16, 36, 48))
CUTOUT = png_b64(_CUTOUT)

def _full_without(*names: str, **fields: Any) -> dict:
    """:func:`_generate_full` without ``names``, with ``fields``."""
    return {**{k: v for k, v in _generate_full().items() if k not in names}, **fields}


SCENE_BASES: dict[str, Callable[[], dict]] = {
    "backgrounds-minimal": lambda: {"Action": "GenerateBackgrounds", "ImageList": [CUTOUT],
                                    "TransparentForeground": {"ImageIndex": 0}, "Width": 64, "Height": 64},
    "backgrounds-full": lambda: _full_without(
        "ImageAndMaskList", "Mannequin", "Image2Image", Action="GenerateBackgrounds", ImageList=[CUTOUT, BACKGROUND],
        BackgroundImage2Image={"ImageIndex": 1, "ReferStrength": 0.4, "ResizeMode": "CropAndResize"},
        TransparentForeground={"ImageIndex": 0, "ResizeMode": "ResizeAndFill"}, Priority=3, Refine={"Strength": 0.3}),
    "modify-minimal": lambda: {"Action": "ModifyMaskedPixels", "MainModel": {"ModelCode": "demo-inpaint"},
                               "ImageAndMaskList": [MAN, MASK], "Masked": {"ImageIndex": 0, "MaskIndex": 1},
                               "Width": 64, "Height": 64},
    "modify-full": lambda: _full_without(
        "Mannequin", Action="ModifyMaskedPixels", Image2Image={"ImageIndex": 0, "ReferStrength": 0.6},
        Masked={"ImageIndex": 0, "MaskIndex": 1, "InvertMask": True, "MaskBlur": 64, "ResizeMode": "ResizeAndFill"},
        Width=128, Height=80, FaceRefine={"Strength": 0.2}, Priority=0),
}
"""Valid GenerateBackgrounds and ModifyMaskedPixels bodies (unsigned), each RetCode 0 as it stands."""

LIST_BASES: dict[str, Callable[[], dict]] = {
    "list-tasks": lambda: {"Action": "ListTasksDetails", "TaskUIDList": ["no-such-task", "x" * 21]},
    "list-models": lambda: {"Action": "ListModels"},
    "list-controlnets": lambda: {"Action": "ListControlNets"},
    "list-running": lambda: {"Action": "ListRunningTasks"},
}
"""Valid bodies of the listing actions (``list-tasks`` is given real TaskUIDs too: :func:`cases`)."""


ERASE_DESCRIBE_BASES: dict[str, Callable[[], dict]] = {
    "erase-minimal": lambda: {"Action": "RemoveContents", "RawImage": MAN, "Mask": MASK},
    "erase-full": lambda: {"Action": "RemoveContents", "RawImage": MAN, "Mask": MASK, "InvertMask": True,
                           "MaskBlur": 64, "Eraser": "demo-eraser", "Priority": 9},
    "erase-inpaint": lambda: {"Action": "RemoveContents", "RawImage": BACKGROUND, "Mask": MASK, "MaskBlur": 0,
                              "MainModel": {"ModelCode": "demo-inpaint"}},
    "describe-minimal": lambda: {"Action": "DescribeImages", "ImageList": [MAN]},
    "describe-full": lambda: {"Action": "DescribeImages", "ImageList": [MAN, BACKGROUND, MASK],
                              "TranslateDescription": "fr", "Describer": "demo-describer", "Priority": 0},
}
"""Valid RemoveContents and DescribeImages bodies (unsigned), each RetCode 0 as it stands."""


def base_body(name: str, task_uids: tuple[str, ...] = ()) -> dict:
    """A fresh copy of the base body ``name``; ``task_uids`` join ``list-tasks``' TaskUIDList."""
    bases = {**GENERATE_BASES, **SCENE_BASES, **LIST_BASES, **ERASE_DESCRIBE_BASES, **IMAGES_BASES}
    body = copy.deepcopy(bases[name]())
    if name == "list-tasks":
        body["TaskUIDList"] = [*task_uids, *body["TaskUIDList"]]
    return body


# --- values -------------------------------------------------------------------------------------------

WIRE_FIELDS = (
    "Action", "PublicKey", "Signature", "request_uuid", "MainModel", "SubModelList", "PositivePrompts",
    "NegativePrompts", "TranslatePrompts", "Seed", "Width", "Height", "BatchSize", "UseMainModelVAE",
    "Image2Image", "Mannequin", "ImageAndMaskList", "ImageList", "MaskList", "ControlNet", "ControlNetList",
    "ImageIndex", "ReferStrength", "ResizeMode", "ClothesMaskIndex", "InvertMask", "ModelCode", "Name",
    "IsOfficial", "TriggerWordList", "InferenceParams", "LoraWeight", "PreProcessor", "ControlModel",
    "Resolution", "ControlWeight", "StartingStep", "EndingStep", "TaskUIDList",
    "TransparentForeground", "BackgroundImage2Image", "Masked", "MaskIndex", "MaskBlur",
    "Tileable",
)
"""Field names of the wire, at any level: ``add`` uses them, so absent fields appear in odd places."""

EXTREME_NUMBERS = (
    1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324, 10**30, -10**30, -2**63, 2**63 - 1, 2**64 - 1,
    2**31, 2**31 - 1, -2**31, 2**53 + 1, 1e16, 1e-7, -0.0, 0, 0.0, -1, -2, 1, 2.0, 0.5, 1.0000001, 2.5, 3,
    16, 17, 63, 64, 65, 2048, 2560, 2561, 4096, 1e21, 0.1, 1.5, -0.5,
)
"""Boundaries of every range of the wire, and numbers at the edges of what JSON parsers hold."""

WIRE_STRINGS = (
    "demo-inpaint", "demo-inpaint-posed", "demo-lora", "demo-embedding", "demo-hypernetwork", "canny",
    "demo-openpose", "demo-controlnet", "broken", "corrupt-lora", "JustResize", "CropAndResize",
    "ResizeAndFill", "GenerateFromMannequin", "ListTasksDetails", "", " ", "0", "1", "true", "null",
    "data:image/png;base64,", MAN, MASK, BACKGROUND,
)
"""Strings the wire gives meaning to (model codes, modes, actions, images), to be dropped anywhere."""

_integers = st.one_of(st.integers(-2**63, 2**64 - 1), st.integers(-3, 70))
_floats = st.floats(allow_nan=False, allow_infinity=False)
_text = st.text(max_size=20)  # every code point but lone surrogates
_keys = st.one_of(st.sampled_from(WIRE_FIELDS), _text)
_scalars = st.one_of(
    st.none(), st.booleans(), _integers, _floats, st.sampled_from(EXTREME_NUMBERS), _text,
    st.sampled_from(WIRE_STRINGS),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)
"""Any JSON value: scalars of every type, the wire's own strings and numbers, arrays and objects."""


# --- images -------------------------------------------------------------------------------------------

_NON_ASCII = ("é", "\u00a0", "\u2028", "\u200b", "\ufeff", "ß", "€", "😀", "\U0010ffff", "ｱ", "\x80", "Ａ")


@st.composite
def damaged_image(draw, value: str) -> str:
    """``value`` (a base64 image, or any string) damaged in one of the ways clients and attackers do."""
    how = draw(st.sampled_from(("non-ascii", "non-ascii-prefix", "cut", "foreign-bytes", "other-format",
                                "bomb-header", "urlsafe", "line-breaks", "data-url", "bad-data-url",
                                "truncated-file", "flipped-byte")))
    pos = draw(st.integers(0, len(value)))
    if how == "non-ascii":
        return value[:pos] + draw(st.sampled_from(_NON_ASCII) | st.characters(min_codepoint=0x80,
                                                                              exclude_categories=["Cs"])) + value[pos:]
    if how == "non-ascii-prefix":
        media = draw(st.sampled_from(("image/pngé", "ｉmage/png", "image/png;name=ü", "😀")))
        return f"data:{media};base64,{value}"
    if how == "cut":
        return value[:pos]
    if how == "foreign-bytes":
        return base64.b64encode(draw(st.binary(max_size=64))).decode()
    if how == "other-format":
        fmt = draw(st.sampled_from(("GIF", "TIFF", "ICO", "BMP", "WEBP", "JPEG", "PNG")))
        mode = draw(st.sampled_from(("RGB", "L", "RGBA", "1", "P")))
        image = Image.new(mode, (draw(st.integers(1, 80)), draw(st.integers(1, 80))))
        try:
            return _encoded(image, fmt)
        except OSError:  # a mode the format cannot write
            return _encoded(image.convert("RGB"), fmt)
    if how == "bomb-header":
        return base64.b64encode(_png_header_only(draw(st.sampled_from((30000, 0, 1, 2**31 - 1))),
                                                 draw(st.sampled_from((30000, 0, 1, 2**31 - 1))))).decode()
    if how == "urlsafe":
        return value.replace("+", "-").replace("/", "_").rstrip("=")
    if how == "line-breaks":
        return "\n".join(value[i:i + 76] for i in range(0, len(value), 76)) + draw(st.sampled_from(("", "\r\n", " ")))
    if how == "data-url":
        return draw(st.sampled_from(("data:image/png;base64,", "DATA:image/jpeg;charset=x;base64,",
                                     "data:;base64,", " data:image/png;base64,\n"))) + value
    if how == "bad-data-url":
        return draw(st.sampled_from(("data:image/png,", "data:image/png;base64", "data:", "data:,;base64,",
                                     "data:image/png;base64;base64,"))) + value
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value[:pos]
    if how == "truncated-file":
        return base64.b64encode(data[:draw(st.integers(0, max(len(data) - 1, 0)))]).decode()
    if not data:
        return value
    flipped = bytearray(data)  # "flipped-byte"
    flipped[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return base64.b64encode(bytes(flipped)).decode()


# --- mutations ----------------------------------------------------------------------------------------


def locations(value: Any, path: Path = ()) -> list[Path]:
    """Every location in ``value``, outermost first (``()`` is the body itself)."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += locations(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += locations(item, (*path, i))
    return out


def _is_envelope(path: Path) -> bool:
    return path[:1] in [(name,) for name in ENVELOPE]


def _get(body: Any, path: Path) -> Any:
    for step in path:
        body = body[step]
    return body


def _set(body: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    _get(body, path[:-1])[path[-1]] = value
    return body


@dataclass
class Mutation:
    kind: str
    path: Path
    detail: Any = None

    def __repr__(self) -> str:
        shown = repr(self.detail)
        return f"{self.kind}@{'/'.join(map(str, self.path)) or '<body>'}" + (
            f"({shown[:120]}{'...' if len(shown) > 120 else ''})" if self.detail is not None else "")


def _apply(body: Any, m: Mutation) -> Any:
    if m.kind == "delete":
        del _get(body, m.path[:-1])[m.path[-1]]
        return body
    if m.kind == "add":
        key, value = m.detail
        _get(body, m.path)[key] = value
        return body
    if m.kind == "rename":
        old, new = m.path[-1], m.detail
        parent = _get(body, m.path[:-1])
        items = [(new if k == old else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
        return body
    if m.kind == "grow":
        value = _get(body, m.path)
        return _set(body, m.path, [copy.deepcopy(value[i % len(value)]) for i in range(m.detail)])
    if m.kind == "nest":
        value = _get(body, m.path)
        for wrapper in m.detail:
            value = [value] if wrapper == "[" else {wrapper: value}
        return _set(body, m.path, value)
    return _set(body, m.path, m.detail)  # replace, number, unicode, image, swap


ACTION_VALUES = ("GenerateFromMannequin", "GenerateBackgrounds", "ModifyMaskedPixels", "ListTasksDetails",
                 "ListModels", "ListControlNets", "GenerateImages",
                 "ListRunningTasks", "listmodels", "ListModels ", "StartPicpikApp", "")


@st.composite
def mutation(draw, body: Any) -> Mutation:
    """One mutation of ``body`` (see the module docstring), at a location drawn from it.

    The envelope (``Action``, ``PublicKey``) is changed by its own kind, ``envelope``, one draw in 15:
    hypothesis favours the first elements of what it samples, and a broken ``Action`` stops a request before
    validation."""
    spots = [p for p in locations(body) if not _is_envelope(p)]
    kind = draw(st.sampled_from(("replace", "replace", "number", "unicode", "delete", "delete", "add", "add",
                                 "rename", "nest", "grow", "image", "image", "swap", "envelope")))
    if kind == "envelope" and isinstance(body, dict) and "Action" in body:
        how = draw(st.sampled_from(("action", "action", "delete", "replace", "public-key")))
        if how == "delete":
            return Mutation("delete", ("Action",))
        if how == "public-key":
            return Mutation("add", (), ("PublicKey", draw(json_values | st.sampled_from(tuple(PUB.values())))))
        return Mutation("replace", ("Action",),
                        draw(st.sampled_from(ACTION_VALUES) if how == "action" else json_values))
    images = [p for p in spots if isinstance(_get(body, p), str) and len(_get(body, p)) > 200]
    if kind == "swap":
        strings = [p for p in spots if isinstance(_get(body, p), str)]
        if strings:
            return Mutation(kind, draw(st.sampled_from(strings)), draw(st.sampled_from(WIRE_STRINGS)))
    if kind == "image" and images:
        path = draw(st.sampled_from(images))
        return Mutation(kind, path, draw(damaged_image(_get(body, path))))
    if kind in ("delete", "rename"):
        keyed = [p for p in spots if p and (kind == "delete" or isinstance(p[-1], str))]
        if keyed:
            path = draw(st.sampled_from(keyed))
            return Mutation(kind, path, draw(_text) if kind == "rename" else None)
    inner = [p for p in spots if p]
    if kind in ("add", "envelope") or not inner:  # (a body of its envelope alone can only grow)
        objects = [p for p in spots if isinstance(_get(body, p), dict)]
        return Mutation("add", draw(st.sampled_from(objects)), (draw(_keys), draw(json_values)))
    if kind == "grow":
        lists = [p for p in spots if isinstance(_get(body, p), list) and _get(body, p)]
        if lists:
            return Mutation(kind, draw(st.sampled_from(lists)), draw(st.sampled_from((0, 2, 3, 4, 5, 9, 12))))
    path = draw(st.sampled_from(inner))
    if kind == "nest":
        depth = draw(st.sampled_from((1, 2, 3, 5, 31, 32, 40)))
        return Mutation(kind, path, draw(st.lists(st.sampled_from(("[", "a", "ImageIndex", "é")),
                                                  min_size=depth, max_size=depth)))
    if kind == "number":
        return Mutation(kind, path, draw(st.sampled_from(EXTREME_NUMBERS)))
    if kind == "unicode":
        return Mutation(kind, path, draw(st.text(min_size=1, max_size=30)))
    return Mutation("replace", path, draw(json_values))


# --- signing, serializing, bytes ----------------------------------------------------------------------

SIGNINGS = ("pk-alice",) * 5 + ("pk-bob",) * 2 + ("unsigned", "bad-signature", "other-secret")
"""How a mutated body is signed: mostly properly (so it reaches validation), else not."""
RAW_OPS = ("none",) * 8 + ("truncate", "not-utf8", "surrogate-escaped", "surrogate-bytes", "deep-array")
"""What is done to the serialized bytes: mostly nothing."""
_NOT_UTF8 = (b"\xff", b"\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82")
_SURROGATES = ("\ud800", "\udfff", "a\udc00b", "\udfff\ud800", "\ud83d")


def _with_surrogate(body: Any, spot: int, surrogate: str) -> Any:
    """A copy of ``body`` with ``surrogate`` in one of its strings or object keys (the ``spot``-th, in
    :func:`locations` order, keys and string values counted alike)."""
    body = copy.deepcopy(body)
    spots = [(p, "key") for p in locations(body) if p and isinstance(p[-1], str)]
    spots += [(p, "value") for p in locations(body) if isinstance(_get(body, p), str)]
    if not spots:
        return [surrogate]
    path, what = spots[spot % len(spots)]
    if what == "value":
        text = _get(body, path)
        cut = spot % (len(text) + 1)
        return _set(body, path, text[:cut] + surrogate + text[cut:])
    return _apply(body, Mutation("rename", path, path[-1] + surrogate))


@dataclass
class Case:
    """One request: a base body, its mutations, its signing, its serialization, its bytes' fate."""

    base: str
    mutations: list[Mutation]
    signing: str
    ascii_json: bool
    raw_op: str
    raw_arg: Any = None
    body: Any = field(default=None, repr=False)  # the body as signed (before the byte-level op)

    def signed_cleanly(self) -> bool:
        """Signed properly and sent as is, the envelope untouched: the gateway must get past the
        signature check (to a RetCode other than 170, 171, 172)."""
        def touches(m: Mutation) -> bool:
            top = _is_envelope(m.path)
            added = m.kind == "add" and m.path == () and m.detail[0] in ENVELOPE
            renamed = m.kind == "rename" and len(m.path) == 1 and m.detail in ENVELOPE
            return top or added or renamed
        return self.signing in KEYS and self.raw_op == "none" and not any(map(touches, self.mutations))

    def raw(self) -> bytes:
        """The bytes to POST."""
        op, arg = self.raw_op, self.raw_arg
        body = _with_surrogate(self.body, *arg) if op.startswith("surrogate") else self.body
        # a lone surrogate: escaped ("\ud800") or as its CESU-8 bytes (not UTF-8)
        ascii_json = {"surrogate-escaped": True, "surrogate-bytes": False}.get(op, self.ascii_json)
        data = json.dumps(body, ensure_ascii=ascii_json).encode("utf-8", "surrogatepass")
        if op == "truncate":
            return data[:arg % max(len(data), 1)]
        if op == "not-utf8":
            pos, junk = arg
            pos %= len(data) + 1
            return data[:pos] + junk + data[pos:]
        if op == "deep-array":
            head = json.dumps({k: v for k, v in self.body.items() if k in ("Action", "PublicKey", "Signature")}
                              if isinstance(self.body, dict) else {})
            nested = b"[" * arg + b"]" * arg
            return head[:-1].encode() + (b", " if head != "{}" else b"") + b'"Deep": ' + nested + b"}"
        return data


def sign_as(body: Any, signing: str) -> Any:
    """``body`` signed per ``signing`` (one of :data:`SIGNINGS`)."""
    if not isinstance(body, dict):
        return body
    key = signing if signing in KEYS else "pk-alice"
    body = {"PublicKey": PUB[key], **body}
    if signing in KEYS:
        body["Signature"] = picpik_signature(body, KEYS[signing])
    elif signing == "bad-signature":
        body["Signature"] = "0" * 40
    elif signing == "other-secret":
        body["Signature"] = picpik_signature(body, KEYS["pk-bob"])
    else:  # unsigned: no PublicKey, no Signature
        body.pop("PublicKey")
        body.pop("Signature", None)
    return body


@st.composite
def cases(draw, bases: tuple[str, ...], *, task_uids: tuple[str, ...] = (), max_mutations: int = 3,
          raw_ops: tuple[str, ...] = RAW_OPS) -> Case:
    """A :class:`Case` built on one of ``bases`` (names in GENERATE_BASES / LIST_BASES); ``task_uids``
    join the TaskUIDList of ``list-tasks``."""
    base = draw(st.sampled_from(bases))
    body: Any = base_body(base, task_uids)
    applied = []
    for _ in range(draw(st.integers(0, max_mutations))):
        m = draw(mutation(body))
        body = _apply(body, m)
        applied.append(m)
    signing = draw(st.sampled_from(SIGNINGS))
    raw_op = draw(st.sampled_from(raw_ops))
    arg: Any = None
    if raw_op == "truncate":
        arg = draw(st.integers(0, 2**20))
    elif raw_op == "not-utf8":
        arg = (draw(st.integers(0, 2**20)), draw(st.sampled_from(_NOT_UTF8)))
    elif raw_op.startswith("surrogate"):
        arg = (draw(st.integers(0, 2**20)), draw(st.sampled_from(_SURROGATES)))
    elif raw_op == "deep-array":
        arg = draw(st.sampled_from((1023, 1024, 1000, 1025, 500, 5000, 33, 200)))  # orjson stops at 1024
    return Case(base, applied, signing, draw(st.booleans()), raw_op, arg, body=sign_as(body, signing))


# --- GenerateImages (issue 27) ----------------------------------------------------------------------------------

IMAGES_BASES: dict[str, Callable[[], dict]] = {
    "images-minimal": lambda: {"Action": "GenerateImages", "PositivePrompts": ["a linen texture"], "Width": 64,
                               "Height": 64},
    "images-full": lambda: _full_without(
        "Mannequin", Action="GenerateImages", Image2Image={"ImageIndex": 2, "ReferStrength": 0.6,
                                                          "ResizeMode": "JustResize"},
        Tileable=True, Width=128, Height=64, Priority=4, FaceRefine={"Enabled": False}),
    "images-pair": lambda: {"Action": "GenerateImages", "MainModel": {"ModelCode": "demo-sd15"},
                            "ImageList": [BACKGROUND], "Image2Image": {"ImageIndex": 0},
                            "ControlNet": [{"ControlModel": {"ModelCode": "demo-controlnet"}}], "Seed": 3,
                            "Width": 96, "Height": 64, "Tileable": False},
}
"""Valid GenerateImages bodies (unsigned), each RetCode 0 as it stands."""
