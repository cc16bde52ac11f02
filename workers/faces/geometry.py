"""The geometry of a face redraw, in pure functions (numpy and OpenCV; no torch, no model), so that every rule
here is testable without one:

* :func:`face_box`: a detected face's box (:attr:`workers.faces.detect.Face.box`, floats) in whole pixels, inside
  the image;
* :func:`blend_margin`: how far beyond the face box the redrawn pixels reach (:data:`BLEND_MARGIN` of the face's
  longer side); :func:`crop_box`: the crop the model redraws, square around the face with :data:`CROP_MARGIN` of
  context on every side (clipped to the image), always holding the face box grown by the blend margin;
* :func:`redraw_size`: the crop's size at the Main model's native area (its aspect ratio, multiples of 8);
* :func:`blend_mask`: the feathered weight of the redrawn pixels in the crop: 1 on the face box, falling smoothly
  to 0 at the blend margin, **0 beyond it and 0 on every kept pixel** (the clothes of a generation);
* :func:`redraw_region`: that mask's support brought to the redraw size (what the model may redraw);
* :func:`paste_crop`: the redrawn crop blended back; every pixel where the mask is 0 keeps its value, bit for bit.

A detector's box is ``(left, top, right, bottom)`` in floats (:data:`FloatBox`); the boxes made here are whole
pixels, right and bottom exclusive (numpy's ``image[top:bottom, left:right]``: :data:`Box`).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from app.contract.limits import SIZE_MULTIPLE, SIZE_RANGE

Box = tuple[int, int, int, int]
FloatBox = tuple[float, float, float, float]

#: The context a face is redrawn with: the crop reaches this fraction of the face's longer side beyond its box on
#: every side (a crop about twice the face: hair, ears, neck and shoulders tell the model what it draws).
CROP_MARGIN = 0.5
#: The blend margin: the redrawn pixels reach this fraction of the face's longer side beyond its box (MTCNN's box
#: runs from the eyebrows to the chin, so the forehead and the jaw line are redrawn with the face and fade out).
BLEND_MARGIN = 0.25
#: The least blend margin, in pixels (a small face still gets a seam that fades).
MIN_BLEND_PX = 4


def box_size(box: FloatBox) -> float:
    """A face box's longer side (what a model's ``faces.min_size`` and ``max_size`` are compared with)."""
    return max(box[2] - box[0], box[3] - box[1])


def face_box(box: FloatBox, width: int, height: int) -> Box:
    """A detected face's ``box`` in whole pixels (rounded outward), clipped to a ``width`` x ``height`` image; empty
    (right <= left or bottom <= top) when the face lies outside it."""
    left, top, right, bottom = box
    return (min(width, max(0, math.floor(left))), min(height, max(0, math.floor(top))),
            max(0, min(width, math.ceil(right))), max(0, min(height, math.ceil(bottom))))


def blend_margin(box: FloatBox) -> int:
    """How far beyond a face's ``box``, in pixels, the redrawn pixels reach: :data:`BLEND_MARGIN` of its longer
    side, at least :data:`MIN_BLEND_PX`."""
    return max(MIN_BLEND_PX, math.ceil(BLEND_MARGIN * box_size(box)))


def grow(box: Box, by: int, width: int, height: int) -> Box:
    """``box`` grown by ``by`` pixels on every side, clipped to the image."""
    left, top, right, bottom = box
    return max(0, left - by), max(0, top - by), min(width, right + by), min(height, bottom + by)


def _span(center: float, side: int, limit: int) -> tuple[int, int]:
    """A run of ``side`` pixels centred on ``center``, moved inside ``0..limit`` (cut to it when longer)."""
    if side >= limit:
        return 0, limit
    start = min(max(0, round(center - side / 2)), limit - side)
    return start, start + side


def crop_box(box: FloatBox, width: int, height: int) -> Box:
    """The crop a face (its detector ``box``) is redrawn in: a square centred on the box, of side its longer side
    plus :data:`CROP_MARGIN` of it on each side, moved inside the image (not cut, while the image is large enough;
    cut to the image's side where it is not), and always holding the face box grown by :func:`blend_margin`."""
    side = math.ceil(box_size(box) * (1 + 2 * CROP_MARGIN))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    (left, right), (top, bottom) = _span(cx, side, width), _span(cy, side, height)
    gl, gt, gr, gb = grow(face_box(box, width, height), blend_margin(box), width, height)
    return min(left, gl), min(top, gt), max(right, gr), max(bottom, gb)


def redraw_size(width: int, height: int, native: tuple[int, int]) -> tuple[int, int]:
    """The size a ``width`` x ``height`` crop is redrawn at: the Main model's native area (``native``, its
    ``(width, height)``) with the crop's aspect ratio, each side a multiple of 8 within the request sizes (a small
    face is redrawn larger than it is: what makes its features come out)."""
    area, aspect = native[0] * native[1], width / height
    lo, hi = int(SIZE_RANGE.lo), int(SIZE_RANGE.hi)
    return tuple(min(hi, max(lo, SIZE_MULTIPLE * round(side / SIZE_MULTIPLE)))  # type: ignore[return-value]
                 for side in (math.sqrt(area * aspect), math.sqrt(area / aspect)))


def blend_mask(crop: Box, box: Box, margin: int, keep: np.ndarray | None = None) -> np.ndarray:
    """The weight (float32, the crop's height x width, 0..1) of the redrawn pixels in ``crop``: 1 on the face
    ``box``; beyond it, at the Euclidean distance d (in pixels) from the box, ``smoothstep(1 - d / margin)``, which
    falls to 0 at d = ``margin`` and stays 0 farther; and 0 on every pixel ``keep`` marks (a bool array of the
    crop's shape: the clothes of a generation, kept exactly), whatever its distance."""
    if margin < 1:
        raise ValueError(f"margin must be >= 1, got {margin}")
    left, top, right, bottom = crop
    xs = np.arange(left, right, dtype=np.float32)
    ys = np.arange(top, bottom, dtype=np.float32)
    dx = np.maximum(np.maximum(box[0] - xs, xs - (box[2] - 1)), 0)
    dy = np.maximum(np.maximum(box[1] - ys, ys - (box[3] - 1)), 0)
    s = np.clip(1 - np.hypot(dy[:, None], dx[None, :]) / margin, 0, 1)
    alpha = (s * s * (3 - 2 * s)).astype(np.float32)
    if keep is not None:
        if keep.shape != alpha.shape or keep.dtype != bool:
            raise ValueError(f"keep must be a bool array of the crop's shape {alpha.shape}, got {keep.dtype}"
                             f" {keep.shape}")
        alpha[keep] = 0
    return alpha


def redraw_region(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Where the model may redraw the crop at ``size`` (``(width, height)``): every pixel that covers a pixel of
    ``alpha`` above 0 (a bool array of that size); everything else is kept as it was."""
    support = (alpha > 0).astype(np.uint8) * np.uint8(255)
    return cv2.resize(support, size, interpolation=cv2.INTER_AREA) > 0


def paste_crop(image: np.ndarray, redrawn: np.ndarray, crop: Box, alpha: np.ndarray) -> np.ndarray:
    """Blend ``redrawn`` (uint8, the crop's height x width x 3) into ``image`` (uint8, height x width x 3, written in
    place and returned) at ``crop``, with the weight ``alpha`` (:func:`blend_mask`): ``rint(alpha * redrawn +
    (1 - alpha) * image)`` where alpha is above 0; every other pixel is left as it is, bit for bit."""
    left, top, right, bottom = crop
    region = image[top:bottom, left:right]
    if redrawn.shape != region.shape or alpha.shape != region.shape[:2]:
        raise ValueError(f"a {redrawn.shape} crop and a {alpha.shape} mask for a {region.shape} region")
    touched = alpha > 0
    weight = alpha[touched][:, None]
    mixed = weight * redrawn[touched].astype(np.float32) + (1 - weight) * region[touched].astype(np.float32)
    region[touched] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return image
