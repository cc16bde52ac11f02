"""The field rules every action validates with (``docs/API.md``): typed checks that name the field.

A body arrives as orjson parsed it: JSON integers are ``int``, JSON numbers with a fraction or an
exponent are ``float``. The type rules, shared by every action:

* Int: a JSON integer, or a whole float (``2.0`` is 2). Not a bool, a string, or a fractional number.
* Float: a JSON integer or float, finite. Not a bool or a string.
* Bool: only ``true`` / ``false``.
* An explicit ``null`` means the same as leaving the field out: the default, or "is required".
* Unknown fields are ignored (PICPIK clients send extras), at every level.

Every problem is an :class:`~app.errors.ApiError` 230 whose message names the parameter by its path
and the rule, e.g. ``Params [SubModelList[1].InferenceParams.LoraWeight] not available: must be
between -1 and 2``. An action reports the FIRST problem in the order it documents (e.g.
:func:`app.validation.generate.parse_generate`).
"""
from __future__ import annotations

from typing import Any, Final, TypeVar

from app.contract.limits import number
from app.errors import ApiError

T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()
"""Pass as ``default`` to make a missing (or null) value a 230 "is required"."""

def _missing(value: Any, name: str, default: Any) -> bool:
    """True when ``value`` is absent/null and ``default`` applies; 230 when it is required."""
    if value is not None:
        return False
    if default is REQUIRED:
        raise ApiError.param(name, "is required")
    return True


def _check_range(value: T, name: str, lo: float | None, hi: float | None) -> T:
    if (lo is not None and value < lo) or (hi is not None and value > hi):  # type: ignore[operator]
        if lo is not None and hi is not None:
            rule = f"must be between {number(lo)} and {number(hi)}"
        elif lo is not None:
            rule = f"must be at least {number(lo)}"
        else:
            rule = f"must be at most {number(hi)}"  # type: ignore[arg-type]
        raise ApiError.param(name, rule)
    return value


def check_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None,
              default: Any = REQUIRED) -> Any:
    """An Int parameter: a JSON integer or a whole float, within ``lo..hi`` (inclusive).

    Returns ``default`` when ``value`` is None (absent or null); 230 "is required" when there is no
    default, "must be an integer" for any other type, "must be between lo and hi" out of range.
    """
    if _missing(value, name, default):
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError.param(name, "must be an integer")
    return _check_range(value, name, lo, hi)


def check_float(value: Any, name: str, *, lo: float | None = None, hi: float | None = None,
                default: Any = REQUIRED) -> Any:
    """A Float parameter: a finite JSON number (integer or float), within ``lo..hi``; returns a float.

    ``default`` and the messages as for :func:`check_int` ("must be a number").
    """
    if _missing(value, name, default):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError.param(name, "must be a number")
    if value in (float("inf"), float("-inf")):
        raise ApiError.param(name, "must be a finite number")
    return float(_check_range(value, name, lo, hi))


def check_bool(value: Any, name: str, *, default: Any = REQUIRED) -> Any:
    """A Bool parameter: only JSON ``true``/``false`` ("must be a boolean (true or false)")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, bool):
        raise ApiError.param(name, "must be a boolean (true or false)")
    return value


def check_str(value: Any, name: str, *, non_empty: bool = False, default: Any = REQUIRED) -> Any:
    """A String parameter ("must be a string"; with ``non_empty``, "must be a non-empty string")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, str):
        raise ApiError.param(name, "must be a string")
    if non_empty and not value:
        raise ApiError.param(name, "must be a non-empty string")
    return value


def check_object(value: Any, name: str, *, default: Any = REQUIRED) -> Any:
    """An object parameter (a JSON object, i.e. a dict) ("must be an object")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, dict):
        raise ApiError.param(name, "must be an object")
    return value


def check_list(value: Any, name: str, *, min_items: int = 0, max_items: int | None = None,
               default: Any = REQUIRED) -> Any:
    """An array parameter with ``min_items..max_items`` elements; the elements are not checked.

    Messages: "must be an array", "must have between 1 and 8 elements", "must not be empty",
    "must have at most N elements".
    """
    if _missing(value, name, default):
        return default
    if not isinstance(value, list):
        raise ApiError.param(name, "must be an array")
    if len(value) < min_items or (max_items is not None and len(value) > max_items):
        if max_items is None:
            rule = "must not be empty" if min_items == 1 else f"must have at least {min_items} elements"
        elif min_items == 0:
            rule = f"must have at most {max_items} elements"
        else:
            rule = f"must have between {min_items} and {max_items} elements"
        raise ApiError.param(name, rule)
    return value


def check_str_list(value: Any, name: str, *, max_items: int | None = None,
                   max_total_chars: int | None = None, non_empty_items: bool = False,
                   default: Any = REQUIRED) -> Any:
    """An array of strings (``[]String``); returns a new list.

    Each element must be a string (non-empty with ``non_empty_items``), named ``name[i]`` in the
    message; ``max_items`` caps the count, ``max_total_chars`` the characters of all elements together
    ("must have at most N characters in total"). ``default`` as for :func:`check_int` (returned
    itself when the value is absent); pass ``default=[]`` for an optional list.
    """
    items = check_list(value, name, max_items=max_items, default=default)
    if items is default:
        return default
    for i, item in enumerate(items):
        check_str(item, f"{name}[{i}]", non_empty=non_empty_items)
    if max_total_chars is not None and sum(map(len, items)) > max_total_chars:
        raise ApiError.param(name, f"must have at most {max_total_chars} characters in total")
    return list(items)


def check_choice(value: Any, name: str, choices: tuple[str, ...], *, default: Any = REQUIRED) -> Any:
    """A string that must be one of ``choices`` (exact, case-sensitive): "must be one of A, B, C"."""
    value = check_str(value, name, default=default)
    if value is not default and value not in choices:
        raise ApiError.param(name, f"must be one of {', '.join(choices)}")
    return value


def check_index(value: Any, name: str, count: int, list_name: str) -> int:
    """A required index into a list of ``count`` elements: "must be between 0 and count-1 (an index
    into <list_name>)"."""
    index = check_int(value, name)
    if not 0 <= index < count:
        raise ApiError.param(name, f"must be between 0 and {count - 1} (an index into {list_name})")
    return index
