"""Erase by painting in the playground (RemoveContents) in a real browser (Chromium via Playwright) against the real
gateway and worker: the painted area of the photo sent as the Mask, erased by the chosen Eraser (or the main model),
the result in the gallery keeping every pixel farther than MaskBlur from the painted area, bit for bit."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from support.browser import EXAMPLES, decode_b64_image, fetch_image, mask_of, rgb
from support.masks import rgb as example_rgb

try:
    from playwright.sync_api import expect
except ImportError:   # the `browser` fixture then skips every test
    expect = None

pytestmark = pytest.mark.slow

MANNEQUIN = EXAMPLES / "mannequin.png"          # 256x384


def test_the_painted_area_is_erased_and_nothing_else_changes(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.by("erase").click()
    expect(ui.by("error-erase")).to_contain_text("Paint over what to erase first")
    assert not ui.record.sent("RemoveContents")
    expect(ui.by("eraser")).to_have_value("demo-eraser")
    ui.paint([((30, 40), (70, 40)), ((30, 60), (70, 60))], brush=16)
    ui.set_range("erase-blur", 4)
    ui.by("erase").click()
    src = ui.wait_result()
    ui.snap("erased")
    expect(ui.by("erase-status")).to_contain_text("Erased")
    (body,) = ui.record.sent("RemoveContents")
    assert (body["MaskBlur"], body["Eraser"]) == (4, "demo-eraser") and "MainModel" not in body
    assert base64.b64decode(body["RawImage"]) == MANNEQUIN.read_bytes(), "the photo is sent as chosen"
    mask = mask_of(decode_b64_image(body["Mask"]))
    assert mask.shape == (384, 256) and 500 < mask.sum() < 20_000, "the painted strokes are the mask"
    result, _ = fetch_image(src)
    made, photo = rgb(result), example_rgb("mannequin.png")
    kept = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(made[kept], photo[kept]), "nothing farther than MaskBlur from the painted area changes"
    assert not np.array_equal(made[mask], photo[mask]), "the painted area is erased"
    expect(ui.by("error-erase")).to_be_hidden()


def test_erase_with_the_main_model_and_its_errors_at_the_section(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.paint([((100, 100), (120, 100))], brush=12)
    ui.by("eraser").select_option("main")
    ui.answer_next("RemoveContents", {"RetCode": 230, "Message": "Params [MaskBlur] not available: must be between"
                                                                 " 0 and 64"})
    ui.by("erase").click()
    expect(ui.by("error-erase")).to_contain_text("Params [MaskBlur] not available")
    (body,) = ui.record.sent("RemoveContents")
    assert body["MainModel"] == {"ModelCode": ui.by("main-model").input_value()} and "Eraser" not in body
