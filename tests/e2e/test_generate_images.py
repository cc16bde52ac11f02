"""GenerateImages end to end (issue 27): signed requests and the `atelier` client against a live gateway and a real
Celery worker with the tiny demo models: text-to-image on the 9-channel and the 4-channel demo (the whole frame
redrawn), image-to-image (ReferStrength 1 gives the reference bit for bit, 0.5 stays nearer to it than the same
seed without it), a ControlNet unit that changes the image, and a Tileable texture from the client.

The seam itself is tested where it can fail: tests/worker/inference/test_tileable.py (shifting the latents shifts
the image across the wrap boundary; the usual padding fails that). The demo UNet is random, so here the wrapped
edges are only checked to be of the order of the interior's block boundaries."""
from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed
from workers.jobs.generate import TILEABLE_NOTE

pytestmark = pytest.mark.slow

SEED = 2468
UNIT = {"PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "demo-controlnet",
                                                                 "InferenceParams": {"ControlWeight": 1.0}}}


def _download(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def _reference(w: int = 64, h: int = 64) -> np.ndarray:
    """A smooth picture with an edge (canny finds it): a gradient and a bright square."""
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([40 + 150 * xx / w, 60 + 120 * yy / h, np.full(xx.shape, 170.0)], axis=-1)
    pixels[16:48, 20:44] = 240
    return pixels.astype(np.uint8)


def _images(live_stack, **fields) -> tuple[dict, list[np.ndarray]]:
    body = {"Action": "GenerateImages", "MainModel": {"ModelCode": "demo-inpaint"}, "PositivePrompts": ["a linen"],
            "Width": 64, "Height": 64, "Seed": SEED, **fields}
    out = live_stack.post(signed(body))
    assert out["RetCode"] == 0, out
    detail = live_stack.wait(out["TaskUID"])
    assert detail["Status"] == "Finished", detail
    assert detail["Action"] == "GenerateImages" and detail["Seed"] == SEED
    return detail, [_download(u) for u in detail["ImgList"]]


@pytest.mark.parametrize("model", ["demo-inpaint", "demo-sd15"])
def test_text_to_image_draws_the_whole_frame(live_stack, model):
    detail, images = _images(live_stack, MainModel={"ModelCode": model}, BatchSize=2, Width=72, Height=64)
    assert len(images) == 2 and detail["ConsumeApiPoint"] == 2
    for img in images:
        assert img.shape == (64, 72, 3)
        assert (np.abs(img.astype(int) - 128).sum(axis=-1) > 0).mean() > 0.9, "drawn, not the grey canvas"
    assert not np.array_equal(images[0], images[1]), "image i is drawn from Seed + i"


def test_image_to_image_follows_the_reference(live_stack):
    ref = _reference()
    listed = {"ImageAndMaskList": [png_b64(Image.fromarray(ref))]}
    _, (held,) = _images(live_stack, **listed, Image2Image={"ImageIndex": 0, "ReferStrength": 1})
    assert np.array_equal(held, ref), "ReferStrength 1: the reference, bit for bit"
    _, (half,) = _images(live_stack, **listed, Image2Image={"ImageIndex": 0, "ReferStrength": 0.5})
    _, (free,) = _images(live_stack)
    far, near = (np.abs(x.astype(int) - ref).mean() for x in (free, half))
    assert near < far, (near, far)


def test_a_control_unit_steers_the_image(live_stack):
    listed = {"ImageAndMaskList": [png_b64(Image.fromarray(_reference()))]}
    _, (controlled,) = _images(live_stack, **listed, ControlNetList=[{**UNIT, "ImageIndex": 0}])
    _, (free,) = _images(live_stack)
    assert controlled.shape == free.shape and not np.array_equal(controlled, free)


def _blocks(img: np.ndarray) -> np.ndarray:
    """The demo VAE's 8x8 blocks (its decoder repeats each latent pixel over one), one value each."""
    return img[::8, ::8].astype(float)


def test_a_tileable_texture_from_the_client(live_stack, tmp_path):
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "images", "--prompt", "woven linen", "--tileable", "--width", "96",
           "--height", "64", "--seed", str(SEED), "-o", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (path,) = out.stdout.split()
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (64, 96, 3)
    assert TILEABLE_NOTE in " ".join(out.stderr.split()), out.stderr  # the task's Notes, as the client prints them
    blocks = _blocks(img)
    inner = np.abs(np.diff(blocks, axis=1)).mean()
    wrap = np.abs(blocks[:, 0] - blocks[:, -1]).mean()
    assert 0.3 * inner < wrap < 3 * inner, (wrap, inner)  # the 2x2 tiling's seam is an ordinary boundary
    _, (plain,) = _images(live_stack, Width=96, Height=64, PositivePrompts=["woven linen"])
    assert not np.array_equal(plain, img), "the circular padding changes what is drawn"
