"""RestoreFaces end to end, as a user runs it: a signed PICPIK call (and the `atelier restore-faces` client) against a
live gateway and a real Celery worker with the shipped demo model, ListTasksDetails polled until Finished, the PNG
downloaded: the photo's faces redrawn, every pixel away from them as it was."""
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


def _away_from_faces(image: Image.Image) -> np.ndarray:
    """The pixels farther than the blend margin from every face the detector finds."""
    away = np.ones((image.height, image.width), dtype=bool)
    for face in load_face_detector("cpu").detect(image):
        left, top, right, bottom = face_box(face.box, image.width, image.height)
        m = blend_margin(face.box)
        away[max(0, top - m):bottom + m, max(0, left - m):right + m] = False
    return away


def test_restore_faces_redraws_the_faces_and_nothing_else(live_stack):
    source = photo("two_people.jpg")
    out = live_stack.post(signed({"Action": "RestoreFaces", "RawImage": png_b64(source), "RestoreStrength": 0.5}))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    assert d["Action"] == "RestoreFaces" and len(d["ImgList"]) == 1 and d["ConsumeApiPoint"] == 1
    assert d["Notes"] == ["MainModel: not given; the deployment's default demo-inpaint was used",
                          "restored 2 face(s)"]
    assert d["Step"] == d["TotalSteps"] == 2 * int(8 * 0.5)  # demo-inpaint's 8 steps at 0.5, for each face
    r = httpx.get(d["ImgList"][0], timeout=30)
    assert r.status_code == 200
    got = Image.open(io.BytesIO(r.content))
    assert (got.size, got.mode) == (source.size, "RGB")
    away = _away_from_faces(source)
    assert np.array_equal(np.asarray(got)[away], np.asarray(source)[away])
    assert (np.asarray(got)[~away] != np.asarray(source)[~away]).any()


def test_atelier_restore_faces(live_stack, tmp_path):
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], "restore-faces", str(PHOTOS / "biden.jpg"), "--strength", "0.4",
           "--model", "demo-inpaint", "-o", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    path = tmp_path / "out" / "biden_restored.png"
    assert str(path) in run.stdout.split() and "restored 1 face(s)" in run.stderr
    assert Image.open(path).size == photo("biden.jpg").size
