"""What every action handler receives: the verified call (``SignedCall``) and the gateway's services.

A handler is ``handler(call, services) -> dict`` of the answer's own fields; ``RetCode``, ``Message``,
``Action`` and ``request_uuid`` are added by :func:`app.main.answer`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.services import Services


@dataclass
class SignedCall:
    """A request whose Action is known and whose signature verified with the key's PrivateKey."""

    action: str
    public_key: str
    private_key: str
    body: dict[str, Any]


Handler = Callable[[SignedCall, Services], dict[str, Any]]
