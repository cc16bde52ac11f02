"""Personas end to end: created, listed, used and deleted through a live gateway and worker on the demo deployment
(demo-ip-adapter), by wire and by the `atelier persona` / `atelier generate --persona` commands."""
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


def _image(stack, unit: dict | None = None, extra: list | None = None, key: str = "pk-alice") -> dict | np.ndarray:
    body = generate_body(Seed=41, Width=64, Height=96)
    body["ImageAndMaskList"] = [*body["ImageAndMaskList"], *(extra or [])]
    if unit is not None:
        body["ControlNetList"] = [{**unit, "ControlModel": {"ModelCode": "demo-ip-adapter"}}]
    out = stack.post(signed(body, key))
    if out["RetCode"] != 0:
        return out
    d = stack.wait(out["TaskUID"], key)
    assert d["Status"] == "Finished", d
    r = httpx.get(d["ImgList"][0], timeout=30)
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def test_a_persona_through_a_live_gateway_and_worker(live_stack):
    man, _ = example_inputs()
    face = man.rotate(90).resize((64, 80))
    out = live_stack.post(signed({"Action": "CreatePersona", "Name": "Mira", "ImageList": [png_b64(face)]}))
    assert out["RetCode"] == 0, out
    code = out["PersonaCode"]
    listed = live_stack.post(signed({"Action": "ListPersonas"}))["PersonaList"]
    assert [(p["PersonaCode"], p["Name"], p["ImageCount"]) for p in listed if p["PersonaCode"] == code] == \
        [(code, "Mira", 1)]
    by_persona = _image(live_stack, {"PersonaCode": code})
    assert np.array_equal(by_persona, _image(live_stack, {"ImageIndex": 2}, [png_b64(face)]))  # exactly its image
    assert not np.array_equal(by_persona, _image(live_stack, {"ImageIndex": 0}))
    other = _image(live_stack, {"PersonaCode": code}, key="pk-bob")
    assert other["RetCode"] == 240 and other["Message"] == f"Persona [{code}] not exists"
    assert live_stack.post(signed({"Action": "DeletePersona", "PersonaCode": code}))["RetCode"] == 0
    gone = _image(live_stack, {"PersonaCode": code})
    assert gone["RetCode"] == 240


def _atelier(live_stack, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_cli_persona_commands_and_generate_persona(live_stack, tmp_path):
    man, mask = example_inputs()
    man.save(tmp_path / "m.png")
    mask.save(tmp_path / "k.png")
    man.rotate(90).save(tmp_path / "face1.png")
    man.rotate(270).save(tmp_path / "face2.png")
    made = _atelier(live_stack, "persona", "create", "Mira K", str(tmp_path / "face1.png"), str(tmp_path / "face2.png"))
    assert made.returncode == 0, made.stdout + made.stderr
    code = made.stdout.strip()
    listed = _atelier(live_stack, "persona", "list")
    assert code in listed.stdout and "2 image(s)" in listed.stdout and "Mira K" in listed.stdout

    def generate(*extra: str) -> np.ndarray:
        out = _atelier(live_stack, "generate", "--mannequin", str(tmp_path / "m.png"), "--clothes-mask",
                       str(tmp_path / "k.png"), "--prompt", "a woman", "--width", "64", "--height", "96", "--seed",
                       "41", "-o", str(tmp_path / "out"), *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        return np.array(Image.open([p for p in out.stdout.split() if p.endswith(".png")][0]).convert("RGB"))

    plain = generate()
    with_persona = generate("--persona", code, "--face-weight", "0.8")
    assert not np.array_equal(plain, with_persona)
    assert np.array_equal(generate("--persona", code, "--face-weight", "0.8", "--face-model", "demo-ip-adapter"),
                          with_persona)
    assert np.array_equal(generate("--persona", code, "--face-weight", "0"), plain)
    deleted = _atelier(live_stack, "persona", "delete", code)
    assert deleted.returncode == 0 and f"{code} deleted" in deleted.stdout
    again = _atelier(live_stack, "persona", "delete", code)
    assert again.returncode == 1 and "RetCode 240" in again.stderr and "not" in again.stderr
    assert code not in _atelier(live_stack, "persona", "list").stdout
