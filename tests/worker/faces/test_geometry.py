"""The geometry of a face redraw (workers/faces/geometry.py), without a model: the face box in whole pixels, the crop
(square-ish, with context, inside the image, holding the blend region), the size it is redrawn at, the feathered
blend mask (1 on the face, 0 beyond the blend margin and on every kept pixel), the region the model may redraw and
the paste-back that leaves every pixel outside the mask bit-exact."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.faces.geometry import (
    BLEND_MARGIN,
    CROP_MARGIN,
    MIN_BLEND_PX,
    blend_margin,
    blend_mask,
    box_size,
    crop_box,
    face_box,
    grow,
    paste_crop,
    redraw_region,
    redraw_size,
)


def test_the_face_box_in_whole_pixels_rounded_outward_and_inside_the_image():
    assert face_box((10.2, 20.7, 50.1, 70.0), 100, 100) == (10, 20, 51, 70)
    assert face_box((-5.5, -3.0, 30.2, 40.9), 100, 100) == (0, 0, 31, 41)       # past the top-left corner
    assert face_box((80.0, 90.0, 130.0, 140.0), 100, 100) == (80, 90, 100, 100)  # past the bottom-right one
    left, top, right, bottom = face_box((120.0, 5.0, 150.0, 40.0), 100, 100)   # outside: empty
    assert right <= left


def test_the_blend_margin_is_a_quarter_of_the_face_at_least_4_pixels():
    assert BLEND_MARGIN == 0.25 and MIN_BLEND_PX == 4
    assert blend_margin((0.0, 0.0, 80.0, 100.0)) == 25
    assert blend_margin((0.0, 0.0, 81.0, 101.0)) == math.ceil(0.25 * 101)
    assert blend_margin((0.0, 0.0, 10.0, 12.0)) == 4


def test_the_crop_is_a_square_of_twice_the_face_centred_on_it():
    box = (200.0, 100.0, 280.0, 200.0)  # 80 x 100, centre (240, 150)
    crop = crop_box(box, 1000, 1000)
    side = math.ceil(100 * (1 + 2 * CROP_MARGIN))
    assert crop == (240 - side // 2, 150 - side // 2, 240 + side // 2, 150 + side // 2) and side == 200


def test_a_crop_at_the_edge_moves_inside_the_image_and_a_small_image_cuts_it():
    assert crop_box((0.0, 10.0, 80.0, 110.0), 1000, 1000) == (0, 0, 200, 200)     # moved, still square
    assert crop_box((900.0, 880.0, 990.0, 990.0), 1000, 1000) == (780, 780, 1000, 1000)
    assert crop_box((20.0, 10.0, 100.0, 110.0), 150, 1000) == (0, 0, 150, 200)   # the image is narrower
    assert crop_box((-30.0, -40.0, 50.0, 60.0), 120, 90) == (0, 0, 120, 90)


@settings(max_examples=200, deadline=None)
@given(st.integers(8, 600), st.integers(8, 600), st.floats(-50, 650), st.floats(-50, 650), st.floats(6, 300),
       st.floats(0.5, 1.5))
def test_the_crop_lies_inside_the_image_and_holds_the_blend_region(width, height, x, y, side, aspect):
    box = (x, y, x + side * aspect, y + side)
    inside = face_box(box, width, height)
    crop = crop_box(box, width, height)
    left, top, right, bottom = crop
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    if inside[2] > inside[0] and inside[3] > inside[1]:  # a face at least partly in the image
        gl, gt, gr, gb = grow(inside, blend_margin(box), width, height)
        assert left <= gl and top <= gt and gr <= right and gb <= bottom


@pytest.mark.parametrize("crop, native, size", [
    ((200, 200), (512, 512), (512, 512)),      # a small square face crop is drawn at the native size
    ((60, 60), (512, 512), (512, 512)),
    ((120, 200), (512, 512), (400, 664)),      # its aspect ratio at the native area, multiples of 8
    ((900, 900), (1024, 1024), (1024, 1024)),
    ((100, 100), (256, 384), (312, 312)),      # a model's own native size: its area
])
def test_a_crop_is_redrawn_at_the_native_area_with_its_aspect_ratio(crop, native, size):
    got = redraw_size(*crop, native)
    assert got == size and all(side % 8 == 0 for side in got)
    assert abs(got[0] * got[1] / (native[0] * native[1]) - 1) < 0.05


def _distance(crop, box) -> np.ndarray:
    """The Euclidean distance from each pixel of ``crop`` to ``box``, pixel by pixel (the reference)."""
    left, top, right, bottom = crop
    out = np.zeros((bottom - top, right - left))
    for y in range(top, bottom):
        for x in range(left, right):
            dx = max(box[0] - x, 0, x - (box[2] - 1))
            dy = max(box[1] - y, 0, y - (box[3] - 1))
            out[y - top, x - left] = math.hypot(dx, dy)
    return out


def test_the_blend_mask_is_1_on_the_face_and_fades_to_0_at_the_blend_margin():
    crop, box, margin = (0, 0, 90, 80), (30, 25, 60, 55), 12
    alpha = blend_mask(crop, box, margin)
    d = _distance(crop, box)
    assert alpha.dtype == np.float32 and alpha.shape == (80, 90)
    assert (alpha[d == 0] == 1).all()
    assert (alpha[d >= margin] == 0).all() and (alpha[d < margin] > 0).all()
    assert ((0 < alpha[(d > 0) & (d < margin)]) & (alpha[(d > 0) & (d < margin)] < 1)).all()
    row = alpha[40, 60:]  # along a ray out of the box (column 60 is 1 pixel away): never increasing
    assert (np.diff(row) <= 0).all() and row[0] > row[5] > row[10] > 0 == row[11]


def test_the_blend_mask_is_0_on_every_kept_pixel():
    crop, box = (10, 10, 70, 80), (25, 30, 55, 60)
    keep = np.zeros((70, 60), dtype=bool)
    keep[35:, :] = True           # the clothes cover the bottom of the crop, the chin included
    keep[5, 7] = True             # and one stray pixel in the margin
    alpha = blend_mask(crop, box, 10, keep)
    assert (alpha[keep] == 0).all() and (alpha[~keep] == blend_mask(crop, box, 10)[~keep]).all()
    with pytest.raises(ValueError, match="bool array of the crop's shape"):
        blend_mask(crop, box, 10, keep[1:])


def test_the_region_the_model_redraws_covers_every_pixel_the_mask_reaches():
    alpha = blend_mask((0, 0, 50, 60), (15, 20, 35, 40), 6)
    for size in ((200, 240), (40, 48), (64, 64)):
        region = redraw_region(alpha, size)
        assert region.shape == (size[1], size[0]) and region.dtype == bool
        back = redraw_region(region.astype(np.float32), (50, 60))  # what the region covers, at the crop's size
        assert back[alpha > 0].all()
        assert not region[0, 0] and region[size[1] // 2, size[0] // 2]


def test_the_paste_back_blends_by_the_mask_and_leaves_every_other_pixel_bit_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    before = image.copy()
    crop = (20, 10, 80, 70)
    redrawn = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    alpha = blend_mask(crop, (35, 25, 65, 55), 8)
    out = paste_crop(image, redrawn, crop, alpha)
    assert out is image
    region, old = out[10:70, 20:80], before[10:70, 20:80]
    assert np.array_equal(region[alpha == 1], redrawn[alpha == 1])
    assert np.array_equal(region[alpha == 0], old[alpha == 0])
    outside = np.ones((100, 120), dtype=bool)
    outside[10:70, 20:80] = False
    assert np.array_equal(out[outside], before[outside])
    mid = (alpha > 0.3) & (alpha < 0.7)
    want = np.rint(alpha[mid][:, None] * redrawn[mid] + (1 - alpha[mid][:, None]) * old[mid].astype(float))
    assert np.abs(region[mid].astype(int) - want).max() <= 1
    with pytest.raises(ValueError):
        paste_crop(image, redrawn[1:], crop, alpha)


def test_the_face_size_is_the_longer_side():
    assert box_size((10.0, 20.0, 50.0, 100.0)) == 80.0 and box_size((0.0, 0.0, 90.0, 30.0)) == 90.0
