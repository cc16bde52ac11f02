"""PICPIK's request signature, byte for byte (``docs/API.md`` "Signature").

The signing string is every top-level parameter except ``Signature``, sorted by key name bytewise
(by the UTF-8 bytes, so ``Z...`` sorts before ``a...`` and ``request_uuid`` comes last), each written
as ``key + encode(value)`` with no separators, followed by the PrivateKey. The signature is the
lower-case hex SHA1 of that string's UTF-8 bytes.

``encode(value)``, for values as a JSON parser gives them (the gateway parses with orjson, which keeps
``1`` an ``int`` and ``1.0`` a ``float``):

* ``bool``: ``true`` / ``false``;
* ``int``: decimal digits, as is;
* ``float``: the shortest decimal that reads back as the same double (Python's ``repr``, Go's
  ``strconv.FormatFloat(v, 'f', -1, 64)``, JavaScript's ``String(v)`` for ordinary magnitudes),
  always in positional notation, never scientific: ``0.3`` -> ``0.3``, ``0.5`` -> ``0.5``,
  ``-2.25`` -> ``-2.25``, ``1e-7`` -> ``0.0000001``, ``1e20`` -> ``100000000000000000000``.
  A float with no fractional part is written as an integer: ``1.0`` -> ``1``, ``-0.0`` -> ``0``.
  Whole floats beyond 2**53 keep the shortest digits padded with zeros (``1e23`` ->
  ``100000000000000000000000``, not the double's exact value ``99999999999999991611392``).
  NaN and infinities cannot occur in JSON and are refused (``ValueError``);
* ``str``: as is (no quoting, no escaping);
* ``dict``: its fields sorted by name bytewise, each ``name + encode(value)``, concatenated;
* ``list`` / ``tuple``: the elements' encodings concatenated (no index, no separator);
* ``None`` (JSON null): the empty string; its key is still written.

Published check value: PrivateKey ``123456`` and ``{"Action": "ListModels", "PublicKey": "abcdefg"}``
give ``ActionListModelsPublicKeyabcdefg123456``, SHA1 ``4a20bc1141494035f6aaaad13224c94c5a8bc3a5``.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

SIGNATURE_FIELD = "Signature"


def _key_order(key: str) -> bytes:
    """Sort key for field names: their UTF-8 bytes (bytewise order)."""
    return key.encode("utf-8")


def _encode_float(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError(f"cannot sign a non-finite number: {v!r}")
    if v == 0:
        return "0"  # 0.0 and -0.0: a whole number, and an integer zero has no sign
    text = format(Decimal(repr(v)), "f")  # shortest round-trip digits, positional notation
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _encode_mapping(m: Mapping[Any, Any]) -> str:
    for key in m:
        if not isinstance(key, str):
            raise TypeError(f"cannot sign an object with a non-string key: {key!r}")
    return "".join(key + encode_value(m[key]) for key in sorted(m, key=_key_order))


def encode_value(v: Any) -> str:
    """The signing form of one parameter value (see the module docstring for the rules).

    Raises ``TypeError`` for a value JSON cannot hold (bytes, sets, objects with non-string keys)
    and ``ValueError`` for NaN or an infinity.
    """
    if v is None:
        return ""
    if isinstance(v, bool):  # before int: bool is a subclass of int
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _encode_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return _encode_mapping(v)
    if isinstance(v, (list, tuple)):
        return "".join(encode_value(item) for item in v)
    raise TypeError(f"cannot sign a value of type {type(v).__name__}")


def signing_string(params: Mapping[str, Any], private_key: str) -> str:
    """The string whose SHA1 is the signature: every top-level parameter but ``Signature``,
    sorted bytewise by name, as ``name + encode(value)``, then the private key."""
    fields = {k: v for k, v in params.items() if k != SIGNATURE_FIELD}
    return _encode_mapping(fields) + private_key


def sign(params: Mapping[str, Any], private_key: str) -> str:
    """The ``Signature`` of ``params``: lower-case hex SHA1 of the UTF-8 signing string.

    Raises ``TypeError``/``ValueError`` as :func:`encode_value` does, and ``UnicodeEncodeError``
    (a ``ValueError``) for a string holding a lone surrogate.
    """
    return hashlib.sha1(signing_string(params, private_key).encode("utf-8")).hexdigest()


def verify(params: Mapping[str, Any], private_key: str) -> bool:
    """Whether ``params["Signature"]`` is the signature of ``params`` under ``private_key``.

    The comparison is constant-time. Hex digits are accepted in either case (clients that print
    upper-case hex still verify). False when ``Signature`` is missing or not a string, or when the
    body holds a value that cannot be signed.
    """
    given = params.get(SIGNATURE_FIELD)
    if not isinstance(given, str) or not given.isascii():
        return False
    try:
        expected = sign(params, private_key)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(expected, given.lower())
