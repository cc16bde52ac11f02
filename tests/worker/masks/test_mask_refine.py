"""The refinement rules of the mask actions (workers/masks/refine.py, docs/masks.md "Refinement"), each on a
mask whose answer is known."""
from __future__ import annotations

import numpy as np
import pymatting
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.masks import refine


def ramp(width: int = 256) -> np.ndarray:
    """A soft mask whose value is its column: 0 .. 255 from left to right."""
    return np.tile(np.arange(width, dtype=np.uint8), (8, 1))


@given(fg=st.integers(1, 255), bg=st.integers(0, 254), v=st.integers(0, 255))
def test_thresholds_as_documented(fg, bg, v):
    if bg >= fg:
        return
    out = int(refine.apply_thresholds(np.array([[v]], np.uint8), fg, bg)[0, 0])
    if v >= fg:
        assert out == 255
    elif v <= bg:
        assert out == 0
    else:
        assert out == round((v - bg) * 255 / (fg - bg))


def test_thresholds_move_the_edge():
    soft = ramp()
    wide = refine.apply_thresholds(soft, 240, 15)[0]
    narrow = refine.apply_thresholds(soft, 140, 120)[0]
    assert (wide == 255).sum() == 16 and (wide == 0).sum() == 16          # 240..255 sure, 0..15 background
    assert (narrow == 255).sum() == 116 and (narrow == 0).sum() == 121
    assert ((narrow > 0) & (narrow < 255)).sum() == 19                     # the band between is the ramp


@pytest.mark.parametrize("erode", [0, 1, 2, 8, 15, 40])
def test_erode_size_blurs_the_edge_symmetrically_about_the_outline(erode):
    mask = np.zeros((120, 120), np.uint8)
    mask[:, :60] = 255                                                     # object left of column 60
    row = refine.soften_edge(mask, erode)[60].astype(int)
    k = erode | 1
    if k == 1:
        assert np.array_equal(row, mask[60])
        return
    half = k // 2
    assert (row[: 60 - half] == 255).all() and (row[60 + half:] == 0).all()   # a band ErodeSize wide ...
    band = row[60 - half: 60 + half]
    assert (np.diff(band) <= 0).all() and band[0] > band[-1]               # ... fading out ...
    assert row[59] > 127.5 > row[60] and abs(row[59] + row[60] - 255) <= 2  # ... symmetric about the edge
    assert np.array_equal(refine.refine(mask, foreground=240, background=15, erode_size=erode), row[None].repeat(
        120, 0).astype(np.uint8))


def test_trimap_and_matting_follow_the_thresholds():
    soft = np.zeros((40, 60), np.uint8)
    soft[:, :25] = 255
    soft[:, 25:35] = 128                                                   # unsure
    tri = refine.trimap(soft, 240, 15, 4)
    assert set(np.unique(tri)) == {0, 128, 255}
    assert (tri[:, :21] == 255).all() and (tri[:, 25:39] == 128).all() and (tri[:, 39:] == 0).all()
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (200, 40, 40)                                          # the object's true edge: column 30
    image[:, 30:] = (30, 30, 200)
    alpha, colours = refine.hair_matting(image, soft, 240, 15, 4, pymatting)
    assert alpha.shape == soft.shape and colours.shape == image.shape
    assert (alpha[:, :28] > 200).all() and (alpha[:, 32:] < 55).all()      # matting found the colour edge


def test_drop_specks_keeps_the_objects():
    mask = np.zeros((50, 50), np.uint8)
    mask[5:20, 5:20] = 255
    mask[30:45, 30:45] = 255
    mask[0, 49] = 255
    clean = refine.drop_specks(mask)
    assert clean[0, 49] == 0 and clean[35, 35] == 255 and clean[10, 10] == 255


def test_cutout_and_matting_modes():
    image = np.full((4, 4, 3), 9, np.uint8)
    alpha = np.full((4, 4), 7, np.uint8)
    out = refine.cutout(image, alpha)
    assert out.shape == (4, 4, 4) and (out[..., 3] == 7).all() and (out[..., :3] == 9).all()
    assert refine.hair_matting_on("on", "grabcut") and not refine.hair_matting_on("off", "rembg")
    assert refine.hair_matting_on("auto", "rembg") and not refine.hair_matting_on("auto", "sam")


def test_the_soft_edge_takes_the_objects_colours_not_the_backdrops():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (200, 30, 30)                      # the object
    image[:, 20:] = (250, 250, 250)                    # a white backdrop
    alpha = refine.soften_edge(np.where(np.arange(40) < 20, 255, 0).astype(np.uint8)[None].repeat(20, 0), 9)
    colours = refine.decontaminate(image, alpha)
    band = (alpha > 0) & (alpha < 255)
    assert band.any() and (colours[band] == (200, 30, 30)).all()       # no white halo in the fading edge
    assert np.array_equal(colours[alpha == 255], image[alpha == 255])   # the object itself untouched
    assert np.array_equal(refine.decontaminate(image, np.full((20, 40), 9, np.uint8)), image)  # nothing opaque
