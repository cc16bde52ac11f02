"""The mask actions end to end, as a user runs them: the `atelier` client (and signed PICPIK calls) against a
live gateway and a real Celery worker, with each engine kind of the demo deployment; the mask a user gets
from ExtractContents kept bit-exact by GenerateFromMannequin; a generation with no mask at all."""
from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, signed
from support.masks import EXAMPLES, MANNEQUINS, iou, point_on, truth

pytestmark = pytest.mark.slow


def atelier(live_stack, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def run(live_stack, *args: str) -> list[str]:
    out = atelier(live_stack, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def b64(name: str) -> str:
    return base64.b64encode((EXAMPLES / name).read_bytes()).decode()


def image(url: str) -> Image.Image:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def finished(live_stack, body: dict) -> dict:
    out = live_stack.post(signed(body))
    assert out["RetCode"] == 0, out
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    return d


def test_remove_background_with_the_client(live_stack, tmp_path):
    photo, figure, _ = MANNEQUINS["photo"]
    cut, mask = run(live_stack, "remove-background", str(EXAMPLES / photo), "-o", str(tmp_path))
    assert cut.endswith("photo_mannequin_cutout.png") and mask.endswith("photo_mannequin_mask.png")
    cutout, grey = Image.open(cut), Image.open(mask)
    assert cutout.mode == "RGBA" and grey.mode == "L" and cutout.size == grey.size == (320, 480)
    assert iou(np.asarray(grey) > 127, truth(figure)) >= 0.9
    assert np.array_equal(np.asarray(cutout.getchannel("A")), np.asarray(grey))


def test_batch_and_box_with_the_client(live_stack, tmp_path):
    paths = run(live_stack, "remove-background", str(EXAMPLES / "mannequin.png"), str(EXAMPLES / "photo_mannequin.jpg"),
                "--only-mask", "--erode-size", "0", "-o", str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["mannequin_mask.png", "photo_mannequin_mask.png"]
    assert Image.open(paths[0]).size == (256, 384) and Image.open(paths[1]).size == (320, 480)
    (boxed,) = run(live_stack, "remove-background", str(EXAMPLES / "mannequin.png"), "--box", "0,0,128,384",
                   "--only-mask", "-o", str(tmp_path / "box"))
    assert not np.asarray(Image.open(boxed))[:, 136:].any()


def test_extract_then_generate_keeps_the_dress_bit_exact(live_stack, tmp_path):
    photo, figure, garment = MANNEQUINS["flat"]
    x, y = point_on(truth(garment))
    (mask_path,) = run(live_stack, "extract", str(EXAMPLES / photo), "--point", f"{x},{y}", "--only-mask",
                       "--erode-size", "0", "-o", str(tmp_path))
    dress = np.asarray(Image.open(mask_path)) > 127
    assert (dress & truth(garment)).sum() >= 0.9 * truth(garment).sum() and not (dress & ~truth(figure)).any()
    (out,) = run(live_stack, "generate", "--mannequin", str(EXAMPLES / photo), "--clothes-mask", mask_path,
                 "--prompt", "a woman", "--width", "256", "--height", "384", "--resize-mode", "JustResize",
                 "-o", str(tmp_path / "gen"))
    made = np.asarray(Image.open(out).convert("RGB"))
    source = np.asarray(Image.open(EXAMPLES / photo).convert("RGB"))
    assert np.array_equal(made[dress], source[dress])


def test_generate_without_a_mask_with_the_client(live_stack, tmp_path):
    photo, _, garment = MANNEQUINS["photo"]
    out = atelier(live_stack, "generate", "--mannequin", str(EXAMPLES / photo), "--prompt", "a woman", "--width",
                  "320", "--height", "480", "--resize-mode", "JustResize", "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    made, mask_path = out.stdout.split()
    assert mask_path.endswith("_clothes_mask.png") and "clothes segmenter demo-cloth-seg" in out.stderr
    mask = np.asarray(Image.open(mask_path)) > 127
    assert iou(mask, truth(garment)) >= 0.9
    source = np.asarray(Image.open(EXAMPLES / photo).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(made).convert("RGB"))[mask], source[mask])


@pytest.mark.parametrize("action, engine, fields", [
    ("RemoveBackground", "demo-u2net", {"RawImage": b64("mannequin.png"), "HairOptimization": "on"}),
    ("RemoveBackgroundsInBatch", "grabcut", {"RawImages": [b64("mannequin.png")] * 2}),
    ("ExtractContents", "demo-sam", {"RawImage": b64("mannequin.png"), "IncludePointList": [{"X": 128, "Y": 200}],
                                     "ExcludePointList": [{"X": 3, "Y": 3}]}),
    ("ExtractContents", "grabcut-points", {"RawImage": b64("mannequin.png"),
                                           "IncludePointList": [{"X": 128, "Y": 200}]}),
])
def test_each_action_with_each_engine_kind(live_stack, action, engine, fields):
    d = finished(live_stack, {"Action": action, "Engine": engine, **fields})
    count = 2 if action == "RemoveBackgroundsInBatch" else 1
    assert len(d["ImgList"]) == 2 * count and d["ConsumeApiPoint"] == count
    for i, url in enumerate(d["ImgList"]):
        img = image(url)
        assert img.size == (256, 384) and img.mode == ("RGBA" if i % 2 == 0 else "L")


def test_generate_with_a_chosen_segmenter_serves_its_mask(live_stack):
    body = {"Action": "GenerateFromMannequin", "ImageAndMaskList": [b64("mannequin.png")], "Width": 64, "Height": 96,
            "Mannequin": {"ImageIndex": 0, "ResizeMode": "JustResize", "ClothesSegmenter": "demo-segformer",
                          "GarmentClasses": list(range(18))}}
    d = finished(live_stack, body)
    mask = image(d["ClothesMaskUrl"])
    assert mask.size == (256, 384) and mask.mode == "L"      # the mask of the mannequin photo as sent
    assert any("demo-segformer (classes [0, 1" in n for n in d["Notes"])


def test_a_corrupt_engine_ends_in_240_and_the_worker_goes_on(live_stack):
    out = live_stack.post(signed({"Action": "RemoveBackground", "Engine": "corrupt-onnx",
                                  "RawImage": b64("mannequin.png")}))
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Error" and d["ErrorCode"] == 240 and d["ErrorMessage"] == (
        "Model [corrupt-onnx] could not be loaded")
    finished(live_stack, {"Action": "RemoveBackground", "RawImage": b64("mannequin.png"), "OnlyMask": True})


def test_bad_requests_with_the_client(live_stack, tmp_path):
    out = atelier(live_stack, "extract", str(EXAMPLES / "mannequin.png"), "--point", "999,5", "-o", str(tmp_path))
    assert out.returncode == 1 and "Params [IncludePointList[0]]" in out.stderr and "outside the image" in out.stderr
    out = atelier(live_stack, "remove-background", str(EXAMPLES / "mannequin.png"), "--engine", "nope",
                  "-o", str(tmp_path))
    assert out.returncode == 1 and "Model [nope] not exists" in out.stderr
    out = atelier(live_stack, "remove-background", str(EXAMPLES / "mannequin.png"), "--box", "1,2,3",
                  "-o", str(tmp_path))
    assert out.returncode == 1 and "expected 4 integers" in out.stderr
