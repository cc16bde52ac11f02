"""DescribeImages' body (PICPIK-FACTS section 5), validated into a :class:`DescribeRequest`; fields and the language
list are written once in :mod:`app.contract.limits` (``DESCRIBE_IMAGES_FIELDS``, ``DESCRIBE_LANGUAGES``).

The order of the checks (the same bad body always gets the same message):

1. ``ImageList`` (required): an array of 1..``max_images`` non-empty strings;
2. ``TranslateDescription`` (optional): one of PICPIK's 15 language codes, default ``en`` (whether the Describer
   serves it is the action's check: 230 naming the field);
3. ``Describer`` (an extension, optional): a non-empty string, a Describer's ModelCode (the action checks it: 240);
4. ``CallbackUrl`` (the webhook extension), ``Priority``;
5. each image decoded (:func:`app.validation.images.decode_image`), named ``ImageList[i]``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.contract.limits import (
    COMMON_FIELDS,
    DEFAULT_DESCRIBE_LANGUAGE,
    DEFAULT_PRIORITY,
    DESCRIBE_IMAGES_FIELDS,
    DESCRIBE_LANGUAGES,
    TASK_FIELDS,
)
from app.validation.fields import check_choice, check_list, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority
from app.validation.images import DecodedImage, decode_image

IMAGES_FIELD, LANGUAGE_FIELD, DESCRIBER_FIELD = DESCRIBE_IMAGES_FIELDS


@dataclass(frozen=True)
class DescribeRequest:
    """A DescribeImages body, validated: the images, the language of the texts and the Describer (None: the
    deployment's first)."""

    images: list[DecodedImage]
    language: str = DEFAULT_DESCRIBE_LANGUAGE
    describer: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def parse_describe(body: dict[str, Any], *, max_images: int, max_pixels: int, allow_private_callbacks: bool = False,
                   known_images: Callable[[str], bool] | None = None) -> DescribeRequest:
    """Validate a DescribeImages body; ApiError 230 for the first problem (module doc)."""
    raw = check_list(body.get(IMAGES_FIELD), IMAGES_FIELD, min_items=1, max_items=max_images)
    for i, item in enumerate(raw):
        check_str(item, f"{IMAGES_FIELD}[{i}]", non_empty=True)
    language = check_choice(body.get(LANGUAGE_FIELD), LANGUAGE_FIELD, DESCRIBE_LANGUAGES,
                            default=DEFAULT_DESCRIBE_LANGUAGE)
    describer = check_str(body.get(DESCRIBER_FIELD), DESCRIBER_FIELD, non_empty=True, default=None)
    callback = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                  allow_private=allow_private_callbacks)
    priority = check_priority(body)
    images = [decode_image(item, f"{IMAGES_FIELD}[{i}]", max_pixels, known_images) for i, item in enumerate(raw)]
    known = (*COMMON_FIELDS, *DESCRIBE_IMAGES_FIELDS, CALLBACK_URL_FIELD, *TASK_FIELDS)
    return DescribeRequest(images=images, language=language, describer=describer, callback_url=callback,
                           priority=priority, ignored_fields=[n for n in body if n not in known])
