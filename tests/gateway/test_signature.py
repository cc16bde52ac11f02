"""PICPIK signature: the published check values, each encoding rule, the SDK float spellings that
verification also accepts, and a cross-check against an independent implementation written
differently (iterative, string-based float expansion)."""
from __future__ import annotations

import hashlib
import random

import orjson
import pytest

import app.signature as signature
from app.signature import (
    SDK_FLOAT_SPELLINGS,
    encode_value,
    go_sdk_float,
    javascript_sdk_float,
    published_float,
    python_sdk_float,
    sign,
    signing_string,
    verify,
)
from support.signer import SPELLINGS, picpik_signature, signing_text, spell_float

KEY = "123456"


def test_published_check_value():
    params = {"Action": "ListModels", "PublicKey": "abcdefg"}
    assert signing_string(params, KEY) == "ActionListModelsPublicKeyabcdefg123456"
    assert sign(params, KEY) == "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"


def test_published_platform_api_check_value():
    params = {"Action": "StartPicpikApp", "PublicKey": "abcdefg", "AppId": "your_app_id"}
    assert signing_string(params, KEY) == "ActionStartPicpikAppAppIdyour_app_idPublicKeyabcdefg123456"
    assert sign(params, KEY) == "c5e65ad1936ff695436917bf807d2281db33e7a3"


def test_derived_check_values_of_picpik_facts():
    generate = {
        "Action": "GenerateFromMannequin", "PublicKey": "abcdefg", "BatchSize": 2,
        "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.3, "ResizeMode": "ResizeAndFill"},
        "ImageAndMaskList": ["data:image/jpeg;base64,xxxx", "data:image/jpeg;base64,xxxx"],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1}, "NegativePrompts": [],
        "PositivePrompts": ["girl", "smile"], "TranslatePrompts": True,
        "request_uuid": "d893b720-15a5-4f60-8c37-c87343079ca5",
    }
    assert sign(generate, KEY) == "e4852b7e78dcf09c227bb2e9962a07246acdc33d"
    whole_floats = {"Action": "GenerateImages", "PublicKey": "abcdefg", "Seed": -1, "UseMainModelVAE": False,
                    "MainModel": {"ModelCode": "m1", "InferenceParams": {"LoraWeight": 1.0}}, "Width": 1024.0}
    assert sign(whole_floats, KEY) == "8086af2490a791dfc70569961d82da0b404c4501"
    for body in (generate, whole_floats):  # their floats are spelled alike by every signer
        assert verify({**body, "Signature": sign(body, KEY)}, KEY)


def test_signature_field_is_excluded_and_request_uuid_included():
    params = {"Action": "ListModels", "PublicKey": "abcdefg", "Signature": "whatever", "request_uuid": "u-1"}
    assert signing_string(params, KEY) == "ActionListModelsPublicKeyabcdefgrequest_uuidu-1123456"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-1, "-1"),
        (2147483647, "2147483647"),
        (1.0, "1"),
        (2048.0, "2048"),
        (-3.0, "-3"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (-0.5, "-0.5"),
        (0.3, "0.3"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-7, "0.0000001"),
        (-2.5e-5, "-0.000025"),
        (1e20, "100000000000000000000"),
        (1.5e21, "1500000000000000000000"),
        (1e23, "100000000000000000000000"),
        (123456789.125, "123456789.125"),
        ("girl, smile", "girl, smile"),
        ('quotes " and \\ stay', 'quotes " and \\ stay'),
        ("", ""),
        (None, ""),
        ([], ""),
        ({}, ""),
        ([1, "a", True, None, 0.5], "1atrue0.5"),
    ],
)
def test_encode_value_rules(value, encoded):
    assert encode_value(value) == encoded


def test_floats_as_orjson_parses_them():
    body = orjson.loads(b'{"A": 1.0, "B": 1, "C": 1e-7, "D": 2.50, "E": 1E3}')
    assert signing_string(body, "") == "A1B1C0.0000001D2.5E1000"


def test_nested_objects_are_sorted_recursively():
    params = {
        "PublicKey": "k",
        "B": {"b": 1, "a": [1, {"z": True, "y": None}]},
        "Action": "X",
    }
    assert signing_string(params, "pk") == "ActionXBa1yztrueb1PublicKeykpk"


def test_array_of_objects_concatenates_without_index():
    params = {"SubModelList": [{"ModelCode": "m1", "InferenceParams": {"LoraWeight": 0.8}}, {"ModelCode": "m2"}]}
    assert signing_string(params, "") == "SubModelListInferenceParamsLoraWeight0.8ModelCodem1ModelCodem2"


def test_null_keeps_the_key():
    assert signing_string({"B": "x", "A": None}, "k") == "ABxk"
    assert sign({"A": None}, "k") != sign({}, "k")


def test_sort_is_bytewise_uppercase_first():
    params = {"request_uuid": "u", "Zeta": 1, "Action": "A", "action": "b", "_x": 2}
    # bytes: 'A' 0x41 < 'Z' 0x5a < '_' 0x5f < 'a' 0x61 < 'r' 0x72
    assert signing_string(params, "") == "ActionAZeta1_x2actionbrequest_uuidu"


def test_sort_is_by_utf8_bytes_not_utf16_units():
    # U+FF41 (EF BD 81 in UTF-8) sorts before U+1F600 (F0 9F 98 80); in UTF-16 order (a JavaScript
    # default sort) the surrogate pair D83D... would come first.
    params = {"\U0001F600": "1", "\uFF41": "2", "\u00e9": "3", "z": "4"}
    assert signing_string(params, "") == "z4\u00e93\uFF412\U0001F6001"


def test_unicode_is_hashed_as_utf8():
    params = {"PositivePrompts": ["女孩", "café"], "Action": "GenerateFromMannequin"}
    text = "ActionGenerateFromMannequinPositivePrompts女孩café" + KEY
    assert signing_string(params, KEY) == text
    assert sign(params, KEY) == hashlib.sha1(text.encode("utf-8")).hexdigest()
    assert sign(params, KEY) != hashlib.sha1(text.encode("utf-16-le")).hexdigest()


def test_unsignable_values_are_refused():
    with pytest.raises(TypeError):
        encode_value(b"bytes")
    with pytest.raises(TypeError):
        encode_value({1: "non-string key"})
    with pytest.raises(ValueError):
        encode_value(float("nan"))
    with pytest.raises(ValueError):
        encode_value([float("inf")])


# --- verify ------------------------------------------------------------------------------------


def _signed(params: dict, key: str = KEY) -> dict:
    return {**params, "Signature": sign(params, key)}


BODY = {
    "Action": "GenerateFromMannequin",
    "PublicKey": "abcdefg",
    "request_uuid": "d893b720-15a5-4f60-8c37-c87343079ca5",
    "BatchSize": 2,
    "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.3},
    "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
    "PositivePrompts": ["girl", "smile"],
    "NegativePrompts": [],
    "TranslatePrompts": True,
}


def test_verify_accepts_a_correct_signature_in_either_case():
    body = _signed(BODY)
    assert verify(body, KEY)
    assert verify({**body, "Signature": body["Signature"].upper()}, KEY)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.update(BatchSize=3),
        lambda b: b.update(Image2Image={"ImageIndex": 0, "ReferStrength": 0.31}),
        lambda b: b.update(TranslatePrompts=False),
        lambda b: b.update(request_uuid="other"),
        lambda b: b.update(Extra=None),
        lambda b: b.pop("NegativePrompts"),
    ],
)
def test_verify_rejects_a_tampered_body(tamper):
    body = _signed(BODY)
    tamper(body)
    assert not verify(body, KEY)


def test_verify_rejects_a_wrong_key():
    assert not verify(_signed(BODY), "654321")


@pytest.mark.parametrize("signature", [None, 123, ["x"], "", "not-hex", "4a20bc1141494035f6aaaad13224c94c5a8bc3a"])
def test_verify_rejects_missing_or_malformed_signature(signature):
    body = dict(BODY)
    if signature is not None:
        body["Signature"] = signature
    assert not verify(body, KEY)


def test_verify_is_false_not_an_exception_for_unsignable_bodies():
    assert not verify({"A": float("nan"), "Signature": "0" * 40}, KEY)
    assert not verify({"A": "\ud800", "Signature": "0" * 40}, KEY)
    assert not verify({"A": "x", "Signature": "é" * 40}, KEY)


# --- cross-check against an independent implementation -----------------------------------------


def _reference_float(x: float) -> str:
    """Expand repr(x) to positional notation by string manipulation (no Decimal)."""
    text = repr(x)
    negative = text.startswith("-")
    text = text.lstrip("-")
    mantissa, _, exponent = text.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part) + int(exponent or 0)
    if point <= 0:
        out = "0." + "0" * -point + digits
    elif point >= len(digits):
        out = digits + "0" * (point - len(digits))
    else:
        out = digits[:point] + "." + digits[point:]
    if "." in out:
        out = out.rstrip("0").rstrip(".")
    out = out.lstrip("0") or "0"
    if out.startswith("."):
        out = "0" + out
    return "-" + out if negative and out != "0" else out


def _reference_signature(params: dict, key: str) -> str:
    """Iterative walk with an explicit stack; sorting on encoded bytes."""
    out: list[str] = []
    top = sorted((k for k in params if k != "Signature"), key=lambda k: k.encode())
    stack: list[tuple[str, object]] = []  # popped from the end: push in reverse order
    for k in reversed(top):
        stack.append(("val", params[k]))
        stack.append(("lit", k))
    while stack:
        kind, item = stack.pop()
        if kind == "lit":
            out.append(item)  # type: ignore[arg-type]
        elif item is None:
            continue
        elif item is True or item is False:
            out.append(str(item).lower())
        elif isinstance(item, int):
            out.append(str(item))
        elif isinstance(item, float):
            out.append(_reference_float(item))
        elif isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(("val", element) for element in reversed(item))
        else:
            assert isinstance(item, dict)
            for name in sorted(item, key=lambda k: k.encode(), reverse=True):
                stack.append(("val", item[name]))
                stack.append(("lit", name))
    return hashlib.sha1(("".join(out) + key).encode()).hexdigest()


_KEY_CHARS = "AaZz_09é女😀ｂ"


def _random_key(rng: random.Random) -> str:
    return "".join(rng.choice(_KEY_CHARS) for _ in range(rng.randint(1, 6)))


def _random_value(rng: random.Random, depth: int):
    kinds = ["int", "float", "whole", "tiny", "huge", "bool", "null", "str"]
    if depth < 3:
        kinds += ["list", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(2**40), 2**40)
    if kind == "float":
        return rng.uniform(-10, 10)
    if kind == "whole":
        return float(rng.randint(-5000, 5000))
    if kind == "tiny":
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, -5)
    if kind == "huge":
        return rng.uniform(-1, 1) * 10.0 ** rng.randint(16, 30)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "str":
        return "".join(rng.choice("abc XYZ,.:é女\n\"") for _ in range(rng.randint(0, 8)))
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_reference_float_expansion_matches_known_values():
    # guards the cross-check itself
    assert _reference_float(1e-7) == "0.0000001"
    assert _reference_float(1e23) == "100000000000000000000000"
    assert _reference_float(-0.0) == "0"
    assert _reference_float(0.3) == "0.3"
    assert _reference_float(2.0) == "2"


@pytest.mark.parametrize("seed", range(25))
def test_matches_an_independent_implementation_on_random_bodies(seed):
    rng = random.Random(seed)
    body = {_random_key(rng): _random_value(rng, 0) for _ in range(rng.randint(1, 8))}
    body = orjson.loads(orjson.dumps(body))  # as the gateway would see it
    assert sign(body, "secret") == _reference_signature(body, "secret")
    assert verify({**body, "Signature": _reference_signature(body, "secret")}, "secret")


# --- the SDK float spellings -------------------------------------------------------------------

# value -> (published, Python SDK, Go SDK, JavaScript SDK)
SPELLING_TABLE = [
    (0.3, "0.3", "0.3", "0.3", "0.3"),
    (-0.5, "-0.5", "-0.5", "-0.5", "-0.5"),
    (100.0, "100", "100", "100", "100"),
    (-0.0, "0", "0", "0", "0"),
    (1e-4, "0.0001", "0.0001", "0.0001", "0.0001"),
    (1e-05, "0.00001", "1e-05", "1e-05", "0.00001"),
    (1.5e-06, "0.0000015", "1.5e-06", "1.5e-06", "0.0000015"),
    (1e-7, "0.0000001", "1e-07", "1e-07", "1e-7"),
    (-2.5e-10, "-0.00000000025", "-2.5e-10", "-2.5e-10", "-2.5e-10"),
    (1e-100, "0." + "0" * 99 + "1", "1e-100", "1e-100", "1e-100"),
    (999999.5, "999999.5", "999999.5", "999999.5", "999999.5"),
    (1234567.5, "1234567.5", "1234567.5", "1.2345675e+06", "1234567.5"),
    (1e16, "10000000000000000", "10000000000000000", "10000000000000000", "10000000000000000"),
    (1e20, "100000000000000000000", "100000000000000000000", "1e+20", "100000000000000000000"),
    (1.2345678901234568e20, "123456789012345680000", "123456789012345683968", "1.2345678901234568e+20",
     "123456789012345680000"),
    (1e21, "1" + "0" * 21, "1" + "0" * 21, "1e+21", "1e+21"),
    (1e23, "1" + "0" * 23, "99999999999999991611392", "1e+23", "1e+23"),
    (-(2.0**63), "-9223372036854776000", "-9223372036854775808", "-9223372036854775808", "-9223372036854776000"),
    (2.0**63, "9223372036854776000", "9223372036854775808", "9.223372036854776e+18", "9223372036854776000"),
]


@pytest.mark.parametrize(("value", "published", "python", "go", "javascript"), SPELLING_TABLE)
def test_float_spellings(value, published, python, go, javascript):
    assert (published_float(value), python_sdk_float(value), go_sdk_float(value), javascript_sdk_float(value)) \
        == (published, python, go, javascript)


@pytest.mark.parametrize(("value", "published", "python", "go", "javascript"), SPELLING_TABLE)
def test_the_independent_test_signer_spells_as_the_table(value, published, python, go, javascript):
    # guards the test signer itself (tests/support/signer.py), written from the languages' rules
    assert [spell_float(name, value) for name in SPELLINGS] == [published, python, go, javascript]


def test_python_spelling_is_str_of_the_float():
    for v in (0.1, 1e-05, 2.5e-10, 123.456, 1e-300, -7.25e-8):
        assert python_sdk_float(v) == str(v)


@pytest.mark.parametrize("spell", [published_float, *SDK_FLOAT_SPELLINGS.values()])
def test_every_spelling_refuses_non_finite_numbers(spell):
    for v in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            spell(v)


@pytest.mark.parametrize("seed", range(10))
def test_app_spellings_match_the_independent_ones_on_random_floats(seed):
    rng = random.Random(seed)
    app_spellings = {"published": published_float, **SDK_FLOAT_SPELLINGS}
    for _ in range(300):
        v = rng.choice([rng.uniform(-1, 1) * 10.0 ** rng.randint(-20, 30),
                        float(rng.randint(-10**6, 10**6)) * 10.0 ** rng.randint(-8, 24)])
        for name in SPELLINGS:
            assert app_spellings[name](v) == spell_float(name, v), (name, v)


SDK_BODY = {
    "Action": "ListModels", "PublicKey": "abcdefg", "request_uuid": "u-1",
    "Tiny": 1e-05, "Tinier": -2.5e-10, "Huge": 1e21, "Plain": 0.3, "Whole": 100.0,
    "Nested": {"b": [1e-7, {"c": 1234567.5}], "a": 1e23},
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_verify_accepts_each_sdk_spelling_applied_consistently(spelling):
    body = {**SDK_BODY, "Signature": picpik_signature(SDK_BODY, KEY, spelling)}
    assert verify(body, KEY)
    assert not verify(body, "654321")


def test_verify_refuses_a_mix_of_spellings():
    # 1e-05 as the Python SDK writes it, every other float as the published rule does
    def mixed(x: float) -> str:
        return spell_float("python" if x == 1e-05 else "published", x)

    text = signing_text(SDK_BODY, KEY, mixed)
    assert all(text != signing_text(SDK_BODY, KEY, name) for name in SPELLINGS)  # guard: no one rule gives it
    assert not verify({**SDK_BODY, "Signature": picpik_signature(SDK_BODY, KEY, mixed)}, KEY)


def _count_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = signature._sha1

    def counting(text: str) -> str:
        hashed.append(text)
        return real(text)

    monkeypatch.setattr(signature, "_sha1", counting)
    return hashed


def test_alternative_spellings_are_hashed_only_when_a_float_is_spelled_differently(monkeypatch):
    hashed = _count_hashes(monkeypatch)
    same_everywhere = {"Action": "ListModels", "A": 0.3, "B": 100.0, "C": [2.5, {"d": -7.125}]}
    assert not verify({**same_everywhere, "Signature": "0" * 40}, KEY)
    assert len(hashed) == 1  # a wrong signature of a body whose floats every signer writes alike
    published = {**SDK_BODY, "Signature": sign(SDK_BODY, KEY)}
    hashed.clear()
    assert verify(published, KEY)
    assert len(hashed) == 1  # the published spelling matched: nothing else is tried
    hashed.clear()
    assert not verify({"Action": "ListModels", "A": 1e-05, "Signature": "0" * 40}, KEY)
    # published and JavaScript write 0.00001, Python and Go 1e-05: two distinct strings, two hashes
    assert sorted(hashed) == ["A0.00001ActionListModels" + KEY, "A1e-05ActionListModels" + KEY]
