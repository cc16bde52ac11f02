"""RemoveContents' geometry (workers/inference/erase.py): the Mask read (white = erase, InvertMask, another size,
alpha), the feathered weight exactly 0 farther than MaskBlur (Chebyshev) from the mask, the crop, the blend leaving
every pixel of weight 0 bit for bit; and the Eraser file check (spandrel): the demo LaMa recognised and run, a file of
another purpose refused."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from workers.demo.eraser import ensure_demo_eraser
from workers.demo.upscaler import ensure_demo_upscaler
from workers.inference.erase import (
    MIN_CONTEXT,
    EraserFileError,
    blend,
    erase_crop,
    erase_mask,
    feathered,
    load_eraser,
)


def _mask() -> np.ndarray:
    m = np.zeros((60, 80), bool)
    m[20:30, 30:45] = True
    m[45, 70] = True
    return m


@pytest.mark.parametrize("blur", [0, 1, 5, 12, 64])
def test_the_weight_is_one_on_the_mask_and_zero_beyond_maskblur(blur):
    m = _mask()
    w = feathered(m, blur)
    assert w.dtype == np.float32 and w.shape == m.shape and (w[m] == 1).all()
    reach = cv2.dilate(m.astype(np.uint8), np.ones((2 * blur + 1, 2 * blur + 1), np.uint8)) > 0
    assert (w[~reach] == 0).all() and (w >= 0).all() and (w <= 1).all()
    if blur >= 5:  # feathered: partial weights just outside the mask
        ring = reach & ~m
        assert ((w[ring] > 0) & (w[ring] < 1)).any()


def test_the_mask_is_read_white_inverted_resized_and_through_alpha():
    grey = np.zeros((30, 40), np.uint8)
    grey[5:10, 5:15] = 200
    grey[20, 30] = 127                                     # below the white level
    m = erase_mask(Image.fromarray(grey, "L"), (40, 30), invert=False)
    assert m.sum() == 50 and not m[20, 30]
    assert (erase_mask(Image.fromarray(grey, "L"), (40, 30), invert=True) == ~m).all()
    big = erase_mask(Image.fromarray(grey, "L"), (80, 60), invert=False)
    assert big.shape == (60, 80) and big.sum() == 200     # nearest neighbour: each pixel 2 x 2
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:15, :, 3] = 255                                  # white, but transparent below row 15
    m = erase_mask(Image.fromarray(rgba, "RGBA"), (40, 30), invert=False)
    assert m[:15].all() and not m[15:].any()


def test_the_crop_holds_the_weight_with_context_and_the_blend_keeps_weight_zero_pixels():
    w = feathered(_mask(), 3)
    ys, xs = np.nonzero(w)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (27, 17, 73, 48)    # the weight's box: 47 x 32
    # grown by max(MIN_CONTEXT, 47 / 4) = 16 each way, cut to the image
    assert erase_crop(w) == (27 - MIN_CONTEXT, 17 - MIN_CONTEXT, 80, 60)
    assert erase_crop(np.zeros((10, 10), np.float32)) is None
    rng = np.random.default_rng(0)
    image, other = (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2))
    out = blend(image, other, w)
    assert np.array_equal(out[w == 0], image[w == 0]) and np.array_equal(out[w == 1], other[w == 1])


def test_the_demo_eraser_is_lama_to_spandrel_and_fills_only_the_hole(tmp_path_factory):
    models = Path.home() / ".cache" / "atelier" / "test-models"   # built once per machine, as the e2e tests do
    eraser = load_eraser(ensure_demo_eraser(models / "demo-eraser"), "cpu", torch.float32)
    assert eraser.name == "LaMa" and eraser.dtype == torch.float32
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)   # not a multiple of 8: padded, cut back
    hole = np.zeros((50, 45), bool)
    hole[10:30, 10:20] = True
    out = eraser.erase(crop, hole)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.abs(out[~hole].astype(int) - crop[~hole].astype(int)).max() <= 1   # LaMa keeps what is not a hole
    assert np.abs(out[hole].astype(int) - 128).mean() < 20                      # the demo's near-flat grey
    with pytest.raises(EraserFileError, match="not inpainting"):
        load_eraser(ensure_demo_upscaler(tmp_path_factory.mktemp("up") / "demo-upscaler"), "cpu", torch.float32)
    with pytest.raises(EraserFileError, match="does not exist"):
        load_eraser(tmp_path_factory.mktemp("none") / "lama.pt", "cpu", torch.float32)
