"""IP-Adapter units end to end: through a live gateway and worker on the demo deployment (demo-ip-adapter and its
demo CLIP vision encoder, built by code on first use)."""
from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, example_inputs, generate_body, png_b64, signed

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


def _cli(live_stack, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, np.ndarray | None]:
    man, mask = example_inputs()
    man.save(tmp_path / "m.png")
    mask.save(tmp_path / "k.png")
    man.rotate(90).save(tmp_path / "face.png")
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "generate", "--mannequin", str(tmp_path / "m.png"), "--clothes-mask",
           str(tmp_path / "k.png"), "--prompt", "a woman", "--width", "64", "--height", "96", "--seed", "41",
           "-o", str(tmp_path / "out"), *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    paths = [p for p in out.stdout.split() if p.endswith(".png")]
    return out, np.array(Image.open(paths[0]).convert("RGB")) if out.returncode == 0 and paths else None


def test_the_cli_face_option_adds_an_ip_adapter_unit(live_stack, tmp_path):
    out, plain = _cli(live_stack, tmp_path)
    assert out.returncode == 0, out.stderr
    out, face = _cli(live_stack, tmp_path, "--face", str(tmp_path / "face.png"))        # the first IP-Adapter
    assert out.returncode == 0, out.stderr
    assert not np.array_equal(face, plain)
    out, named = _cli(live_stack, tmp_path, "--face", str(tmp_path / "face.png"), "--face-model", "demo-ip-adapter",
                      "--face-weight", "0")
    assert out.returncode == 0, out.stderr
    assert np.array_equal(named, plain)
    out, _ = _cli(live_stack, tmp_path, "--face", str(tmp_path / "face.png"), "--face-model", "ip-adapter-xl")
    assert out.returncode == 1
    assert "Model [ip-adapter-xl] not exists for sd15 model demo-inpaint" in out.stderr.replace("\n", "")
    models = subprocess.run([sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key",
                             PUB["pk-alice"], "--private-key", KEYS["pk-alice"], "models"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert "ControlModel (ip-adapter, sd15)" in models.stdout
