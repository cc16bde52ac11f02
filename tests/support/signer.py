"""A second, independent implementation of PICPIK's published signature algorithm, written from the
contract's text (not from app/signature.py), used by the tests to sign requests as a foreign client."""
import hashlib
from decimal import Decimal


def _flatten(value, out: list) -> None:
    if value is None:
        return
    if value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, float):
        d = Decimal(repr(value))
        out.append(str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f"))
    elif isinstance(value, dict):
        for k in sorted(value, key=lambda s: s.encode("utf-8")):
            out.append(k)
            _flatten(value[k], out)
    elif isinstance(value, list):
        for v in value:
            _flatten(v, out)
    else:
        out.append(str(value))


def picpik_signature(params: dict, private_key: str) -> str:
    parts: list = []
    _flatten({k: v for k, v in params.items() if k != "Signature"}, parts)
    return hashlib.sha1(("".join(parts) + private_key).encode("utf-8")).hexdigest()
