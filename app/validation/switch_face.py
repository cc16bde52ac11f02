"""SwitchFace's body (PICPIK-FACTS section 5), validated into a :class:`SwitchFaceRequest`; fields, the range and the
default are written once in :mod:`app.contract.limits` (``SWITCH_FACE_FIELDS``, ``RAW_FACE_INDEX_RANGE``,
``DEFAULT_RAW_FACE_INDEX``).

The order of the checks (the same bad body always gets the same message):

1. ``RawImage`` (required): a non-empty string;
2. ``RawFaceIndex`` (optional): an Int within ``RAW_FACE_INDEX_RANGE`` (1..100), default 1;
3. ``NewFaceImage`` or ``PersonaCode`` (an extension: one of the key's personas), exactly one: a non-empty string
   (neither: 230 naming NewFaceImage; both: 230 naming PersonaCode);
4. ``MainModel`` and ``Adapter`` (extensions, optional): Model objects as GenerateFromMannequin's (whether they name
   a Main model and an IP-Adapter of its family is the action's check, 240);
5. ``CallbackUrl`` (the webhook extension, :func:`app.validation.generate.check_callback_url`);
6. the images decoded (:func:`app.validation.images.decode_image`): ``RawImage``, then ``NewFaceImage``.

Whether a PersonaCode is one of the signing key's personas is the action's check (240, as if it did not exist).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.contract.limits import (
    COMMON_FIELDS,
    DEFAULT_PRIORITY,
    DEFAULT_RAW_FACE_INDEX,
    RAW_FACE_INDEX_RANGE,
    SWITCH_FACE_FIELDS,
    TASK_FIELDS,
)
from app.errors import ApiError
from app.validation.fields import check_int, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority, parse_model
from app.validation.images import DecodedImage, decode_image
from app.validation.personas import check_persona_code

RAW_IMAGE_FIELD, FACE_INDEX_FIELD, NEW_FACE_FIELD, MAIN_MODEL_FIELD, ADAPTER_FIELD, PERSONA_FIELD = SWITCH_FACE_FIELDS


@dataclass(frozen=True)
class SwitchFaceRequest:
    """A SwitchFace body, validated: the photo, which of its faces (1-based), the new face (an image, or a persona's
    code: exactly one), and the Main model's and the adapter's codes (None: the deployment's default ones)."""

    image: DecodedImage
    new_face: DecodedImage | None
    persona: str | None = None
    face_index: int = DEFAULT_RAW_FACE_INDEX
    main_model: str | None = None
    adapter: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def _model_code(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return parse_model(value, name).model_code if value is not None else None


def parse_switch_face(body: dict[str, Any], *, max_pixels: int, allow_private_callbacks: bool = False,
                      known_images: Callable[[str], bool] | None = None) -> SwitchFaceRequest:
    """Validate a SwitchFace body; ApiError 230 for the first problem (module doc)."""
    raw = check_str(body.get(RAW_IMAGE_FIELD), RAW_IMAGE_FIELD, non_empty=True)
    index = check_int(body.get(FACE_INDEX_FIELD), FACE_INDEX_FIELD, lo=int(RAW_FACE_INDEX_RANGE.lo),
                      hi=int(RAW_FACE_INDEX_RANGE.hi), default=DEFAULT_RAW_FACE_INDEX)
    persona = body.get(PERSONA_FIELD)
    if persona is None:
        new = check_str(body.get(NEW_FACE_FIELD), NEW_FACE_FIELD, non_empty=True)
    else:
        if body.get(NEW_FACE_FIELD) is not None:
            raise ApiError.param(PERSONA_FIELD, f"cannot be combined with {NEW_FACE_FIELD}: the new face is an image"
                                                " or a persona, not both")
        persona, new = check_persona_code(persona, PERSONA_FIELD), None
    main_model, adapter = _model_code(body, MAIN_MODEL_FIELD), _model_code(body, ADAPTER_FIELD)
    callback = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                  allow_private=allow_private_callbacks)
    priority = check_priority(body)
    image = decode_image(raw, RAW_IMAGE_FIELD, max_pixels, known_images)
    new_face = decode_image(new, NEW_FACE_FIELD, max_pixels, known_images) if new is not None else None
    known = (*COMMON_FIELDS, *SWITCH_FACE_FIELDS, CALLBACK_URL_FIELD, *TASK_FIELDS)
    return SwitchFaceRequest(image=image, new_face=new_face, persona=persona, face_index=index, main_model=main_model,
                             adapter=adapter, callback_url=callback,
                             priority=priority, ignored_fields=[n for n in body if n not in known])
