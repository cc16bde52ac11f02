"""ResizeImage end to end, as a user runs it: a signed PICPIK call (and the `atelier resize` client) against a
live gateway and a real Celery worker, ListTasksDetails polled until Finished, the PNG downloaded and compared
with Pillow's Lanczos resize of the input."""
from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed

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
