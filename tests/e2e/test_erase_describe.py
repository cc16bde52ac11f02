"""RemoveContents and DescribeImages end to end, as a user runs them: signed PICPIK calls (and the `atelier erase` /
`atelier describe` client) against a live gateway and a real Celery worker, ListTasksDetails polled until Finished.

RemoveContents: every pixel farther than MaskBlur from the mask is the photo's, bit for bit (and its alpha, all of
it), by the demo Eraser (what it drew is what the same file draws in this process) and by the inpainting fallback
(a Main model named); an empty mask leaves the photo as it was. DescribeImages: one text per image in TxtList, the
demo Describer's captions (made again in this process), or their French by the Describer's translator; a language
it has no translator of refused with 230 naming TranslateDescription, before any task."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed
from workers.demo import demo_path
from workers.inference.describe import Describer
from workers.inference.erase import blend, erase_crop, erase_mask, feathered, load_eraser
from workers.translate.translator import Translator

pytestmark = pytest.mark.slow


def _photo(mode: str = "RGB") -> Image.Image:
    """A 96 x 80 shop photo: a smooth backdrop with a dark 'stand' to erase."""
    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([120 + x, 90 + y, 160 + (x + y) // 4], axis=-1).astype(np.uint8)
    rgb[30:52, 40:58] = (20, 20, 25)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = np.full((80, 96), 255, np.uint8)
        alpha[:, :10] = np.linspace(0, 255, 10, dtype=np.uint8)  # a semi-transparent left edge, kept exactly
        img = Image.merge("RGBA", (*img.split(), Image.fromarray(alpha, "L")))
    return img


def _mask(invert: bool = False) -> Image.Image:
    m = np.zeros((80, 96), np.uint8)
    m[28:54, 38:60] = 255
    return Image.fromarray(255 - m if invert else m, "L")


def _kept(blur: int) -> np.ndarray:
    """The pixels farther than ``blur`` (Chebyshev) from every mask pixel: kept bit for bit."""
    m = (np.asarray(_mask()) > 0).astype(np.uint8)
    return cv2.dilate(m, np.ones((2 * blur + 1, 2 * blur + 1), np.uint8)) == 0


def _result(live_stack, body: dict) -> tuple[dict, Image.Image]:
    out = live_stack.post(signed({"Action": "RemoveContents", **body}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Action"] == "RemoveContents" and len(d["ImgList"]) == 1 and d["TxtList"] == []
    return d, Image.open(io.BytesIO(httpx.get(d["ImgList"][0], timeout=30).content))


def test_remove_contents_by_the_eraser_keeps_every_pixel_outside_the_blurred_mask(live_stack, atelier_env):
    photo = _photo()
    d, got = _result(live_stack, {"RawImage": png_b64(photo), "Mask": png_b64(_mask()), "Priority": 7})
    assert d["Notes"] == ["erased by demo-eraser"] and d["Seed"] == 0 and d["ConsumeApiPoint"] == 1
    assert (got.size, got.mode) == (photo.size, "RGB")
    src, out = np.asarray(photo), np.asarray(got)
    kept = _kept(12)  # MaskBlur's default
    assert np.array_equal(out[kept], src[kept])
    stand = np.asarray(_mask()) > 0
    assert np.abs(out[stand].astype(int) - src[stand].astype(int)).mean() > 40  # the dark stand is gone
    # what the worker drew is what the demo file draws here
    eraser = load_eraser(demo_path("eraser", Path(atelier_env["ATELIER_DEMO_MODELS_DIR"])), "cpu", torch.float32)
    weight = feathered(erase_mask(_mask(), photo.size, False), 12)
    left, top, right, bottom = erase_crop(weight)
    full = src.copy()
    full[top:bottom, left:right] = eraser.erase(src[top:bottom, left:right], weight[top:bottom, left:right] > 0)
    assert np.abs(out.astype(int) - blend(src, full, weight).astype(int)).max() <= 1


def test_remove_contents_inverted_mask_no_blur_keeps_alpha_exactly(live_stack):
    photo = _photo("RGBA")
    d, got = _result(live_stack, {"RawImage": png_b64(photo), "Mask": png_b64(_mask(invert=True)),
                                  "InvertMask": True, "MaskBlur": 0, "Eraser": "demo-eraser"})
    assert got.mode == "RGBA" and np.array_equal(np.asarray(got)[..., 3], np.asarray(photo)[..., 3])
    kept = ~(np.asarray(_mask()) > 0)
    assert np.array_equal(np.asarray(got)[kept], np.asarray(photo)[kept])


def test_remove_contents_falls_back_to_inpainting_with_a_main_model(live_stack):
    photo = _photo()
    d, got = _result(live_stack, {"RawImage": png_b64(photo), "Mask": png_b64(_mask()), "MaskBlur": 4,
                                  "MainModel": {"ModelCode": "demo-inpaint"}})
    assert d["Notes"] == ["erased by demo-inpaint (inpainting with an empty-scene prompt: no Eraser named)"]
    assert isinstance(d["Seed"], int) and d["ConsumeApiPoint"] == 1  # the seed drawn by the gateway, reported
    src, out = np.asarray(photo), np.asarray(got)
    kept = _kept(4)
    assert np.array_equal(out[kept], src[kept])
    stand = np.asarray(_mask()) > 0
    assert not np.array_equal(out[stand], src[stand])


def test_remove_contents_with_an_empty_mask_changes_nothing(live_stack):
    photo = _photo()
    d, got = _result(live_stack, {"RawImage": png_b64(photo), "Mask": png_b64(Image.new("L", (96, 80), 0))})
    assert d["Notes"] == ["the mask is empty: nothing erased"]
    assert np.array_equal(np.asarray(got), np.asarray(photo))


def test_remove_contents_refuses_what_is_not_an_eraser(live_stack):
    body = {"Action": "RemoveContents", "RawImage": png_b64(_photo()), "Mask": png_b64(_mask())}
    out = live_stack.post(signed({**body, "Eraser": "demo-upscaler"}))
    assert out["RetCode"] == 240 and "demo-upscaler" in out["Message"], out
    out = live_stack.post(signed({**body, "MaskBlur": 65}))
    assert (out["RetCode"], out["Message"]) == (230, "Params [MaskBlur] not available: must be between 0 and 64")


def _shots() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray(rng.integers(0, 256, size=(40 + 8 * i, 56, 3), dtype=np.uint8), "RGB") for i in range(3)]


def _describe(live_stack, **fields) -> dict:
    out = live_stack.post(signed({"Action": "DescribeImages", "ImageList": [png_b64(im) for im in _shots()],
                                  **fields}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Action"] == "DescribeImages" and d["ImgList"] == [] and d["ConsumeApiPoint"] == 3
    return d


def test_describe_images_gives_one_text_per_image_and_their_translation(live_stack, atelier_env):
    demo_dir = Path(atelier_env["ATELIER_DEMO_MODELS_DIR"])
    english = Describer.load(demo_path("describer", demo_dir)).describe(_shots())
    d = _describe(live_stack)
    assert d["TxtList"] == english and all(english) and len(set(english)) > 1  # each image its own words
    assert d["Notes"] == ["described by demo-describer"]

    d = _describe(live_stack, TranslateDescription="fr")
    translator = Translator.load(demo_path("translator-en", demo_dir))
    assert d["TxtList"] == translator.translate(english) and d["TxtList"] != english
    assert d["Notes"] == ["described by demo-describer, translated into fr by demo-translator-en"]


def test_describe_images_refuses_a_language_without_a_translator(live_stack):
    body = {"Action": "DescribeImages", "ImageList": [png_b64(_shots()[0])]}
    out = live_stack.post(signed({**body, "TranslateDescription": "de"}))
    assert out["RetCode"] == 230 and out["Message"].startswith("Params [TranslateDescription] not available: de is"
                                                               " not served"), out
    assert "must be one of en, fr" in out["Message"]
    out = live_stack.post(signed({**body, "TranslateDescription": "xx"}))
    assert out["RetCode"] == 230 and "must be one of en, zh, ja" in out["Message"], out
    out = live_stack.post(signed({**body, "Describer": "demo-eraser"}))
    assert out["RetCode"] == 240, out


def test_atelier_erase_and_describe(live_stack, tmp_path):
    src, mask = tmp_path / "shot.png", tmp_path / "shot_mask.png"
    _photo().save(src)
    _mask().save(mask)
    base = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
            "--private-key", KEYS["pk-alice"]]
    run = subprocess.run([*base, "erase", str(src), "--mask", str(mask), "--mask-blur", "2", "-o",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "out" / "shot_erased.png"
    assert str(path) in run.stdout.split()
    got, kept = np.asarray(Image.open(path)), _kept(2)
    assert np.array_equal(got[kept], np.asarray(_photo())[kept])

    run = subprocess.run([*base, "describe", str(src), str(mask), "--language", "fr"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{src}\t") and lines[1].startswith(f"{mask}\t"), run.stdout
