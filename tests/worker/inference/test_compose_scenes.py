"""The kept areas of GenerateBackgrounds and ModifyMaskedPixels (workers/inference/compose.py): pure functions, no
model: which pixels are kept, which drawn, and the last blend (a foreground's alpha, a blurred mask's edge)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.inference.compose import (
    NEUTRAL_GREY,
    blend_over,
    blur_mask,
    paste_back_pixels,
    prepare_foreground,
    prepare_masked,
)


def noise(w: int, h: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def cutout(w: int = 40, h: int = 30) -> np.ndarray:
    rgba = noise(w, h, 4)
    rgba[..., 3] = 0
    rgba[8:22, 10:30, 3] = 100
    rgba[10:20, 12:28, 3] = 255
    return rgba


def test_a_foreground_of_the_output_size_keeps_its_opaque_pixels_and_blends_the_rest():
    rgba = cutout()
    comp = prepare_foreground(Image.fromarray(rgba, "RGBA"), 40, 30)
    opaque = rgba[..., 3] == 255
    assert np.array_equal(comp.keep, opaque) and comp.figure is None and comp.feather_px == 0
    assert np.array_equal(np.asarray(comp.image)[opaque], rgba[..., :3][opaque])
    assert (np.asarray(comp.image)[rgba[..., 3] == 0] == NEUTRAL_GREY).all(), "the model starts from grey"
    drawn = noise(40, 30, seed=9)
    out = blend_over(paste_back_pixels(drawn.copy(), comp), comp)
    assert np.array_equal(out[opaque], rgba[..., :3][opaque])
    clear = rgba[..., 3] == 0
    assert np.array_equal(out[clear], drawn[clear]), "no feather band: a transparent pixel is the scene's"
    edge = rgba[..., 3] == 100
    expected = (100 * rgba[..., :3][edge].astype(int) + 155 * drawn[edge].astype(int) + 127) // 255
    assert np.array_equal(out[edge], expected)


def test_a_resized_foreground_has_transparent_margins():
    comp = prepare_foreground(Image.fromarray(cutout(), "RGBA"), 80, 80, "ResizeAndFill")
    weight, _ = comp.blend
    assert weight.shape == (80, 80) and not weight[:20].any() and not weight[-20:].any()
    assert comp.keep.any() and not comp.keep[:20].any()


@pytest.mark.parametrize("blur", [0, 1, 3, 12])
def test_the_blur_keeps_the_mask_white_and_reaches_twice_its_width(blur):
    mask = np.zeros((80, 80), dtype=bool)
    mask[30:34, 36:50] = True
    soft = blur_mask(mask, blur)
    assert (soft[mask] == 255).all(), "every white pixel is redrawn entirely"
    reach = np.zeros_like(mask)
    reach[30 - 2 * blur:34 + 2 * blur, 36 - 2 * blur:50 + 2 * blur] = True
    assert not soft[~reach].any()
    if blur:
        assert 0 < soft[31, 50 + blur] < 255, "a fade outside the mask"


def test_a_masked_image_keeps_what_the_blurred_mask_does_not_touch():
    image = noise(48, 40, seed=1)
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:30, 16:32] = 255
    comp = prepare_masked(Image.fromarray(image), Image.fromarray(mask, "L"), 48, 40, mask_blur=4)
    far = np.ones((40, 48), dtype=bool)
    far[2:38, 8:40] = False
    assert comp.keep[far].all() and not comp.keep[10:30, 16:32].any()
    drawn = noise(48, 40, seed=2)
    out = blend_over(paste_back_pixels(drawn.copy(), comp), comp)
    assert np.array_equal(out[comp.keep], image[comp.keep])
    assert np.array_equal(out[mask > 0], drawn[mask > 0]), "the white area is the drawn image"


def test_outpainting_draws_the_margins_and_keeps_the_image_exactly():
    image = noise(30, 40, seed=3)
    comp = prepare_masked(Image.fromarray(image), None, 70, 40, "ResizeAndFill", mask_blur=12)
    assert np.array_equal(np.asarray(comp.image)[:, 20:50], image)
    assert comp.keep[:, 20:50].all() and not comp.keep[:, :20].any() and not comp.keep[:, 50:].any()
    out = blend_over(paste_back_pixels(noise(70, 40, seed=4), comp), comp)
    assert np.array_equal(out[:, 20:50], image)


def test_an_inverted_missing_mask_redraws_everything():
    comp = prepare_masked(Image.fromarray(noise(16, 16)), None, 16, 16, invert_mask=True, mask_blur=2)
    assert not comp.keep.any()
