"""ResizeImage end to end, as a user runs it: a signed PICPIK call (and the `atelier resize` client) against a
live gateway and a real Celery worker, ListTasksDetails polled until Finished, the PNG downloaded and compared
with Pillow's Lanczos resize of the input, or with the demo Upscaler's result made in this process; an Upscaler
that is none refused (240, 230) or, a file spandrel does not recognise, ending the task in Error naming it."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed
from workers.demo import demo_path
from workers.inference.upscale import load_upscaler, resize_image

pytestmark = pytest.mark.slow


def _photo() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8), "RGB")


def test_resize_image_gives_the_size_asked_by_lanczos(live_stack):
    img = _photo()
    out = live_stack.post(signed({"Action": "ResizeImage", "Image": png_b64(img), "Width": 1024, "Height": 320}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Action"] == "ResizeImage" and len(d["ImgList"]) == 1 and d["ConsumeApiPoint"] == 1 and d["Seed"] == 0
    assert "resized by Lanczos to 1024x320" in d["Notes"]
    r = httpx.get(d["ImgList"][0], timeout=30)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    got = Image.open(io.BytesIO(r.content))
    assert (got.size, got.mode) == ((1024, 320), "RGB")  # stretched: 80x48 is 5:3, 1024x320 is 16:5
    assert np.array_equal(np.asarray(got), np.asarray(img.resize((1024, 320), Image.Resampling.LANCZOS)))


def test_atelier_resize(live_stack, tmp_path):
    src = tmp_path / "photo.png"
    _photo().save(src)
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "resize", str(src), "--width", "64", "--height", "200",
           "-o", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "out" / "photo_64x200.png"
    assert str(path) in run.stdout.split()
    assert Image.open(path).size == (64, 200)


def test_resize_image_with_an_upscaler(live_stack, atelier_env, tmp_path):
    """The demo Upscaler (x4, tiled) enlarges the photo twice (80x48 -> 320x192 -> 1280x768), then Lanczos gives
    the exact size; what it made is what the same model makes in this process; the CLI names it too."""
    img = _photo()
    out = live_stack.post(signed({"Action": "ResizeImage", "Image": png_b64(img), "Width": 1000, "Height": 700,
                                  "Upscaler": "demo-upscaler"}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Notes"] == ["upscaled by demo-upscaler (x4, 2 times) to 1000x700"] and d["ConsumeApiPoint"] == 1
    got = Image.open(io.BytesIO(httpx.get(d["ImgList"][0], timeout=30).content))
    assert (got.size, got.mode) == ((1000, 700), "RGB")
    model = load_upscaler(demo_path("upscaler", Path(atelier_env["ATELIER_DEMO_MODELS_DIR"])), "cpu", torch.float32)
    want, ran = resize_image(img, 1000, 700, model)
    assert ran == 2 and np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int)).max() <= 1

    src = tmp_path / "photo.png"
    img.save(src)
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "resize", str(src), "--width", "320", "--upscaler", "demo-upscaler",
           "-o", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "out" / "photo_320x192.png").size == (320, 192)
    assert "upscaled by demo-upscaler (x4) to 320x192" in run.stdout + run.stderr


@pytest.mark.parametrize("code, ret, message", [("demo-inpaint", 240, "Model [demo-inpaint] not exists"),
                                                ("nope", 240, "Model [nope] not exists"),
                                                (5, 230, "Params [Upscaler] not available: must be a string")])
def test_resize_image_with_an_upscaler_that_is_not_one(live_stack, code, ret, message):
    out = live_stack.post(signed({"Action": "ResizeImage", "Image": png_b64(_photo()), "Width": 128, "Height": 128,
                                  "Upscaler": code}))
    assert (out["RetCode"], out["Message"]) == (ret, message)


def test_resize_image_with_a_file_that_is_no_upscaler_ends_in_error_naming_it(live_stack):
    out = live_stack.post(signed({"Action": "ResizeImage", "Image": png_b64(_photo()), "Width": 128, "Height": 128,
                                  "Upscaler": "corrupt-upscaler"}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert (d["Status"], d["ErrorCode"], d["ErrorMessage"]) == ("Error", 240,
                                                                "Model [corrupt-upscaler] could not be loaded"), d
