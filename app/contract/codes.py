"""The outcome codes of the wire: ``RetCode`` of an answer and ``ErrorCode`` of a failed task, with the
messages that name something (a parameter, a model, an action), each spelled once here.

The gateway raises :class:`app.errors.ApiError` with a RetCode; a worker ends a task with an ErrorCode.
The two share their numbers where they mean the same thing (230 a bad input, 240 a model, 500 internal),
as PICPIK's do. The wording follows PICPIK's, e.g. ``Params [Width] not available: must be between 64
and 2560`` (``docs/API.md`` "Return codes").
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


class ErrorCode(IntEnum):
    """The ``ErrorCode`` of a task that ended in ``Error`` (TaskDetail.ErrorCode); 0 = none."""

    NONE = 0
    BAD_INPUT = 230          # an input turned out unusable at run time
    MODEL = 240              # a model could not be found, loaded or applied
    INTERNAL = 500           # an internal error (the traceback stays in the worker's log)
    WORKER_LOST = 502        # the workers that ran it died every time (a job that kills its worker?)
    TIMEOUT = 504            # the job ran past its time budget
    UNSUPPORTED_JOB = 505    # a job message version this worker does not know
    WITHHELD = 506           # every image made was flagged by the Main model's safety checker (its `safety:` policy)
    OUT_OF_MEMORY = 507      # CUDA out of memory: lower BatchSize or the size
    STORAGE = 508            # the storage (bucket or data dir) failed for the whole of the job's time budget


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


#: 150 at a submission whose inputs could not be stored (a bucket or data dir unreachable, refused, full).
STORAGE_UNAVAILABLE_MESSAGE = "Service unavailable: the storage cannot be reached or written"


def storage_error_message(what: str, seconds: float) -> str:
    """ErrorCode 508: a running job's storage call (``what``: ``reading inputs``, ``writing results`` ...) that
    kept failing, tried again for ``seconds`` (the rest of the job's time budget)."""
    return (f"storage unavailable: {what} failed, tried again for {seconds:.0f}s (the job's time budget);"
            " submit the task again once the storage is back")


def param_message(name: str, rule: str) -> str:
    """230: ``Params [<name>] not available: <rule>``; ``name`` is the parameter's path in the body
    (``Width``, ``SubModelList[1].InferenceParams.LoraWeight``), ``rule`` completes the sentence
    (``must be between 64 and 2560``)."""
    return f"Params [{name}] not available: {rule}"


def model_message(code: str) -> str:
    """240 (answer) and ErrorCode 240 (task): a ModelCode that is unknown or of the wrong kind."""
    return f"Model [{code}] not exists"


def family_message(code: str, family: str, main_code: str, main_family: str) -> str:
    """240 (answer): a control unit's model made for another family than the main model's (an sd15 IP-Adapter
    on an sdxl model): it does not exist for that model."""
    return f"{model_message(code)} for {main_family} model {main_code}: it is an {family} model"


def persona_message(code: str) -> str:
    """240 (answer) and ErrorCode 240 (task): a PersonaCode that is unknown, deleted, or another key's (the same
    words in every case: a key cannot learn whether another key's persona exists)."""
    return f"Persona [{code}] not exists"


def not_adapter_message(code: str, kind: str) -> str:
    """240 (answer): a ModelCode given where an adapter of ``kind`` (an ``ip-adapter``) is needed that names another
    ControlModel (a ControlNet)."""
    return f"{model_message(code)}: it is not an {kind}"


def face_index_message(field: str, index: int, found: int) -> str:
    """ErrorCode 230: a face index (SwitchFace's ``RawFaceIndex``) past the faces the detector found."""
    return f"{field} {index}: the image has {found} face(s)"


def worker_lost_message(deaths: int) -> str:
    """ErrorCode 502: a task whose run killed its workers, ended by the recovery or by the next worker."""
    return f"the worker running this task died {deaths} times; not tried again (a job that kills its worker?)"


def withheld_message(code: str, count: int) -> str:
    """ErrorCode 506: every image of a task withheld by the safety checker of the Main model ``code``."""
    return f"all {count} image(s) withheld by the safety checker of Model [{code}]"


def action_message(action: object) -> str:
    """161: an ``Action`` that names no action."""
    return f"Action [{action}] not exists"
