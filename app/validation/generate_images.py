"""GenerateImages' body (PICPIK-FACTS sections 4-5), validated into an :class:`ImagesRequest` with every default
applied: GenerateFromMannequin's engine with nothing kept (docs/API.md "GenerateImages").

The order of the checks (the same bad body always gets the same message):

1. the shared generation block (:func:`~app.validation.generate.parse_shared_block`);
2. the images' shape, optional here: ``ImageAndMaskList`` (PICPIK's field) or ``ImageList`` with ``MaskList``
   (:func:`~app.validation.generate.parse_image_lists`); none at all is text-to-image;
3. ``Image2Image`` (optional): ImageIndex, ReferStrength, ResizeMode;
4. ``Tileable`` (optional, default false): with it, Width and Height multiples of ``TILEABLE_MULTIPLE``;
5. ``ControlNetList`` (optional; absent = no control unit): a unit's ``ImageIndex`` defaults to Image2Image's,
   and without Image2Image it is required (or a PersonaCode); then the extensions Refine, FaceRefine,
   CallbackUrl, Priority (:func:`~app.validation.generate.parse_extras`);
6. every image decoded, first to last.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.contract.limits import COMMON_FIELDS, TASK_FIELDS, TILEABLE_FIELD, TILEABLE_MULTIPLE
from app.errors import ApiError
from app.validation.fields import check_bool
from app.validation.generate import (
    GENERATION_EXTENSION_FIELDS,
    SHARED_BLOCK_FIELDS,
    GenerateRequest,
    ImageLists,
    control_units_field,
    parse_control_units,
    parse_extras,
    parse_image2image,
    parse_image_lists,
    parse_shared_block,
)
from app.validation.images import decode_image

#: The top-level fields GenerateImages reads besides the common ones (any other is ignored and named in the Notes).
IMAGES_FIELDS: tuple[str, ...] = (*SHARED_BLOCK_FIELDS, "Image2Image", TILEABLE_FIELD, "ImageAndMaskList",
                                  "ImageList", "MaskList", *GENERATION_EXTENSION_FIELDS)
NO_UNIT_IMAGE_RULE = "is required: the request has no Image2Image whose image a unit would take by default"


@dataclass(frozen=True)
class ImagesRequest(GenerateRequest):
    """A GenerateImages body: ``mannequin_index`` None (nothing kept), ``background_index`` Image2Image's image,
    ``resize_mode`` its ResizeMode (the control images' geometry too), and ``tileable``."""

    tileable: bool = False


def _image_lists(body: dict[str, Any], max_images: int) -> ImageLists:
    if all(body.get(name) is None for name in ("ImageAndMaskList", "ImageList", "MaskList")):
        return ImageLists([], None, "ImageAndMaskList")  # text-to-image: no image at all
    return parse_image_lists(body, max_images)


def parse_generate_images(body: Any, *, max_images: int, max_pixels: int, max_prompt_chars: int,
                          allow_private_callbacks: bool = False,
                          known_images: Callable[[str], bool] | None = None) -> ImagesRequest:
    """Validate a GenerateImages body (module doc); ApiError 230 for the first problem."""
    shared = parse_shared_block(body, max_prompt_chars)
    lists = _image_lists(body, max_images)
    background_index, refer_strength, background_mode = parse_image2image(body, "Image2Image", lists)
    tileable = check_bool(body.get(TILEABLE_FIELD), TILEABLE_FIELD, default=False)
    if tileable:
        for side in ("Width", "Height"):
            if shared[side.lower()] % TILEABLE_MULTIPLE:
                raise ApiError.param(side, f"must be a multiple of {TILEABLE_MULTIPLE} with {TILEABLE_FIELD}: a"
                                           " seamless texture is drawn at exactly its size")
    units = parse_control_units(body, lists, background_index)
    for i, unit in enumerate(units or []):
        if unit.image_index is None and unit.persona is None:
            raise ApiError.param(f"{control_units_field(body)}[{i}].ImageIndex", NO_UNIT_IMAGE_RULE)
    extras = parse_extras(body, allow_private_callbacks)
    images = [decode_image(src, name, max_pixels, known_images) for name, src in lists.sources()]
    known = (*COMMON_FIELDS, *IMAGES_FIELDS, *TASK_FIELDS)
    return ImagesRequest(**shared, images=images, mannequin_index=None, clothes_mask_index=None,
                         resize_mode=background_mode, invert_mask=False, background_index=background_index,
                         refer_strength=refer_strength, background_resize_mode=background_mode,
                         control_units=units or [], control_units_field=control_units_field(body),
                         ignored_fields=[name for name in body if name not in known], tileable=tileable, **extras)
