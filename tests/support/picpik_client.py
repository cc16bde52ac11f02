"""A foreign PICPIK client, written from PICPIK's public docs alone (the GenerateFromMannequin API
reference and PICPIK's collected public facts, as docs/API.md cites them), not from
Atelier's code: it imports nothing from ``app/`` or ``workers/`` and has its own signer.

What the docs say, and what this client does:

* transport: one instruction per request, ``POST`` of a JSON object whose ``Action`` names it; the
  common request fields ``Action``, ``PublicKey``, ``Signature`` and ``request_uuid``; every answer
  carries ``RetCode`` (0 = success), ``Action``, ``Message`` and ``request_uuid``. The docs only give
  the host, so the path is ``/`` of ``base_url``;
* signature (section 2): every request parameter except ``Signature``, sorted by name (plain
  code-point order, so ``request_uuid`` comes last), ``name + value`` concatenated without separators,
  then the PrivateKey; the lower-case hex SHA1 of the UTF-8 bytes. Values: bools ``true``/``false``,
  whole floats as integers, other floats without scientific notation (the docs) -- or, with
  ``float_style="python"``, as PICPIK's official Python signer writes them (``str(float)``, so
  ``1e-05``); arrays element after element; objects by sorted field names, recursively; strings and
  integers as they are; null as the empty string (its name still written).
"""
from __future__ import annotations

import hashlib
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx

FLOAT_STYLES = ("published", "python")


def _float_text(x: float, style: str) -> str:
    if x == int(x):
        return str(int(x))  # a whole float is written as an integer: 42.0 -> 42
    if style == "python":
        return str(x)  # Python's default: 0.3 -> 0.3, 0.00001 -> 1e-05
    # the docs: no scientific notation; the shortest digits that read back as x (repr), positional
    return format(Decimal(repr(x)), "f")


def _value_text(value: Any, style: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value, style)
    if isinstance(value, dict):
        return "".join(name + _value_text(value[name], style) for name in sorted(value))
    if isinstance(value, (list, tuple)):
        return "".join(_value_text(item, style) for item in value)
    return str(value)


def string_to_sign(params: dict[str, Any], private_key: str, float_style: str = "published") -> str:
    """The text whose SHA1 is the signature of ``params``."""
    if float_style not in FLOAT_STYLES:
        raise ValueError(f"float_style must be one of {FLOAT_STYLES}")
    body = {k: v for k, v in params.items() if k != "Signature"}
    return _value_text(body, float_style) + private_key


def signature(params: dict[str, Any], private_key: str, float_style: str = "published") -> str:
    return hashlib.sha1(string_to_sign(params, private_key, float_style).encode("utf-8")).hexdigest()


class PicpikClient:
    """``call(action, **params)``: the answer (a dict) of one signed PICPIK request."""

    def __init__(self, base_url: str, public_key: str, private_key: str, float_style: str = "published",
                 timeout: float = 60) -> None:
        if float_style not in FLOAT_STYLES:
            raise ValueError(f"float_style must be one of {FLOAT_STYLES}")
        self.base_url = base_url.rstrip("/")
        self.public_key = public_key
        self.private_key = private_key
        self.float_style = float_style
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def body(self, action: str, **params: Any) -> dict[str, Any]:
        """The signed request body: ``Action``, ``PublicKey``, a fresh ``request_uuid``, ``params`` and
        the ``Signature``."""
        body = {"Action": action, "PublicKey": self.public_key, "request_uuid": str(uuid.uuid4()), **params}
        body["Signature"] = signature(body, self.private_key, self.float_style)
        return body

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a body as it is (signed or not) and return the JSON answer."""
        r = self.http.post(self.base_url + "/", json=body)
        r.raise_for_status()
        return r.json()

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        return self.post(self.body(action, **params))

    def wait(self, task_uid: str, timeout: float = 120, interval: float = 0.25) -> dict[str, Any]:
        """Poll ListTasksDetails until the task is ``Finished`` or ``Error``; its TaskDetail."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.call("ListTasksDetails", TaskUIDList=[task_uid])
            if answer.get("RetCode") != 0:
                raise RuntimeError(f"ListTasksDetails failed: {answer}")
            details = [d for d in answer.get("TaskDetailList", []) if d.get("TaskUID") == task_uid]
            if details and details[0].get("Status") in ("Finished", "Error"):
                return details[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_uid} did not end in {timeout}s: {details}")
            time.sleep(interval)

    def download(self, url: str) -> httpx.Response:
        return self.http.get(url)
