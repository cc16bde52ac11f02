"""RemoveContents' body (PICPIK-FACTS section 5), validated into a :class:`RemoveContentsRequest`; fields, ranges and
defaults are written once in :mod:`app.contract.limits` (``REMOVE_CONTENTS_FIELDS``, ``MASK_BLUR_RANGE``,
``DEFAULT_MASK_BLUR``).

The order of the checks (the same bad body always gets the same message):

1. ``RawImage`` (required): a non-empty string;
2. ``Mask`` (required): a non-empty string;
3. ``InvertMask`` (optional): a Bool, default false;
4. ``MaskBlur`` (optional): an Int within ``MASK_BLUR_RANGE`` (0..64), default 12;
5. ``Eraser`` (an extension, optional): a non-empty string, an Eraser's ModelCode (the action checks it: 240);
6. ``MainModel`` (an extension, optional): a Model object as GenerateFromMannequin's (the inpainting fallback);
7. ``CallbackUrl`` (the webhook extension), ``Priority``;
8. the two images decoded (:func:`app.validation.images.decode_image`); a Mask of another size than RawImage is
   brought to its size by the worker (nearest neighbour).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.contract.limits import (
    COMMON_FIELDS,
    DEFAULT_MASK_BLUR,
    DEFAULT_PRIORITY,
    MASK_BLUR_RANGE,
    REMOVE_CONTENTS_FIELDS,
    TASK_FIELDS,
)
from app.validation.fields import check_bool, check_int, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority, parse_model
from app.validation.images import DecodedImage, decode_image

RAW_IMAGE_FIELD, MASK_FIELD, INVERT_FIELD, BLUR_FIELD, ERASER_FIELD, MAIN_MODEL_FIELD = REMOVE_CONTENTS_FIELDS


@dataclass(frozen=True)
class RemoveContentsRequest:
    """A RemoveContents body, validated: the photo, the mask, how it is read and feathered, and what erases (an
    Eraser's ModelCode, a Main model's; None: the deployment's choice, docs/API.md "RemoveContents")."""

    image: DecodedImage
    mask: DecodedImage
    invert: bool = False
    mask_blur: int = DEFAULT_MASK_BLUR
    eraser: str | None = None
    main_model: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def parse_remove_contents(body: dict[str, Any], *, max_pixels: int, allow_private_callbacks: bool = False,
                          known_images: Callable[[str], bool] | None = None) -> RemoveContentsRequest:
    """Validate a RemoveContents body; ApiError 230 for the first problem (module doc)."""
    raw = check_str(body.get(RAW_IMAGE_FIELD), RAW_IMAGE_FIELD, non_empty=True)
    raw_mask = check_str(body.get(MASK_FIELD), MASK_FIELD, non_empty=True)
    invert = check_bool(body.get(INVERT_FIELD), INVERT_FIELD, default=False)
    blur = check_int(body.get(BLUR_FIELD), BLUR_FIELD, lo=MASK_BLUR_RANGE.lo, hi=MASK_BLUR_RANGE.hi,
                     default=DEFAULT_MASK_BLUR)
    eraser = check_str(body.get(ERASER_FIELD), ERASER_FIELD, non_empty=True, default=None)
    main = body.get(MAIN_MODEL_FIELD)
    main_model = parse_model(main, MAIN_MODEL_FIELD).model_code if main is not None else None
    callback = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                  allow_private=allow_private_callbacks)
    priority = check_priority(body)
    image = decode_image(raw, RAW_IMAGE_FIELD, max_pixels, known_images)
    mask = decode_image(raw_mask, MASK_FIELD, max_pixels, known_images)
    known = (*COMMON_FIELDS, *REMOVE_CONTENTS_FIELDS, CALLBACK_URL_FIELD, *TASK_FIELDS)
    return RemoveContentsRequest(image=image, mask=mask, invert=invert, mask_blur=blur, eraser=eraser,
                                 main_model=main_model, callback_url=callback, priority=priority,
                                 ignored_fields=[n for n in body if n not in known])
