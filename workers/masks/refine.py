"""From an engine's raw mask to the answer's: thresholds, ``ErodeSize``, hair matting, the cut-out.

Pure functions on numpy arrays (no model, no torch), so each rule is tested on its own. A mask is a
``uint8`` array ``H x W``, 255 = the object. What each field does (docs/masks.md "Refinement"):

* ``ForegroundThreshold`` (fg) and ``BackgroundThreshold`` (bg), on the engine's soft mask ``v``: ``v >= fg``
  is surely the object (255), ``v <= bg`` surely background (0); between them the mask is ``v`` stretched
  linearly from ``bg`` (0) to ``fg`` (255). The gateway requires ``fg > bg``.
* ``ErodeSize`` e ("edge blur pixels"): the edge is softened by a Gaussian blur ``e`` pixels wide (made odd;
  sigma e/6), so a straight edge becomes a ramp ``e`` pixels wide symmetric about it: the outline (the 50%
  line) stays where the engine put it and the cut-out blends into any new background. The cut-out's colours
  in the ramp are the nearest opaque pixel's (:func:`decontaminate`), so no halo of the old backdrop shows.
  ``0``: the edge as the thresholds left it. With hair matting, ``e`` is also how far the sure object and the
  sure background are eroded before matting: the unknown band around the edge is about ``2e`` pixels wide.
* hair matting (``HairOptimization``, see :func:`hair_matting`): from the same thresholds a trimap is made
  (sure object and sure background each eroded by ``e`` pixels, the rest unknown) and the unknown band is
  solved by closed-form alpha matting (PyMatting), which follows fine strands such as hair that a
  segmentation mask cuts straight through; the cut-out's colours in that band are estimated too, so no
  halo of the old background is left.
"""
from __future__ import annotations

import cv2
import numpy as np

#: ``HairOptimization: auto`` turns matting on for these engines (their soft masks carry hair detail).
MATTING_ENGINES: tuple[str, ...] = ("rembg",)
#: Matting is skipped (and the task's Notes say so) above this many pixels: its cost grows faster than the image.
MATTING_MAX_PIXELS = 4_000_000


def hair_matting_on(mode: str, engine: str) -> bool:
    """Whether ``HairOptimization`` ``mode`` (``auto``/``on``/``off``) runs matting for ``engine``."""
    return mode == "on" or (mode == "auto" and engine in MATTING_ENGINES)


def apply_thresholds(soft: np.ndarray, foreground: int, background: int) -> np.ndarray:
    """``soft >= foreground`` -> 255, ``soft <= background`` -> 0, linear in between."""
    v = soft.astype(np.float32)
    span = max(1, foreground - background)
    out = np.clip((v - background) * (255.0 / span), 0, 255)
    out[v >= foreground] = 255
    out[v <= background] = 0
    return np.rint(out).astype(np.uint8)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def soften_edge(mask: np.ndarray, erode_size: int) -> np.ndarray:
    """Soften the edge over ``erode_size`` pixels: a Gaussian blur whose kernel is ``erode_size`` pixels wide
    (made odd; sigma a sixth of it, so the kernel holds +-3 sigma). A straight edge becomes a ramp from 255 to
    0 exactly that wide, symmetric about the edge, so the object's outline (the 50% line) stays where the
    engine put it; most of the fall happens in the middle third of the ramp."""
    k = erode_size | 1
    if k <= 1:
        return mask
    return cv2.GaussianBlur(mask, (k, k), k / 6.0, borderType=cv2.BORDER_REPLICATE)


def trimap(soft: np.ndarray, foreground: int, background: int, erode_size: int) -> np.ndarray:
    """The trimap of hair matting: 255 sure object, 0 sure background, 128 unknown."""
    sure_fg = (soft >= foreground).astype(np.uint8)
    sure_bg = (soft <= background).astype(np.uint8)
    if erode_size > 0:
        sure_fg = cv2.erode(sure_fg, _disc(erode_size), borderType=cv2.BORDER_REPLICATE)
        sure_bg = cv2.erode(sure_bg, _disc(erode_size), borderType=cv2.BORDER_REPLICATE)
    out = np.full(soft.shape, 128, np.uint8)
    out[sure_fg > 0] = 255
    out[sure_bg > 0] = 0
    return out


def hair_matting(image: np.ndarray, soft: np.ndarray, foreground: int, background: int,
                 erode_size: int, matting) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, foreground colours) by closed-form matting of the trimap's unknown band. ``image`` is RGB
    ``uint8``; ``matting`` is the :mod:`pymatting` module (imported by the caller: it compiles on first use)."""
    tri = trimap(soft, foreground, background, erode_size)
    if not (tri == 128).any() or not (tri == 255).any() or not (tri == 0).any():
        return apply_thresholds(soft, foreground, background), image  # nothing to solve
    img = image.astype(np.float64) / 255.0
    alpha = matting.estimate_alpha_cf(img, tri.astype(np.float64) / 255.0)
    alpha = np.clip(alpha, 0.0, 1.0)
    colours = matting.estimate_foreground_ml(img, alpha)
    return (np.rint(alpha * 255).astype(np.uint8),
            np.rint(np.clip(colours, 0.0, 1.0) * 255).astype(np.uint8))


def refine(soft: np.ndarray, *, foreground: int, background: int, erode_size: int) -> np.ndarray:
    """The answer's mask without matting: thresholds, then :func:`soften_edge`."""
    return soften_edge(apply_thresholds(soft, foreground, background), erode_size)


def decontaminate(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image`` (RGB) with each pixel of the soft edge (alpha < 255) given the colour of the nearest fully
    opaque pixel, so that a cut-out's fading edge shows the object's colours, not a halo of the old
    backdrop. Unchanged where nothing is fully opaque."""
    soft = (alpha < 255).astype(np.uint8)
    if not soft.any() or soft.all():
        return image
    _, labels = cv2.distanceTransformWithLabels(soft, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(soft == 0)  # the opaque pixels, labelled 1.. in this (row-major) order
    nearest = labels - 1
    out = image[..., :3].copy()
    band = soft > 0
    out[band] = image[ys[nearest[band]], xs[nearest[band]], :3]
    return out


def cutout(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGBA ``uint8`` array: ``image`` (RGB) with ``alpha`` as its alpha channel."""
    return np.dstack([image[..., :3], alpha])


def drop_specks(mask: np.ndarray, min_fraction: float = 0.002) -> np.ndarray:
    """A binary-ish mask without its parts smaller than ``min_fraction`` of the image (noise, dust)."""
    binary = (mask > 127).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 2:
        return mask
    small = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] < min_fraction * mask.size]
    return np.where(np.isin(labels, small), 0, mask).astype(np.uint8)
