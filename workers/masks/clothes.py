"""The automatic clothes mask: a GenerateFromMannequin sent without ``Mannequin.ClothesMaskIndex`` has its
ClothesSegmenter find the garment on the mannequin photo. Pure of the task's life: the generation job
(:mod:`workers.jobs.generate`) gets the engine from the model cache, calls :func:`clothes_mask` and stores the
mask with the task's results.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from workers.inference.compose import NEUTRAL_GREY
from workers.masks.engines import garment_mask
from workers.masks.refine import drop_specks

#: Alpha below which a pixel of a cut-out mannequin photo is transparent: never garment.
OPAQUE_FROM = 128


class NoGarmentFound(Exception):
    """The segmenter found none of the garment classes on the photo."""


def clothes_mask(engine, mannequin: Image.Image, classes: list[int] | tuple[int, ...]) -> np.ndarray:
    """The garment mask (uint8, 255 = garment) of ``mannequin`` by ``engine`` (a ClothesSegmenter engine of
    :mod:`workers.masks.engines`): its ``classes`` (class ids) count as garment, small specks are dropped, and the
    transparent part of a cut-out is never garment (a cut-out is laid on :data:`NEUTRAL_GREY` first, as the
    composition does). Raises :class:`~workers.masks.engines.EngineError` when the engine fails and
    :class:`NoGarmentFound` when nothing is left."""
    rgba = mannequin.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (*NEUTRAL_GREY, 255))
    flat.alpha_composite(rgba)
    labels = engine.classes(np.asarray(flat.convert("RGB")))
    mask = drop_specks(garment_mask(labels, classes))
    mask[np.asarray(rgba.getchannel("A")) < OPAQUE_FROM] = 0
    if not mask.any():
        raise NoGarmentFound(", ".join(map(str, classes)))
    return mask
