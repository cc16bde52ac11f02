"""The persona actions' bodies (docs/API.md "Personas"): CreatePersona's ``Name`` and ``ImageList``, a
``PersonaCode``."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.contract.limits import (
    PERSONA_CODE_FIELD,
    PERSONA_CODE_PATTERN,
    PERSONA_IMAGES_FIELD,
    PERSONA_NAME_CHARS,
    PERSONA_NAME_FIELD,
)
from app.errors import ApiError
from app.validation.fields import check_list, check_str
from app.validation.images import DecodedImage, decode_image

_CODE = re.compile(PERSONA_CODE_PATTERN)


@dataclass(frozen=True)
class CreatePersonaRequest:
    name: str
    images: list[DecodedImage]   # each once (a repeated image counts once), in ImageList's order


def check_persona_name(value: Any) -> str:
    """``Name``: a string of PERSONA_NAME_CHARS characters once stripped, without control characters."""
    name = check_str(value, PERSONA_NAME_FIELD).strip()
    lo, hi = int(PERSONA_NAME_CHARS.lo), int(PERSONA_NAME_CHARS.hi)
    if not lo <= len(name) <= hi:
        raise ApiError.param(PERSONA_NAME_FIELD, f"must have between {lo} and {hi} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ApiError.param(PERSONA_NAME_FIELD, "must not contain control characters")
    return name


def is_persona_code(value: Any) -> bool:
    """Whether ``value`` has the form of a PersonaCode (whether one exists is the store's answer)."""
    return isinstance(value, str) and bool(_CODE.match(value))


def check_persona_code(value: Any, name: str = PERSONA_CODE_FIELD) -> str:
    """A PersonaCode field: a non-empty string (its form and existence are checked against the store: 240)."""
    return check_str(value, name, non_empty=True)


def parse_create_persona(body: dict[str, Any], *, max_images: int, max_pixels: int,
                         known_images: Callable[[str], bool] | None = None) -> CreatePersonaRequest:
    """CreatePersona: ``Name`` then ``ImageList`` (1..max_images base64 images, each decoded and checked)."""
    name = check_persona_name(body.get(PERSONA_NAME_FIELD))
    sources = check_list(body.get(PERSONA_IMAGES_FIELD), PERSONA_IMAGES_FIELD, min_items=1, max_items=max_images)
    images = [decode_image(src, f"{PERSONA_IMAGES_FIELD}[{i}]", max_pixels, known_images)
              for i, src in enumerate(sources)]
    unique = list({img.sha256: img for img in images}.values())
    return CreatePersonaRequest(name, unique)
