"""The bodies of the mask actions (RemoveBackground, RemoveBackgroundsInBatch, ExtractContents), validated
into a :class:`MaskRequest` with every default applied (fields, ranges and defaults: PICPIK-FACTS section 9,
written once in :mod:`app.contract.limits`).

The order of the checks (the same bad body always gets the same message):

1. the action's image field: ``RawImage`` (a string) or ``RawImages`` (1..``max_images`` strings);
2. ``Box`` (RemoveBackground; optional): four Ints x1, y1, x2, y2 with x1 < x2 and y1 < y2;
3. ``IncludePointList`` (ExtractContents; required, 1..MAX_POINTS) and ``ExcludePointList`` (optional,
   0..MAX_POINTS): objects ``{X, Y}`` of Ints;
4. ``ErodeSize``, ``ForegroundThreshold``, ``BackgroundThreshold`` (which must be less than
   ForegroundThreshold), ``HairOptimization``, ``OnlyMask``;
5. ``Engine`` (an extension; optional): a non-empty string (whether it names an engine is the action's check);
   ``CallbackUrl`` (the webhook extension, :func:`app.validation.generate.check_callback_url`);
6. the images decoded, first to last; then ``Box`` and the points checked inside the (first) image.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.contract.limits import (
    COMMON_FIELDS,
    DEFAULT_BACKGROUND_THRESHOLD,
    DEFAULT_ERODE_SIZE,
    DEFAULT_FOREGROUND_THRESHOLD,
    DEFAULT_HAIR_OPTIMIZATION,
    DEFAULT_PRIORITY,
    ENGINE_FIELD,
    ERODE_SIZE_RANGE,
    HAIR_OPTIMIZATION_MODES,
    MASK_ACTION_FIELDS,
    MAX_POINTS,
    TASK_FIELDS,
    THRESHOLD_RANGE,
)
from app.errors import ApiError
from app.validation.fields import check_bool, check_choice, check_int, check_list, check_object, check_str
from app.validation.generate import CALLBACK_URL_FIELD, check_callback_url, check_priority
from app.validation.images import DecodedImage, decode_image

Point = tuple[int, int]


@dataclass(frozen=True)
class MaskRequest:
    """A mask action's body, validated; ``images`` in request order (one, or RawImages' entries)."""

    action: str
    images: list[DecodedImage]
    box: tuple[int, int, int, int] | None = None
    include_points: list[Point] = field(default_factory=list)
    exclude_points: list[Point] = field(default_factory=list)
    erode_size: int = DEFAULT_ERODE_SIZE
    foreground_threshold: int = DEFAULT_FOREGROUND_THRESHOLD
    background_threshold: int = DEFAULT_BACKGROUND_THRESHOLD
    hair_optimization: str = DEFAULT_HAIR_OPTIMIZATION
    only_mask: bool = False
    engine: str | None = None
    callback_url: str | None = None
    priority: int = DEFAULT_PRIORITY
    ignored_fields: list[str] = field(default_factory=list)


def _box(value: Any) -> tuple[int, int, int, int] | None:
    items = check_list(value, "Box", min_items=4, max_items=4, default=None)
    if items is None:
        return None
    x1, y1, x2, y2 = (check_int(v, f"Box[{i}]", lo=0) for i, v in enumerate(items))
    if x1 >= x2 or y1 >= y2:
        raise ApiError.param("Box", "must be [x1, y1, x2, y2], the top-left corner above and left of the"
                                    " bottom-right one (x1 < x2, y1 < y2)")
    return x1, y1, x2, y2


def _points(value: Any, name: str, *, required: bool) -> list[Point]:
    items = check_list(value, name, min_items=1 if required else 0, max_items=MAX_POINTS,
                       **({} if required else {"default": []}))
    points = []
    for i, item in enumerate(items):
        obj = check_object(item, f"{name}[{i}]")
        x = check_int(obj.get("X"), f"{name}[{i}].X", lo=0)
        points.append((x, check_int(obj.get("Y"), f"{name}[{i}].Y", lo=0)))
    return points


def _inside(points: list[Point], name: str, image: DecodedImage) -> None:
    for i, (x, y) in enumerate(points):
        if x >= image.width or y >= image.height:
            raise ApiError.param(f"{name}[{i}]", f"({x}, {y}) is outside the image ({image.width}x{image.height};"
                                                 " X < width, Y < height, from the top-left corner)")


def parse_mask_request(action: str, body: dict[str, Any], *, max_images: int, max_pixels: int,
                       allow_private_callbacks: bool = False,
                       known_images: Callable[[str], bool] | None = None) -> MaskRequest:
    """Validate the body of mask action ``action``; ApiError 230 for the first problem (module doc)."""
    if action == "RemoveBackgroundsInBatch":
        raw = check_list(body.get("RawImages"), "RawImages", min_items=1, max_items=max_images)
        sources = [(f"RawImages[{i}]", v) for i, v in enumerate(raw)]
    else:
        sources = [("RawImage", check_str(body.get("RawImage"), "RawImage", non_empty=True))]
    box = _box(body.get("Box")) if action == "RemoveBackground" else None
    include: list[Point] = []
    exclude: list[Point] = []
    if action == "ExtractContents":
        include = _points(body.get("IncludePointList"), "IncludePointList", required=True)
        exclude = _points(body.get("ExcludePointList"), "ExcludePointList", required=False)
    erode = check_int(body.get("ErodeSize"), "ErodeSize", lo=ERODE_SIZE_RANGE.lo, hi=ERODE_SIZE_RANGE.hi,
                      default=DEFAULT_ERODE_SIZE)
    fg = check_int(body.get("ForegroundThreshold"), "ForegroundThreshold", lo=THRESHOLD_RANGE.lo,
                   hi=THRESHOLD_RANGE.hi, default=DEFAULT_FOREGROUND_THRESHOLD)
    bg = check_int(body.get("BackgroundThreshold"), "BackgroundThreshold", lo=THRESHOLD_RANGE.lo,
                   hi=THRESHOLD_RANGE.hi, default=DEFAULT_BACKGROUND_THRESHOLD)
    if bg >= fg:
        raise ApiError.param("BackgroundThreshold", f"must be less than ForegroundThreshold ({fg})")
    hair = check_choice(body.get("HairOptimization"), "HairOptimization", HAIR_OPTIMIZATION_MODES,
                        default=DEFAULT_HAIR_OPTIMIZATION)
    only_mask = check_bool(body.get("OnlyMask"), "OnlyMask", default=False)
    engine = check_str(body.get(ENGINE_FIELD), ENGINE_FIELD, non_empty=True, default=None)
    callback_url = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                      allow_private=allow_private_callbacks)
    priority = check_priority(body)

    images = [decode_image(src, name, max_pixels, known_images) for name, src in sources]
    if box is not None:
        first = images[0]
        if box[2] > first.width or box[3] > first.height:
            raise ApiError.param("Box", f"{list(box)} is not inside the image ({first.width}x{first.height};"
                                        " x2 <= width, y2 <= height)")
    _inside(include, "IncludePointList", images[0])
    _inside(exclude, "ExcludePointList", images[0])
    known = (*COMMON_FIELDS, *MASK_ACTION_FIELDS[action], CALLBACK_URL_FIELD, *TASK_FIELDS)
    return MaskRequest(action=action, images=images, box=box, include_points=include, exclude_points=exclude,
                       erode_size=erode, foreground_threshold=fg, background_threshold=bg, hair_optimization=hair,
                       only_mask=only_mask, engine=engine, callback_url=callback_url, priority=priority,
                       ignored_fields=[n for n in body if n not in known])
