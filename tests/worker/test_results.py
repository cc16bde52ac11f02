"""How results are encoded: lossless whatever ATELIER_RESULT_PNG_LEVEL says; the level trades time for size."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.contract.settings import Settings
from support.masks import rgb
from workers.inference.inpaint import to_bytes
from workers.lifecycle.stored import png_bytes


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_level_is_lossless(level):
    image = Image.fromarray(rgb("photo_mannequin.jpg"))
    back = Image.open(io.BytesIO(png_bytes(image, level)))
    assert back.format == "PNG" and np.array_equal(np.asarray(back.convert("RGB")), np.asarray(image))


def test_the_level_trades_size_and_defaults_to_fast():
    image = Image.fromarray(rgb("photo_mannequin.jpg"))
    sizes = [len(png_bytes(image, level)) for level in (0, 1, 9)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert Settings().result_png_level == 1
    with pytest.raises(ValueError):
        Settings(result_png_level=10)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (256, 384)])
def test_every_mode_and_size_decodes_to_the_same_pixels(mode, size):
    rng = np.random.default_rng(size[0] * 31 + size[1])
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)
    for level in (1, 7):
        for given in (image, np.asarray(image)):  # an image, or its pixels as the worker's results are
            back = Image.open(io.BytesIO(png_bytes(given, level)))
            back.load()
            assert back.mode == mode and back.size == size
            np.testing.assert_array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32),
                                    np.zeros((4,), np.uint8)])
def test_pixels_of_no_png_colour_type_are_refused(pixels):
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(pixels, 1)


def test_other_modes_are_written_as_rgb_or_rgba():
    palette = Image.new("P", (5, 4))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    back = Image.open(io.BytesIO(png_bytes(palette, 1)))
    assert back.mode == "RGB" and back.getpixel((1, 1)) == (255, 0, 0) and back.getpixel((0, 0)) == (0, 0, 0)
    with pytest.raises(ValueError, match="0..9"):
        png_bytes(palette, 10)


def test_pipeline_floats_become_the_bytes_diffusers_would_give():
    """to_bytes (OpenCV on the pipeline's planar floats) = diffusers' numpy_to_pil rounding, for every value
    in 0..1 near a rounding half, cropped or not, and for arrays in either memory order."""
    halves = (np.arange(256, dtype=np.float32) + 0.5) / 255
    near = np.concatenate([np.nextafter(halves, -np.inf), halves, np.nextafter(halves, np.inf), [0.0, 1.0]])
    near = near[near <= 1]  # the pipeline's output is clamped to 0..1
    values = np.resize(np.concatenate([near, np.random.default_rng(0).random(40_000, dtype=np.float32)]),
                       3 * 96 * 160).astype(np.float32)
    planar = torch.from_numpy(values.reshape(1, 3, 96, 160)).permute(0, 2, 3, 1).numpy()[0]  # as diffusers gives
    expected = (planar * 255).round().astype("uint8")
    for image in (planar, np.ascontiguousarray(planar)):
        for height, width in ((96, 160), (90, 155)):
            pixels = to_bytes(image, height, width)
            assert pixels.flags.c_contiguous and pixels.dtype == np.uint8
            assert np.array_equal(pixels, expected[:height, :width])
