"""RestoreFaces' body (PICPIK-FACTS section 5), validated into a :class:`RestoreFacesRequest`; fields, ranges and the
default are written once in :mod:`app.contract.limits` (``RESTORE_FACES_FIELDS``, ``RESTORE_STRENGTH_RANGE``,
``DEFAULT_RESTORE_STRENGTH``).

The order of the checks (the same bad body always gets the same message):

1. ``RawImage`` (required): a non-empty string;
2. ``RestoreStrength`` (optional): a Float within ``RESTORE_STRENGTH_RANGE`` (0..1), default 0.5;
3. ``MainModel`` (an extension, optional): a Model object as GenerateFromMannequin's (whether it names a Main model
   is the action's check, 240);
4. ``CallbackUrl`` (the webhook extension, :func:`app.validation.generate.check_callback_url`);
5. the image decoded (:func:`app.validation.images.decode_image`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.contract.limits import (
    COMMON_FIELDS,
    DEFAULT_PRIORITY,
    DEFAULT_RESTORE_STRENGTH,
    RESTORE_FACES_FIELDS,
    RESTORE_STRENGTH_RANGE,
    TASK_FIELDS,
)
from app.validation.fields import check_float, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority, parse_model
from app.validation.images import DecodedImage, decode_image

RAW_IMAGE_FIELD, STRENGTH_FIELD, MAIN_MODEL_FIELD = RESTORE_FACES_FIELDS


@dataclass(frozen=True)
class RestoreFacesRequest:
    """A RestoreFaces body, validated: the photo, the strength its faces are redrawn at and the Main model's code
    (None: the deployment's default)."""

    image: DecodedImage
    strength: float = DEFAULT_RESTORE_STRENGTH
    main_model: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def parse_restore_faces(body: dict[str, Any], *, max_pixels: int, allow_private_callbacks: bool = False,
                        known_images: Callable[[str], bool] | None = None) -> RestoreFacesRequest:
    """Validate a RestoreFaces body; ApiError 230 for the first problem (module doc)."""
    raw = check_str(body.get(RAW_IMAGE_FIELD), RAW_IMAGE_FIELD, non_empty=True)
    strength = check_float(body.get(STRENGTH_FIELD), STRENGTH_FIELD, lo=RESTORE_STRENGTH_RANGE.lo,
                           hi=RESTORE_STRENGTH_RANGE.hi, default=DEFAULT_RESTORE_STRENGTH)
    main = body.get(MAIN_MODEL_FIELD)
    main_model = parse_model(main, MAIN_MODEL_FIELD).model_code if main is not None else None
    callback = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                  allow_private=allow_private_callbacks)
    priority = check_priority(body)
    image = decode_image(raw, RAW_IMAGE_FIELD, max_pixels, known_images)
    known = (*COMMON_FIELDS, *RESTORE_FACES_FIELDS, CALLBACK_URL_FIELD, *TASK_FIELDS)
    return RestoreFacesRequest(image=image, strength=strength, main_model=main_model, callback_url=callback,
                               priority=priority, ignored_fields=[n for n in body if n not in known])
