"""FaceID units end to end: through a live gateway and worker on the demo deployment (demo-faceid: its FaceID file,
ArcFace-shaped ONNX model and CLIP encoder built by code on first use; the real MTCNN face detector), and the CLI's
``--face IMG --face-model demo-faceid``."""
from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from app.contract.limits import NO_FACE_MESSAGE
from support.api import KEYS, PUB, ROOT, example_inputs, generate_body, png_b64, signed
from support.faces import PHOTOS, photo

pytestmark = pytest.mark.slow


def _task(stack, reference: Image.Image | None = None, **unit_params) -> dict:
    body = generate_body(Seed=43, Width=64, Height=96)
    if reference is not None:
        body["ImageAndMaskList"] = [*body["ImageAndMaskList"], png_b64(reference)]
        body["ControlNetList"] = [{"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-faceid",
                                                                     "InferenceParams": unit_params}}]
    out = stack.post(signed(body))
    assert out["RetCode"] == 0, out
    return stack.wait(out["TaskUID"])


def _image(stack, reference: Image.Image | None = None, **unit_params) -> np.ndarray:
    d = _task(stack, reference, **unit_params)
    assert d["Status"] == "Finished", d
    r = httpx.get(d["ImgList"][0], timeout=30)
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def test_a_face_reference_steers_the_image_through_a_live_worker(live_stack):
    plain = _image(live_stack)
    one = _image(live_stack, photo("biden.jpg"))
    assert not np.array_equal(one, plain)
    assert np.array_equal(_image(live_stack, photo("biden.jpg")), one)       # same face and seed: same image
    assert not np.array_equal(_image(live_stack, photo("astronaut.jpg")), one)
    assert np.array_equal(_image(live_stack), plain)                          # LoRA part and units gone after
    noface = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    d = _task(live_stack, noface)
    assert d["Status"] == "Error" and d["ErrorCode"] == 230, d
    assert d["ErrorMessage"] == f"ControlNetList[0].ImageIndex: {NO_FACE_MESSAGE}", d


def _cli(live_stack, tmp_path, *extra: str) -> np.ndarray:
    man, mask = example_inputs()
    man.save(tmp_path / "m.png")
    mask.save(tmp_path / "k.png")
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "generate", "--mannequin", str(tmp_path / "m.png"), "--clothes-mask",
           str(tmp_path / "k.png"), "--prompt", "a woman", "--width", "64", "--height", "96", "--seed", "43",
           "-o", str(tmp_path / "out"), *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    paths = [p for p in out.stdout.split() if p.endswith(".png")]
    return np.array(Image.open(paths[0]).convert("RGB"))


def test_the_cli_face_option_with_the_faceid_model(live_stack, tmp_path):
    plain = _cli(live_stack, tmp_path)
    face = _cli(live_stack, tmp_path, "--face", str(PHOTOS / "biden.jpg"), "--face-model", "demo-faceid")
    assert not np.array_equal(face, plain)
    again = _cli(live_stack, tmp_path, "--face", str(PHOTOS / "biden.jpg"), "--face-model", "demo-faceid")
    assert np.array_equal(again, face)
