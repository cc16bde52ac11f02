"""How results are encoded: lossless whatever ATELIER_RESULT_PNG_LEVEL says; the level trades time for size."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.contract.settings import Settings
from support.masks import rgb
from workers.job import png_bytes


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
