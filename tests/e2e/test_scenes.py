"""GenerateBackgrounds and ModifyMaskedPixels end to end (issue 27): signed requests and the `atelier` client
against a live gateway and a real Celery worker with the tiny demo model; the kept pixels checked bit for bit (a
foreground's opaque pixels, the area outside a blurred mask, the original pixels of an outpainted image), the
semi-transparent edge checked against the alpha blend the docs state."""
from __future__ import annotations

import io
import subprocess
import sys

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed

pytestmark = pytest.mark.slow

SEED = 4321


def _download(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def _noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cutout(w: int = 64, h: int = 80) -> Image.Image:
    """A product on a transparent background: an opaque block of noise, a ring of alpha 128 around it, transparent
    outside."""
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = _noise(w, h, 1)
    rgba[16:h - 16, 16:w - 16, 3] = 128
    rgba[20:h - 20, 20:w - 20, 3] = 255
    return Image.fromarray(rgba, "RGBA")


def _finished(live_stack, body: dict) -> dict:
    out = live_stack.post(signed(body))
    assert out["RetCode"] == 0, out
    detail = live_stack.wait(out["TaskUID"])
    assert detail["Status"] == "Finished", detail
    return detail


def test_generate_backgrounds_keeps_the_opaque_pixels_and_blends_the_edge(live_stack):
    cut = _cutout()
    detail = _finished(live_stack, {
        "Action": "GenerateBackgrounds", "MainModel": {"ModelCode": "demo-inpaint"},
        "PositivePrompts": ["a kitchen table"], "ImageList": [png_b64(cut)],
        "TransparentForeground": {"ImageIndex": 0}, "Width": 64, "Height": 80, "Seed": SEED, "BatchSize": 2})
    assert detail["Action"] == "GenerateBackgrounds" and detail["Seed"] == SEED
    assert len(detail["ImgList"]) == 2 and detail["ConsumeApiPoint"] == 2
    rgba = np.asarray(cut)
    opaque, edge, clear = rgba[..., 3] == 255, rgba[..., 3] == 128, rgba[..., 3] == 0
    images = [_download(u) for u in detail["ImgList"]]
    for img in images:
        assert img.shape == (80, 64, 3)
        assert np.array_equal(img[opaque], rgba[..., :3][opaque]), "the opaque pixels are the foreground's"
        assert not np.array_equal(img[clear], np.full_like(img[clear], 128)), "a scene is drawn, not the grey"
        # an edge pixel is 128/255 of the foreground over the scene: what is left of it lies in 0..255
        scene = (img[edge].astype(np.int32) * 255 - 128 * rgba[..., :3][edge].astype(np.int32)) / 127
        assert scene.min() >= -2.1 and scene.max() <= 257.1
    assert not np.array_equal(images[0], images[1]), "image i is drawn from Seed + i"


def test_generate_backgrounds_refuses_a_foreground_without_alpha(live_stack):
    photo = Image.fromarray(_noise(32, 32), "RGB")
    out = live_stack.post(signed({"Action": "GenerateBackgrounds", "ImageList": [png_b64(photo)],
                                  "TransparentForeground": {"ImageIndex": 0}, "Width": 64, "Height": 64}))
    assert out["RetCode"] == 230 and "TransparentForeground.ImageIndex" in out["Message"], out
    assert "ImageList[0] has no alpha channel" in out["Message"]


def test_modify_masked_pixels_keeps_everything_outside_the_blurred_mask(live_stack):
    image, blur = _noise(64, 64, 2), 4
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[24:40, 20:44] = 255
    detail = _finished(live_stack, {
        "Action": "ModifyMaskedPixels", "MainModel": {"ModelCode": "demo-inpaint"}, "PositivePrompts": ["a vase"],
        "ImageAndMaskList": [png_b64(Image.fromarray(image)), png_b64(Image.fromarray(mask, "L"))],
        "Masked": {"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": blur}, "Width": 64, "Height": 64, "Seed": SEED})
    (img,) = [_download(u) for u in detail["ImgList"]]
    near = cv2.dilate(mask, np.ones((4 * blur + 1, 4 * blur + 1), np.uint8)) > 0  # the blur reaches 2 x MaskBlur
    assert np.array_equal(img[~near], image[~near]), "outside the blurred mask nothing changes"
    assert (img[mask > 0] != image[mask > 0]).any(axis=-1).mean() > 0.9, "the masked area is redrawn"


def atelier(live_stack, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_outpainting_with_the_client_keeps_the_original_pixels(live_stack, tmp_path):
    """`atelier modify` to a wider size: the image's own height, so it is not resized; ResizeAndFill centres it and
    the margins are drawn."""
    image = _noise(48, 64, 3)
    path = tmp_path / "shot.png"
    Image.fromarray(image).save(path)
    (out,) = atelier(live_stack, "modify", str(path), "--width", "112", "--prompt", "a shop window", "--seed",
                     str(SEED), "-o", str(tmp_path / "out"))
    result = np.asarray(Image.open(out).convert("RGB"))
    assert result.shape == (64, 112, 3)
    assert np.array_equal(result[:, 32:80], image), "the original pixels are kept exactly"
    margins = np.concatenate([result[:, :32], result[:, 80:]], axis=1)
    edges = np.concatenate([np.repeat(image[:, :1], 32, axis=1), np.repeat(image[:, -1:], 32, axis=1)], axis=1)
    assert not np.array_equal(margins, edges), "the margins are drawn, not the edge extended"


def test_a_shop_photo_cut_out_given_a_scene_then_made_a_banner_with_the_client(live_stack, tmp_path):
    """Issue 27's path as a user runs it: RemoveBackground on the example photo, its cut-out to GenerateBackgrounds,
    the result outpainted to 16:9 at its own height; each step keeps what it says it keeps, bit for bit."""
    photo = ROOT / "examples" / "photo_mannequin.jpg"
    cut_path, _ = atelier(live_stack, "remove-background", str(photo), "-o", str(tmp_path))
    cut = np.asarray(Image.open(cut_path).convert("RGBA"))
    (scene_path,) = atelier(live_stack, "backgrounds", cut_path, "--prompt", "a boutique, soft light", "--seed",
                            str(SEED), "-o", str(tmp_path / "scene"))
    scene = np.asarray(Image.open(scene_path).convert("RGB"))
    opaque = cut[..., 3] == 255
    assert scene.shape == (480, 320, 3) and opaque.sum() > 10_000
    assert np.array_equal(scene[opaque], cut[..., :3][opaque]), "the figure's opaque pixels are kept"
    (banner_path,) = atelier(live_stack, "modify", scene_path, "--width", "853", "--prompt", "a boutique",
                             "--seed", str(SEED), "-o", str(tmp_path / "banner"))
    banner = np.asarray(Image.open(banner_path).convert("RGB"))
    left = (853 - 320) // 2
    assert banner.shape == (480, 853, 3)
    assert np.array_equal(banner[:, left:left + 320], scene), "the scene is kept in the middle of the banner"
