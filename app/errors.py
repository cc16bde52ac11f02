"""The exception that carries an API-level outcome (a ``RetCode`` of :mod:`app.contract.codes`).

Every failure the gateway reports is an :class:`ApiError`; the HTTP layer turns it into a
``200`` answer with ``RetCode`` and ``Message`` (see ``docs/API.md`` "Return codes").
The messages follow PICPIK's wording, e.g. ``Params [Width] not available: must be between 64 and 2560``.
"""
from __future__ import annotations

from app.contract.codes import DEFAULT_MESSAGES, RetCode, action_message, model_message, param_message


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
        return cls(RetCode.BAD_PARAM, param_message(name, rule))

    @classmethod
    def model(cls, code: str) -> ApiError:
        """240 for a ModelCode that is unknown or of the wrong kind: ``Model [X] not exists``."""
        return cls(RetCode.UNKNOWN_MODEL, model_message(code))

    @classmethod
    def unknown_action(cls, action: str) -> ApiError:
        """161 for an ``Action`` that names no action: ``Action [X] not exists``."""
        return cls(RetCode.UNKNOWN_ACTION, action_message(action))
