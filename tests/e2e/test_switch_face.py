"""SwitchFace end to end, as a user runs it: a signed PICPIK call (and the `atelier switch-face` client) against a live
gateway and a real Celery worker with the shipped demo model and demo IP-Adapter, ListTasksDetails polled until
Finished, the PNG downloaded: the chosen face redrawn, every pixel away from it (the other face too) as it was; a face
index past the photo's faces ends the task in Error 230 naming it."""
from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, png_b64, signed
from support.faces import PHOTOS, photo
from workers.faces.detect import load_face_detector
from workers.faces.geometry import blend_margin, face_box

pytestmark = pytest.mark.slow


def _near_face(image: Image.Image, index: int) -> np.ndarray:
    """The pixels within the blend margin of face ``index`` (1-based, reading order) the detector finds."""
    face = load_face_detector("cpu").detect(image)[index - 1]
    near = np.zeros((image.height, image.width), dtype=bool)
    left, top, right, bottom = face_box(face.box, image.width, image.height)
    m = blend_margin(face.box)
    near[max(0, top - m):bottom + m, max(0, left - m):right + m] = True
    return near


def test_switch_face_redraws_the_chosen_face_and_nothing_else(live_stack):
    source = photo("two_people.jpg")
    out = live_stack.post(signed({"Action": "SwitchFace", "RawImage": png_b64(source), "RawFaceIndex": 2,
                                  "NewFaceImage": png_b64(photo("biden.jpg"))}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Action"] == "SwitchFace" and len(d["ImgList"]) == 1 and d["ConsumeApiPoint"] == 1
    assert d["Notes"] == ["MainModel: not given; the deployment's default demo-inpaint was used",
                          "Adapter: not given; the deployment's ip-adapter demo-ip-adapter was used",
                          "switched face 2 of 2 with demo-ip-adapter"]
    assert d["Step"] == d["TotalSteps"] == int(8 * 0.7)  # demo-inpaint's 8 steps at SwitchFace's strength
    r = httpx.get(d["ImgList"][0], timeout=30)
    assert r.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert got.shape == np.asarray(source).shape
    near = _near_face(source, 2)
    assert np.array_equal(got[~near], np.asarray(source)[~near])  # face 1, and everything else, as it was
    assert (got[near] != np.asarray(source)[near]).any()


def test_a_face_index_past_the_faces_ends_in_error_230(live_stack):
    out = live_stack.post(signed({"Action": "SwitchFace", "RawImage": png_b64(photo("two_people.jpg")),
                                  "RawFaceIndex": 3, "NewFaceImage": png_b64(photo("biden.jpg"))}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert (d["Status"], d["ErrorCode"]) == ("Error", 230), d
    assert d["ErrorMessage"] == "RawFaceIndex 3: the image has 2 face(s)"


def test_atelier_switch_face(live_stack, tmp_path):
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "switch-face", str(PHOTOS / "two_people.jpg"), "--new-face",
           str(PHOTOS / "astronaut.jpg"), "--index", "1", "--model", "demo-inpaint", "--adapter", "demo-ip-adapter",
           "-o", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "out" / "two_people_switched.png"
    assert str(path) in run.stdout.split() and "switched face 1 of 2 with demo-ip-adapter" in run.stderr
    source = photo("two_people.jpg")
    got = np.asarray(Image.open(path).convert("RGB"))
    near = _near_face(source, 1)
    assert np.array_equal(got[~near], np.asarray(source)[~near]) and (got[near] != np.asarray(source)[near]).any()
    bad = subprocess.run(cmd[:-2] + ["--adapter", "demo-controlnet", "-o", str(tmp_path / "x")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "RetCode 240: Model [demo-controlnet] not exists: it is not an ip-adapter" in " ".join(bad.stderr.split())
