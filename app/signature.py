"""PICPIK's request signature, byte for byte (``docs/API.md`` "Signature").

The signing string is every top-level parameter except ``Signature``, sorted by key name bytewise
(by the UTF-8 bytes, so ``Z...`` sorts before ``a...`` and ``request_uuid`` comes last), each written
as ``key + encode(value)`` with no separators, followed by the PrivateKey. The signature is the
lower-case hex SHA1 of that string's UTF-8 bytes.

``encode(value)``, for values as a JSON parser gives them (the gateway parses with orjson, which keeps
``1`` an ``int`` and ``1.0`` a ``float``):

* ``bool``: ``true`` / ``false``;
* ``int``: decimal digits, as is;
* ``float``: by a *spelling*. The published rule (:func:`published_float`) writes the shortest decimal
  that reads back as the same double, always in positional notation: ``0.3`` -> ``0.3``,
  ``1e-7`` -> ``0.0000001``, ``1.0`` -> ``1``. PICPIK's own SDK signers (picpik-ai/signature-tool)
  write floats in their language's default spelling instead: :func:`python_sdk_float`,
  :func:`go_sdk_float`, :func:`javascript_sdk_float`. NaN and infinities cannot occur in JSON and are
  refused (``ValueError``);
* ``str``: as is (no quoting, no escaping);
* ``dict``: its fields sorted by name bytewise, each ``name + encode(value)``, concatenated;
* ``list`` / ``tuple``: the elements' encodings concatenated (no index, no separator);
* ``None`` (JSON null): the empty string; its key is still written.

:func:`sign` uses the published spelling. :func:`verify` accepts a signature made with the published
spelling or with any one SDK spelling applied to every float of the body; the SDK spellings are
tried only when the published one does not match and the body holds a float they write differently.

Published check value: PrivateKey ``123456`` and ``{"Action": "ListModels", "PublicKey": "abcdefg"}``
give ``ActionListModelsPublicKeyabcdefg123456``, SHA1 ``4a20bc1141494035f6aaaad13224c94c5a8bc3a5``.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

SIGNATURE_FIELD = "Signature"

FloatSpelling = Callable[[float], str]
"""How a signer writes a (finite) float in the signing string."""

_GO_INT_RANGE = (-(2**63), 2**63)  # Go's int (int64): a whole float outside it is not converted


def _key_order(key: str) -> bytes:
    """Sort key for field names: their UTF-8 bytes (bytewise order)."""
    return key.encode("utf-8")


def _check_finite(v: float) -> None:
    if not math.isfinite(v):
        raise ValueError(f"cannot sign a non-finite number: {v!r}")


def _shortest(v: float) -> tuple[str, str, int]:
    """``(sign, digits, exponent)`` of a finite non-zero float: the shortest digits that read back as
    ``v`` (no trailing zeros) and the power of ten of the first one. ``1e-05`` -> ``("", "1", -5)``,
    ``-123.5`` -> ``("-", "1235", 2)``."""
    d = Decimal(repr(v))
    digits = "".join(map(str, d.as_tuple().digits)).rstrip("0")
    return ("-" if v < 0 else ""), digits, d.adjusted()


def _positional(sign: str, digits: str, exponent: int) -> str:
    """Digits in positional notation: ``("", "25", -3)`` -> ``0.0025``, ``("", "1", 20)`` -> ``1`` and
    20 zeros."""
    point = exponent + 1  # digits before the decimal point
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _exponential(sign: str, digits: str, exponent: int, exponent_width: int) -> str:
    """``d.ddde±x`` with at least ``exponent_width`` exponent digits: ``("", "25", -10)`` ->
    ``2.5e-10``; ``("", "1", 21)`` -> ``1e+21``."""
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):0{exponent_width}d}"


def published_float(v: float) -> str:
    """The published rule: the shortest round-trip digits, always positional; a whole float as an
    integer (its shortest digits padded with zeros, not the double's exact value).

    ``0.3`` -> ``0.3``, ``1e-05`` -> ``0.00001``, ``-2.5e-10`` -> ``-0.00000000025``, ``100.0`` ->
    ``100``, ``-0.0`` -> ``0``, ``1e21`` -> ``1000000000000000000000``, ``1e23`` -> ``1`` and 23 zeros.
    """
    _check_finite(v)
    if v == 0:
        return "0"  # 0.0 and -0.0: a whole number, and an integer zero has no sign
    return _positional(*_shortest(v))


def python_sdk_float(v: float) -> str:
    """PICPIK's Python signer: a whole float as its exact integer value (``str(int(v))``), any other as
    ``str(v)``, which is exponential below 1e-4.

    ``0.3`` -> ``0.3``, ``1e-05`` -> ``1e-05``, ``-2.5e-10`` -> ``-2.5e-10``, ``100.0`` -> ``100``,
    ``1e16`` -> ``10000000000000000``, ``1e23`` -> ``99999999999999991611392`` (exact, not padded).
    """
    _check_finite(v)
    if v.is_integer():
        return str(int(v))
    return repr(v)  # Python's str(float)


def go_sdk_float(v: float) -> str:
    """PICPIK's Go signer: a whole float that fits Go's ``int`` (int64) as that integer; any other float
    with ``fmt``'s ``%v``, i.e. ``strconv.FormatFloat(v, 'g', -1, 64)``: shortest digits, exponential
    (at least two exponent digits) when the exponent is below -4 or at least 6.

    ``0.3`` -> ``0.3``, ``1e-05`` -> ``1e-05``, ``1e-7`` -> ``1e-07``, ``100.0`` -> ``100``,
    ``1234567.5`` -> ``1.2345675e+06``, ``1e20`` -> ``1e+20``, ``1e21`` -> ``1e+21`` (beyond int64).
    """
    _check_finite(v)
    if v.is_integer() and _GO_INT_RANGE[0] <= v < _GO_INT_RANGE[1]:
        return str(int(v))
    sign, digits, exponent = _shortest(v)
    if exponent < -4 or exponent >= 6:
        return _exponential(sign, digits, exponent, 2)
    return _positional(sign, digits, exponent)


def javascript_sdk_float(v: float) -> str:
    """PICPIK's JavaScript signer: ``String(v)`` for every number: shortest digits, exponential (no
    padding of the exponent) when the exponent is below -6 or at least 21; ``-0`` -> ``0``.

    ``0.3`` -> ``0.3``, ``1e-05`` -> ``0.00001``, ``0.000001`` -> ``0.000001``, ``1e-7`` -> ``1e-7``,
    ``100.0`` -> ``100``, ``1.2345678901234568e20`` -> ``123456789012345680000``, ``1e21`` -> ``1e+21``.
    """
    _check_finite(v)
    if v == 0:
        return "0"
    sign, digits, exponent = _shortest(v)
    if -7 < exponent < 21:
        return _positional(sign, digits, exponent)
    return _exponential(sign, digits, exponent, 1)


SDK_FLOAT_SPELLINGS: dict[str, FloatSpelling] = {
    "python": python_sdk_float,
    "go": go_sdk_float,
    "javascript": javascript_sdk_float,
}
"""The spellings of PICPIK's official signers, each accepted by :func:`verify` besides the published one."""


def _pieces(v: Any, out: list[str | float]) -> None:
    """Append the signing form of ``v`` to ``out``: strings as they are written, floats still as floats
    (checked finite), so that one walk serves every spelling."""
    if v is None:
        return
    if isinstance(v, bool):  # before int: bool is a subclass of int
        out.append("true" if v else "false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        _check_finite(v)
        out.append(v)
    elif isinstance(v, str):
        out.append(v)
    elif isinstance(v, Mapping):
        for key in v:
            if not isinstance(key, str):
                raise TypeError(f"cannot sign an object with a non-string key: {key!r}")
        for key in sorted(v, key=_key_order):
            out.append(key)
            _pieces(v[key], out)
    elif isinstance(v, (list, tuple)):
        for item in v:
            _pieces(item, out)
    else:
        raise TypeError(f"cannot sign a value of type {type(v).__name__}")


def _join(pieces: list[str | float], spell: FloatSpelling) -> str:
    return "".join(spell(p) if isinstance(p, float) else p for p in pieces)


def _signing_pieces(params: Mapping[str, Any], private_key: str) -> list[str | float]:
    pieces: list[str | float] = []
    _pieces({k: v for k, v in params.items() if k != SIGNATURE_FIELD}, pieces)
    pieces.append(private_key)
    return pieces


def encode_value(v: Any, spell: FloatSpelling = published_float) -> str:
    """The signing form of one parameter value (see the module docstring for the rules), its floats
    written by ``spell``.

    Raises ``TypeError`` for a value JSON cannot hold (bytes, sets, objects with non-string keys)
    and ``ValueError`` for NaN or an infinity.
    """
    pieces: list[str | float] = []
    _pieces(v, pieces)
    return _join(pieces, spell)


def signing_string(params: Mapping[str, Any], private_key: str, spell: FloatSpelling = published_float) -> str:
    """The string whose SHA1 is the signature: every top-level parameter but ``Signature``,
    sorted bytewise by name, as ``name + encode(value)``, then the private key."""
    return _join(_signing_pieces(params, private_key), spell)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def sign(params: Mapping[str, Any], private_key: str, spell: FloatSpelling = published_float) -> str:
    """The ``Signature`` of ``params``: lower-case hex SHA1 of the UTF-8 signing string.

    Raises ``TypeError``/``ValueError`` as :func:`encode_value` does, and ``UnicodeEncodeError``
    (a ``ValueError``) for a string holding a lone surrogate.
    """
    return _sha1(signing_string(params, private_key, spell))


def _matches_an_sdk_spelling(pieces: list[str | float], given: str) -> bool:
    """Whether ``given`` is the signature of ``pieces`` under one of the SDK spellings, applied to every
    float. A spelling that writes the body's floats as the published rule (or as a spelling already
    tried) does is skipped: a body without such floats hashes nothing here."""
    floats = [p for p in pieces if isinstance(p, float)]
    if not floats:
        return False
    tried = {tuple(map(published_float, floats))}
    matched = False
    for spell in SDK_FLOAT_SPELLINGS.values():
        spelled = tuple(map(spell, floats))
        if spelled in tried:
            continue
        tried.add(spelled)
        words = iter(spelled)
        text = "".join(next(words) if isinstance(p, float) else p for p in pieces)
        matched |= hmac.compare_digest(_sha1(text), given)
    return matched


def verify(params: Mapping[str, Any], private_key: str) -> bool:
    """Whether ``params["Signature"]`` is the signature of ``params`` under ``private_key``, with the
    published float spelling or one of PICPIK's SDK spellings (:data:`SDK_FLOAT_SPELLINGS`) used
    consistently for every float of the body.

    Each comparison is constant-time. Hex digits are accepted in either case (clients that print
    upper-case hex still verify). False when ``Signature`` is missing or not a string, or when the
    body holds a value that cannot be signed.
    """
    given = params.get(SIGNATURE_FIELD)
    if not isinstance(given, str) or not given.isascii():
        return False
    given = given.lower()
    try:
        pieces = _signing_pieces(params, private_key)
        if hmac.compare_digest(_sha1(_join(pieces, published_float)), given):
            return True
        return _matches_an_sdk_spelling(pieces, given)
    except (TypeError, ValueError):
        return False
