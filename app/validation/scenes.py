"""GenerateBackgrounds' and ModifyMaskedPixels' bodies (PICPIK-FACTS sections 3-5), validated into a
:class:`~app.validation.generate.GenerateRequest` (a :class:`ModifyRequest` for ModifyMaskedPixels) with every
default applied: both are GenerateFromMannequin's engine with another kept area (docs/API.md).

The order of the checks (the same bad body always gets the same message):

1. the shared generation block (:func:`~app.validation.generate.parse_shared_block`);
2. the images' shape: ``ImageList`` (PICPIK's field) or ``ImageAndMaskList`` (ModifyMaskedPixels' own), with
   ``MaskList`` (:func:`~app.validation.generate.parse_image_lists`);
3. the Image2Image object (``BackgroundImage2Image``, ``Image2Image``; optional): ImageIndex, ReferStrength,
   ResizeMode (ModifyMaskedPixels: absent, ``Masked.ResizeMode``);
4. the action's own object, required: ``TransparentForeground`` {ImageIndex, ResizeMode}, or ``Masked``
   {ImageIndex, MaskIndex, InvertMask, MaskBlur, ResizeMode};
5. ``ControlNetList`` (optional; absent = no control unit), then the extensions Refine, FaceRefine, CallbackUrl,
   Priority (:func:`~app.validation.generate.parse_extras`);
6. every image decoded, first to last; then, GenerateBackgrounds, the foreground's alpha channel (230 naming
   ``TransparentForeground.ImageIndex`` without one).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.contract.limits import (
    BACKGROUND_I2I_FIELD,
    COMMON_FIELDS,
    DEFAULT_MASK_BLUR,
    DEFAULT_RESIZE_MODE,
    FOREGROUND_FIELD,
    MASK_BLUR_RANGE,
    MASKED_FIELD,
    MASKED_FIELDS,
    RESIZE_MODES,
    TASK_FIELDS,
)
from app.errors import ApiError
from app.validation.fields import check_bool, check_choice, check_int, check_object
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

IMAGE_LIST_FIELDS: tuple[str, ...] = ("ImageList", "ImageAndMaskList", "MaskList")
#: The top-level fields each action reads besides the common ones (any other is ignored and named in the Notes).
BACKGROUNDS_FIELDS: tuple[str, ...] = (*SHARED_BLOCK_FIELDS, BACKGROUND_I2I_FIELD, FOREGROUND_FIELD,
                                       *IMAGE_LIST_FIELDS, *GENERATION_EXTENSION_FIELDS)
MODIFY_FIELDS: tuple[str, ...] = (*SHARED_BLOCK_FIELDS, "Image2Image", MASKED_FIELD, *IMAGE_LIST_FIELDS,
                                  *GENERATION_EXTENSION_FIELDS)
NO_ALPHA_RULE = ("has no alpha channel: GenerateBackgrounds keeps a transparent foreground's opaque pixels and draws"
                 " the rest; send a PNG cut-out with transparency (e.g. RemoveBackground's result)")


@dataclass(frozen=True)
class ModifyRequest(GenerateRequest):
    """A ModifyMaskedPixels body: ``mannequin_index`` is ``Masked.ImageIndex``, ``clothes_mask_index`` its
    ``MaskIndex`` (None: nothing masked), ``invert_mask`` and ``resize_mode`` its own; and its MaskBlur."""

    mask_blur: int = DEFAULT_MASK_BLUR


def _images(body: dict[str, Any], max_images: int) -> ImageLists:
    if body.get("ImageList") is None and body.get("ImageAndMaskList") is None:
        raise ApiError.param("ImageList", "is required (or ImageAndMaskList)")
    return parse_image_lists(body, max_images)


def _finish(body: dict[str, Any], lists: ImageLists, known: tuple[str, ...], *, max_pixels: int,
            allow_private_callbacks: bool, known_images: Callable[[str], bool] | None, image_index: int,
            cls: type[GenerateRequest] = GenerateRequest, **fields: Any) -> GenerateRequest:
    """Steps 5 and 6 of the module doc, and the request."""
    control_units = parse_control_units(body, lists, image_index)
    extras = parse_extras(body, allow_private_callbacks)
    images = [decode_image(src, name, max_pixels, known_images) for name, src in lists.sources()]
    known = (*COMMON_FIELDS, *known, *TASK_FIELDS)
    return cls(**fields, images=images, mannequin_index=image_index, control_units=control_units or [],
               control_units_field=control_units_field(body),
               ignored_fields=[name for name in body if name not in known], **extras)


def parse_backgrounds(body: dict[str, Any], *, max_images: int, max_pixels: int, max_prompt_chars: int,
                      allow_private_callbacks: bool = False,
                      known_images: Callable[[str], bool] | None = None) -> GenerateRequest:
    """Validate a GenerateBackgrounds body (module doc); ApiError 230 for the first problem. The foreground is the
    request's ``mannequin_index`` (kept: its opaque pixels), BackgroundImage2Image its background reference."""
    shared = parse_shared_block(body, max_prompt_chars)
    lists = _images(body, max_images)
    background_index, refer_strength, background_mode = parse_image2image(body, BACKGROUND_I2I_FIELD, lists)
    foreground = check_object(body.get(FOREGROUND_FIELD), FOREGROUND_FIELD)
    index_field = f"{FOREGROUND_FIELD}.ImageIndex"
    index = lists.image_index(foreground.get("ImageIndex"), index_field)
    resize_mode = check_choice(foreground.get("ResizeMode"), f"{FOREGROUND_FIELD}.ResizeMode", RESIZE_MODES,
                               default=DEFAULT_RESIZE_MODE)
    req = _finish(body, lists, BACKGROUNDS_FIELDS, max_pixels=max_pixels,
                  allow_private_callbacks=allow_private_callbacks, known_images=known_images, image_index=index,
                  **shared, clothes_mask_index=None, resize_mode=resize_mode, invert_mask=False,
                  background_index=background_index, refer_strength=refer_strength,
                  background_resize_mode=background_mode)
    if not req.images[index].alpha:
        raise ApiError.param(index_field, f"{lists.sources()[index][0]} {NO_ALPHA_RULE}")
    return req


def parse_modify(body: dict[str, Any], *, max_images: int, max_pixels: int, max_prompt_chars: int,
                 allow_private_callbacks: bool = False,
                 known_images: Callable[[str], bool] | None = None) -> ModifyRequest:
    """Validate a ModifyMaskedPixels body (module doc); ApiError 230 for the first problem."""
    shared = parse_shared_block(body, max_prompt_chars)
    lists = _images(body, max_images)
    background_index, refer_strength, background_mode = parse_image2image(body, "Image2Image", lists)
    masked = check_object(body.get(MASKED_FIELD), MASKED_FIELD)
    image_name, mask_name, invert_name, blur_name, mode_name = (f"{MASKED_FIELD}.{n}" for n in MASKED_FIELDS)
    index = lists.image_index(masked.get("ImageIndex"), image_name)
    mask_index = lists.mask_index(masked["MaskIndex"], mask_name) if masked.get("MaskIndex") is not None else None
    invert = check_bool(masked.get("InvertMask"), invert_name, default=False)
    blur = check_int(masked.get("MaskBlur"), blur_name, lo=int(MASK_BLUR_RANGE.lo), hi=int(MASK_BLUR_RANGE.hi),
                     default=DEFAULT_MASK_BLUR)
    resize_mode = check_choice(masked.get("ResizeMode"), mode_name, RESIZE_MODES, default=DEFAULT_RESIZE_MODE)
    image2image = body.get("Image2Image")
    if background_index is not None and image2image.get("ResizeMode") is None:
        background_mode = resize_mode  # the reference in the image's geometry (it is often the image itself)
    return _finish(body, lists, MODIFY_FIELDS, max_pixels=max_pixels, allow_private_callbacks=allow_private_callbacks,
                   known_images=known_images, image_index=index, cls=ModifyRequest, **shared,
                   clothes_mask_index=mask_index, resize_mode=resize_mode, invert_mask=invert,
                   background_index=background_index, refer_strength=refer_strength,
                   background_resize_mode=background_mode, mask_blur=blur)
