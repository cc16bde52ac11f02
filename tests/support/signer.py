"""A second, independent implementation of PICPIK's published signature algorithm, written from the
contract's text (not from app/signature.py), used by the tests to sign requests as a foreign client.

It also signs as PICPIK's SDK signers do (``docs/API.md`` "Signature"): the same algorithm with their
language's default spelling of a float, written here from the languages' documented behaviour:
``spelling="python"`` (``str(float)``, a whole float as ``str(int(x))``), ``"go"`` (a whole float that
fits an int64 as that integer, else ``fmt``'s ``%v``: ``%g`` with the shortest digits, ``%e`` form when
the exponent is < -4 or >= 6), ``"javascript"`` (``String(x)``: exponential when the exponent is < -6
or >= 21). ``spelling`` may also be a function ``float -> str`` (a deliberately inconsistent signer)."""
import hashlib
from collections.abc import Callable
from decimal import Decimal

SPELLINGS = ("published", "python", "go", "javascript")


def _repr_parts(x: float) -> tuple[str, int]:
    """Significant digits (no leading/trailing zeros) and decimal exponent of ``abs(x)``, cut out of
    ``repr`` with string operations: ``0.0025`` -> ``("25", -3)``, ``1e+21`` -> ``("1", 21)``."""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    all_digits = whole + frac
    leading = len(all_digits) - len(all_digits.lstrip("0"))
    return all_digits.strip("0"), int(exp or 0) + len(whole) - 1 - leading


def _fixed(x: float, digits: str, exponent: int) -> str:
    """Positional notation of the shortest digits; big whole numbers padded with zeros."""
    decimals = len(digits) - exponent - 1
    if decimals <= 0:
        return ("-" if x < 0 else "") + digits + "0" * -decimals
    return format(x, f".{decimals}f")


def _published(x: float) -> str:
    d = Decimal(repr(x))
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def _python(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def _go(x: float) -> str:
    if x == int(x) and -(2**63) <= int(x) <= 2**63 - 1:
        return str(int(x))
    digits, exponent = _repr_parts(x)
    if -4 <= exponent < 6:
        return _fixed(x, digits, exponent)
    mantissa = digits[:1] + ("." + digits[1:] if digits[1:] else "")
    return ("-" if x < 0 else "") + mantissa + f"e{exponent:+03d}"


def _javascript(x: float) -> str:
    if x == 0:
        return "0"
    digits, exponent = _repr_parts(x)
    if -6 <= exponent <= 20:
        return _fixed(x, digits, exponent)
    mantissa = digits[:1] + ("." + digits[1:] if digits[1:] else "")
    return ("-" if x < 0 else "") + mantissa + "e" + ("+" if exponent > 0 else "-") + str(abs(exponent))


_BY_NAME: dict[str, Callable[[float], str]] = {
    "published": _published, "python": _python, "go": _go, "javascript": _javascript,
}


def spell_float(spelling: str, x: float) -> str:
    """``x`` as the signer named ``spelling`` (one of :data:`SPELLINGS`) writes it."""
    return _BY_NAME[spelling](x)


def _flatten(value, out: list, spell: Callable[[float], str]) -> None:
    if value is None:
        return
    if value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, float):
        out.append(spell(value))
    elif isinstance(value, dict):
        for k in sorted(value, key=lambda s: s.encode("utf-8")):
            out.append(k)
            _flatten(value[k], out, spell)
    elif isinstance(value, list):
        for v in value:
            _flatten(v, out, spell)
    else:
        out.append(str(value))


def signing_text(params: dict, private_key: str, spelling: str | Callable[[float], str] = "published") -> str:
    spell = _BY_NAME[spelling] if isinstance(spelling, str) else spelling
    parts: list = []
    _flatten({k: v for k, v in params.items() if k != "Signature"}, parts, spell)
    return "".join(parts) + private_key


def picpik_signature(params: dict, private_key: str, spelling: str | Callable[[float], str] = "published") -> str:
    return hashlib.sha1(signing_text(params, private_key, spelling).encode("utf-8")).hexdigest()
