"""The playground's GenerateBackgrounds mode in a real browser (Chromium via Playwright) against the live gateway and
worker: a transparent cut-out uploaded, a prompt, Generate; the result in the gallery keeps the cut-out's opaque
pixels exactly; a photo without alpha is refused at the photo. And ModifyMaskedPixels: paint, Generate, the rest
kept."""
from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from support.browser import fetch_image, rgb

try:
    from playwright.sync_api import expect
except ImportError:   # the `browser` fixture then skips every test
    expect = None

pytestmark = pytest.mark.slow


def _cutout(path) -> np.ndarray:
    rgba = np.zeros((96, 64, 4), dtype=np.uint8)
    rgba[..., :3] = np.random.default_rng(5).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    rgba[20:76, 16:48, 3] = 255
    rgba[18:20, 16:48, 3] = 120
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_a_scene_is_drawn_behind_a_cut_out(ui, tmp_path):
    ui.by("task-kind").select_option("backgrounds")
    expect(ui.by("mask-panel")).to_be_hidden()
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 96), (90, 120, 30)).save(photo)
    ui.load_mannequin(photo)
    ui.by("positive-prompts").fill("a marble table")
    ui.generate()
    expect(ui.by("error-mannequin")).to_contain_text("TransparentForeground.ImageIndex")
    expect(ui.by("error-mannequin")).to_contain_text("no alpha channel")

    path = tmp_path / "cutout.png"
    rgba = _cutout(path)
    ui.load_mannequin(path)
    ui.by("resize-mode").select_option("JustResize")
    ui.by("seed").fill("11")
    ui.generate()
    src = ui.wait_result()
    ui.snap("scene")
    body = ui.record.sent("GenerateBackgrounds")[-1]
    assert body["TransparentForeground"] == {"ImageIndex": 0, "ResizeMode": "JustResize"}
    assert "ImageAndMaskList" not in body and "Mannequin" not in body and body["ControlNetList"] == []
    assert base64.b64decode(body["ImageList"][0]) == path.read_bytes(), "the cut-out is sent as chosen"
    result, _ = fetch_image(src)
    assert result.size == (64, 96)
    made, opaque = rgb(result), rgba[..., 3] == 255
    assert np.array_equal(made[opaque], rgba[..., :3][opaque]), "the cut-out's opaque pixels are kept exactly"
    assert not np.array_equal(made[rgba[..., 3] == 0], rgba[..., :3][rgba[..., 3] == 0])

    ui.by("task-kind").select_option("mannequin")
    expect(ui.by("mask-panel")).to_be_visible()


def test_a_photo_is_redrawn_where_painted_and_kept_elsewhere(ui, tmp_path):
    """ModifyMaskedPixels from the page: the painted area (the mask editor's strokes) is redrawn, every pixel farther
    than twice the default MaskBlur from it is the photo's, bit for bit."""
    ui.by("task-kind").select_option("modify")
    expect(ui.by("mask-panel")).to_be_visible()
    path = tmp_path / "shot.png"
    photo = np.random.default_rng(6).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(path)
    ui.load_mannequin(path)
    ui.paint([((32, 40), (32, 56))], brush=8)
    ui.by("positive-prompts").fill("a vase")
    ui.by("resize-mode").select_option("JustResize")
    ui.generate()
    src = ui.wait_result()
    body = ui.record.sent("ModifyMaskedPixels")[-1]
    assert body["Masked"] == {"ImageIndex": 0, "ResizeMode": "JustResize", "MaskIndex": 1}
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["ImageAndMaskList"][1]))).convert("L")) > 127
    assert mask.any() and not mask.all()
    result, _ = fetch_image(src)
    made = rgb(result)
    far = ~(cv2.dilate(mask.astype(np.uint8), np.ones((49, 49), np.uint8)) > 0)  # 2 x MaskBlur 12 around it
    assert far.any() and np.array_equal(made[far], photo[far]), "outside the faded mask the photo is kept"
    assert (made[mask] != photo[mask]).any(axis=-1).mean() > 0.9, "the painted area is redrawn"
