"""IP-Adapter units end to end: through a live gateway and worker on the demo deployment (demo-ip-adapter and its
demo CLIP vision encoder, built by code on first use)."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import example_inputs, generate_body, png_b64, signed

pytestmark = pytest.mark.slow


def _image(stack, reference: Image.Image | None = None, **unit_params) -> np.ndarray:
    body = generate_body(Seed=41, Width=64, Height=96)
    if reference is not None:
        body["ImageAndMaskList"] = [*body["ImageAndMaskList"], png_b64(reference)]
        body["ControlNetList"] = [{"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-ip-adapter",
                                                                     "InferenceParams": unit_params}}]
    out = stack.post(signed(body))
    assert out["RetCode"] == 0, out
    d = stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    r = httpx.get(d["ImgList"][0], timeout=30)
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def test_a_face_reference_steers_the_image_through_a_live_worker(live_stack):
    man, _ = example_inputs()
    face, other = man.rotate(90).resize((64, 80)), Image.new("RGB", (50, 50), (30, 160, 90))
    plain = _image(live_stack)
    one = _image(live_stack, face)
    assert not np.array_equal(one, plain)
    assert np.array_equal(_image(live_stack, face), one)           # same reference and seed: same image
    assert not np.array_equal(_image(live_stack, other), one)      # another reference: another image
    assert np.array_equal(_image(live_stack, face, ControlWeight=0), plain)  # weight 0: exactly no unit
    assert np.array_equal(_image(live_stack), plain)               # the worker that ran units draws as before
