"""ResizeImage's body (PICPIK-FACTS section 5), validated into a :class:`ResizeRequest`; fields and ranges are
written once in :mod:`app.contract.limits` (``RESIZE_FIELDS``, ``RESIZE_SIZE_RANGE``).

The order of the checks (the same bad body always gets the same message):

1. ``Image`` (required): a non-empty string;
2. ``Width``, ``Height`` (required): Ints within ``RESIZE_SIZE_RANGE`` (64..4096);
3. ``Upscaler`` (optional): a non-empty string, an Upscaler's ModelCode (the action checks it: 240) or ``Lanczos``
   (any case; absent or null: Lanczos too);
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
    RESIZE_FIELDS,
    RESIZE_SIZE_RANGE,
    TASK_FIELDS,
    is_lanczos,
)
from app.validation.fields import check_int, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority
from app.validation.images import DecodedImage, decode_image

IMAGE_FIELD, WIDTH_FIELD, HEIGHT_FIELD, UPSCALER_FIELD = RESIZE_FIELDS


@dataclass(frozen=True)
class ResizeRequest:
    """A ResizeImage body, validated: the image, the exact size of the result and the upscaler (an Upscaler's
    ModelCode, not yet looked up; None: Lanczos)."""

    image: DecodedImage
    width: int
    height: int
    upscaler: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def parse_resize_request(body: dict[str, Any], *, max_pixels: int, allow_private_callbacks: bool = False,
                         known_images: Callable[[str], bool] | None = None) -> ResizeRequest:
    """Validate a ResizeImage body; ApiError 230 for the first problem (module doc)."""
    raw = check_str(body.get(IMAGE_FIELD), IMAGE_FIELD, non_empty=True)
    width, height = (check_int(body.get(name), name, lo=RESIZE_SIZE_RANGE.lo, hi=RESIZE_SIZE_RANGE.hi)
                     for name in (WIDTH_FIELD, HEIGHT_FIELD))
    upscaler = check_str(body.get(UPSCALER_FIELD), UPSCALER_FIELD, non_empty=True, default=None)
    callback = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                  allow_private=allow_private_callbacks)
    priority = check_priority(body)
    image = decode_image(raw, IMAGE_FIELD, max_pixels, known_images)
    known = (*COMMON_FIELDS, *RESIZE_FIELDS, CALLBACK_URL_FIELD, *TASK_FIELDS)
    return ResizeRequest(image=image, width=width, height=height, upscaler=None if is_lanczos(upscaler) else upscaler,
                         callback_url=callback,
                         priority=priority, ignored_fields=[n for n in body if n not in known])
