"""API-level outcomes: the ``RetCode`` values of the wire contract and the exception that carries one.

Every failure the gateway reports is an :class:`ApiError`; the HTTP layer turns it into a
``200`` answer with ``RetCode`` and ``Message`` (see ``docs/API.md`` "Return codes").
The messages follow PICPIK's wording, e.g. ``Params [Width] not available: must be between 64 and 2560``.
"""
from __future__ import annotations

from enum import IntEnum


class RetCode(IntEnum):
    """The ``RetCode`` of an answer. 0 is success; everything else is a failure with a ``Message``."""

    OK = 0
    UNAVAILABLE = 150        # the queue/broker or storage is unavailable
    RATE_LIMIT = 153         # the key is over its rate or concurrency limit
    MISSING_ACTION = 160     # ``Action`` missing
    UNKNOWN_ACTION = 161     # ``Action`` names no action
    MISSING_SIGNATURE = 170  # ``Signature`` or ``PublicKey`` missing
    BAD_SIGNATURE = 171      # the signature does not verify
    UNKNOWN_KEY = 172        # unknown ``PublicKey``
    BAD_PARAM = 230          # a parameter is missing, mistyped, out of range, ... (the message names it)
    UNKNOWN_MODEL = 240      # a ModelCode is unknown or of the wrong kind
    INTERNAL = 500           # an internal error (never a traceback)


DEFAULT_MESSAGES: dict[RetCode, str] = {
    RetCode.OK: "",
    RetCode.UNAVAILABLE: "Service unavailable",
    RetCode.RATE_LIMIT: "Rate limit exceeded",
    RetCode.MISSING_ACTION: "Missing Action",
    RetCode.UNKNOWN_ACTION: "Action not exists",
    RetCode.MISSING_SIGNATURE: "Missing signature",
    RetCode.BAD_SIGNATURE: "Signature VerifyAC Error",
    RetCode.UNKNOWN_KEY: "User Not Exists",
    RetCode.BAD_PARAM: "Params not available",
    RetCode.UNKNOWN_MODEL: "Model not exists",
    RetCode.INTERNAL: "Internal error",
}
"""The ``Message`` of each code when nothing more specific is said (the contract's table)."""


class ApiError(Exception):
    """A failed request: ``ret_code`` and the ``message`` to put into the answer.

    ``ApiError(RetCode.RATE_LIMIT)`` carries the default message of its code; the class methods
    build the messages that name something (a parameter, a model, an action).
    """

    def __init__(self, ret_code: RetCode, message: str | None = None) -> None:
        self.ret_code = RetCode(ret_code)
        self.message = DEFAULT_MESSAGES[self.ret_code] if message is None else message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"ApiError({self.ret_code.name}, {self.message!r})"

    @classmethod
    def param(cls, name: str, rule: str) -> ApiError:
        """230 naming the parameter and the rule it breaks.

        ``name`` is the parameter's path in the body, e.g. ``Width``, ``Mannequin.ClothesMaskIndex``
        or ``SubModelList[1].InferenceParams.LoraWeight``; ``rule`` completes the sentence
        "... not available: <rule>", e.g. ``must be between 64 and 2560``.
        """
        return cls(RetCode.BAD_PARAM, f"Params [{name}] not available: {rule}")

    @classmethod
    def model(cls, code: str) -> ApiError:
        """240 for a ModelCode that is unknown or of the wrong kind: ``Model [X] not exists``."""
        return cls(RetCode.UNKNOWN_MODEL, f"Model [{code}] not exists")

    @classmethod
    def unknown_action(cls, action: str) -> ApiError:
        """161 for an ``Action`` that names no action: ``Action [X] not exists``."""
        return cls(RetCode.UNKNOWN_ACTION, f"Action [{action}] not exists")
