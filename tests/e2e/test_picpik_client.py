"""`make run`'s stack driven by a foreign PICPIK client (tests/support/picpik_client.py), written from
PICPIK's docs alone: the real launcher (`python -m app.cli.run`: embedded Redis, uvicorn gateway,
Celery worker) with a key file of its own; ListModels and ListControlNets; GenerateFromMannequin shaped
like the reference's request example, in both image styles, with a ControlNet unit and with floats
signed as PICPIK's Python SDK writes them; the refusals, each with its RetCode and the field named;
Ctrl-C stops all of it and leaves nothing running.

Nothing here imports app/ or workers/: the service is set up through its environment only."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from support.api import ROOT, free_port, png_b64
from support.picpik_client import PicpikClient

pytestmark = pytest.mark.slow

PRIVATE_KEY = "123456"
W, H = 64, 80


def _data_uri(img: Image.Image) -> str:
    """PICPIK's examples send images as data URIs."""
    return "data:image/png;base64," + png_b64(img)


def _mannequin_and_mask() -> tuple[Image.Image, Image.Image]:
    """A grey mannequin on a light background wearing a red, textured garment; the mask is white on
    the garment (the clothes to keep) and black elsewhere."""
    x = np.arange(W)[None, :]
    y = np.arange(H)[:, None]
    man = np.empty((H, W, 3), np.uint8)
    man[:] = (230, 228, 220)
    figure = (np.abs(x - W // 2) < 12 + (y > H // 2) * 4) & (y >= 6) & (y < H - 4)
    man[figure] = (150, 148, 145)
    garment = (np.abs(x - W // 2) < 14) & (y >= H // 4) & (y < 3 * H // 5)
    red = np.stack([np.full((H, W), 190), 10 + (x * 11 + y * 3) % 60, 30 + (x * 5 + y * 7) % 70], -1)
    man[garment] = red[garment].astype(np.uint8)
    mask = np.where(garment, 255, 0).astype(np.uint8)
    return Image.fromarray(man, "RGB"), Image.fromarray(mask, "L")


MANNEQUIN, MASK = _mannequin_and_mask()


class Stack:
    """The launcher in its own process group, with its log."""

    def __init__(self, proc: subprocess.Popen, log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url
        self.children: list[psutil.Process] = []

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "[atelier] ready" in self.log.read_text(errors="replace"):
                self.children = psutil.Process(self.proc.pid).children(recursive=True)
                return
            assert self.proc.poll() is None, "launcher exited:\n" + self.log_tail()
            time.sleep(0.2)
        raise AssertionError("launcher not ready:\n" + self.log_tail())

    def interrupt(self) -> tuple[int | None, list[psutil.Process]]:
        """Ctrl-C (SIGINT to the process group); the launcher's exit status and what is left running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            rc = None
        _, alive = psutil.wait_procs(self.children, timeout=10)
        return rc, alive

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for p in self.children:
            if p.is_running():
                p.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("picpik-client")
    public_key = f"picpik-e2e-{uuid.uuid4().hex[:12]}"
    keys = base / "keys.yaml"
    # The PrivateKey quoted: YAML would read a bare 123456 as a number.
    keys.write_text(f'keys:\n  - PublicKey: {public_key}\n    PrivateKey: "{PRIVATE_KEY}"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_DATA_DIR=str(base / "data"),
        ATELIER_PORT=str(port),
        ATELIER_KEYS_FILE=str(keys),
        ATELIER_DEVICE="cpu",
        # the demo models are built once per machine (as tests/conftest.py does), not once per run
        ATELIER_DEMO_MODELS_DIR=os.environ.get("ATELIER_DEMO_MODELS_DIR",
                                               str(Path.home() / ".cache" / "atelier" / "test-models")),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    log = base / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.run"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    s = Stack(proc, log, f"http://127.0.0.1:{port}")
    s.public_key = public_key
    try:
        s.wait_ready()
        yield s
    finally:
        try:
            s.interrupt()
        finally:
            s.kill()


@pytest.fixture(scope="module")
def client(stack):
    c = PicpikClient(stack.url, stack.public_key, PRIVATE_KEY)
    yield c
    c.close()


@pytest.fixture(scope="module")
def catalog(client):
    models = client.call("ListModels")
    nets = client.call("ListControlNets")
    return models, nets


def _ok(answer: dict, action: str, body: dict | None = None) -> None:
    assert answer["RetCode"] == 0, answer
    assert answer["Action"] == action and answer["Message"] == ""
    if body is not None:
        assert answer["request_uuid"] == body["request_uuid"]


def _reference_example(**changes) -> dict:
    """The reference's GenerateFromMannequin request example (without its common fields), with small
    PNGs. Width/Height are added: the example has none, and its defaults (1024x1024) are too slow for
    a CPU; 64x80 is the size of the input images."""
    params = {
        "BatchSize": 2,
        "Image2Image": {"ImageIndex": 0, "ReferStrength": 0.3, "ResizeMode": "ResizeAndFill"},
        "ImageAndMaskList": [_data_uri(MANNEQUIN), _data_uri(MASK)],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
        "NegativePrompts": [],
        "PositivePrompts": ["girl", "smile"],
        "TranslatePrompts": True,
        "Width": W,
        "Height": H,
    }
    params.update(changes)
    return params


def _generate_and_check(client: PicpikClient, stack: Stack, params: dict) -> dict:
    """Send one GenerateFromMannequin, wait for it, check the TaskDetail and every image; the detail."""
    body = client.body("GenerateFromMannequin", **params)
    answer = client.post(body)
    _ok(answer, "GenerateFromMannequin", body)
    uid = answer["TaskUID"]
    assert isinstance(uid, str) and uid
    try:
        detail = client.wait(uid, timeout=150)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{stack.log_tail()}") from None
    batch = params.get("BatchSize", 1)
    assert detail["TaskUID"] == uid and detail["Action"] == "GenerateFromMannequin"
    assert detail["Status"] == "Finished", detail
    assert detail["ErrorCode"] == 0 and detail["ErrorMassage"] == ""
    assert detail["TxtList"] == []
    assert detail["ConsumeApiPoint"] == batch
    assert isinstance(detail["Seed"], int) and 0 <= detail["Seed"] <= 2147483647
    assert len(detail["ImgList"]) == batch
    keep = np.array(MASK) >= 128
    expected = np.array(MANNEQUIN)[keep]
    for url in detail["ImgList"]:
        r = client.download(url)
        assert r.status_code == 200, (url, r.status_code)
        assert r.headers["content-type"].startswith("image/png")
        img = Image.open(io.BytesIO(r.content))
        assert img.format == "PNG" and img.size == (W, H)
        out = np.array(img.convert("RGB"))
        assert np.array_equal(out[keep], expected), "the garment's pixels were not kept exactly"
        assert not np.array_equal(out[~keep], np.array(MANNEQUIN)[~keep]), "nothing was redrawn"
    return detail


def _notes(detail: dict) -> str:
    notes = detail.get("Notes")
    return " | ".join(notes) if isinstance(notes, list) else str(notes)


# --- 1. the catalogue -----------------------------------------------------------------------------

def test_list_models_and_control_nets(client, catalog):
    models, nets = catalog
    _ok(models, "ListModels")
    _ok(nets, "ListControlNets")
    assert isinstance(models["MainModels"], list) and models["MainModels"], models
    for field in ("MainModels", "LoraModels", "EmbeddingModels", "HypernetworkModels"):
        for m in models.get(field, []):
            assert isinstance(m["ModelCode"], str) and m["ModelCode"]
            assert isinstance(m.get("InferenceParams", {}), dict)
    assert models["LoraModels"], "the demo deployment serves a LoRA"
    for field in ("PreProcessors", "ControlModels"):
        assert isinstance(nets[field], list) and nets[field], nets
        for unit in nets[field]:
            assert {"ModelCode", "Name", "InferenceParams"} <= unit.keys()
    assert "canny" in [p["ModelCode"] for p in nets["PreProcessors"]]


# --- 2.-5. GenerateFromMannequin -----------------------------------------------------------------

def test_reference_example_without_main_model(client, stack, catalog):
    detail = _generate_and_check(client, stack, _reference_example())
    notes = _notes(detail)
    assert "MainModel" in notes and "default" in notes, notes


def test_image_list_and_mask_list_with_main_model_passed_back(client, stack, catalog):
    main = catalog[0]["MainModels"][0]
    params = _reference_example(ImageList=[_data_uri(MANNEQUIN)], MaskList=[_data_uri(MASK)],
                                Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 0}, MainModel=main)
    del params["ImageAndMaskList"]
    detail = _generate_and_check(client, stack, params)
    assert "ignored" not in _notes(detail)


def test_control_net_list_canny(client, stack, catalog):
    control = catalog[1]["ControlModels"][0]["ModelCode"]
    unit = {"PreProcessor": {"ModelCode": "canny"},
            "ControlModel": {"ModelCode": control, "InferenceParams": {"ControlWeight": 0.8}}}
    _generate_and_check(client, stack, _reference_example(ControlNetList=[unit]))


def test_floats_signed_as_the_python_sdk_writes_them(stack, catalog):
    lora = {**catalog[0]["LoraModels"][0], "InferenceParams": {"LoraWeight": 1e-05}}
    params = _reference_example(SubModelList=[lora],
                                Image2Image={"ImageIndex": 0, "ReferStrength": 0.00001,
                                             "ResizeMode": "ResizeAndFill"})
    python_sdk = PicpikClient(stack.url, stack.public_key, PRIVATE_KEY, float_style="python")
    published = PicpikClient(stack.url, stack.public_key, PRIVATE_KEY)
    try:
        body = python_sdk.body("GenerateFromMannequin", **params)
        # the two spellings really differ for this body (1e-05 against 0.00001)
        assert published.body("GenerateFromMannequin", **{**params, "request_uuid": body["request_uuid"]}
                              )["Signature"] != body["Signature"]
        _generate_and_check(python_sdk, stack, params)
    finally:
        python_sdk.close()
        published.close()


# --- 6. refusals ----------------------------------------------------------------------------------

def _refused(client: PicpikClient, body: dict, code: int, *named: str) -> dict:
    answer = client.post(body)
    assert answer["RetCode"] == code, answer
    assert answer["request_uuid"] == body.get("request_uuid", "")
    for name in named:
        assert name in answer["Message"], answer
    assert "Traceback" not in answer["Message"]
    return answer


@pytest.mark.parametrize("changes, code, named", [
    ({"Width": 10}, 230, ["[Width]"]),
    ({"ImageList": ["__MANNEQUIN__"]}, 230, ["ImageList"]),
    ({"ControlNet": [], "ControlNetList": []}, 230, ["ControlNet"]),
    ({"ControlNetList": "__4_UNITS__"}, 230, ["ControlNetList"]),
    ({"MainModel": {"ModelCode": "nope"}}, 240, ["nope"]),
], ids=["width-10", "both-image-styles", "ControlNet-and-ControlNetList", "4-control-units", "unknown-model"])
def test_bad_fields_are_refused_naming_the_field(client, catalog, changes, code, named):
    unit = {"PreProcessor": {"ModelCode": "canny"},
            "ControlModel": {"ModelCode": catalog[1]["ControlModels"][0]["ModelCode"]}}
    resolved = {k: ([_data_uri(MANNEQUIN)] if v == ["__MANNEQUIN__"] else [unit] * 4 if v == "__4_UNITS__" else v)
                for k, v in changes.items()}
    params = _reference_example(BatchSize=1, **resolved)
    _refused(client, client.body("GenerateFromMannequin", **params), code, *named)


def test_tampered_body_is_171(client):
    body = client.body("GenerateFromMannequin", **_reference_example(BatchSize=1))
    body["PositivePrompts"] = ["girl", "frown"]
    _refused(client, body, 171)


def test_unknown_public_key_is_172(stack):
    stranger = PicpikClient(stack.url, "nobody-" + uuid.uuid4().hex[:8], PRIVATE_KEY)
    try:
        _refused(stranger, stranger.body("ListModels"), 172)
    finally:
        stranger.close()


def test_missing_signature_is_170(client):
    body = client.body("ListModels")
    del body["Signature"]
    _refused(client, body, 170)


def test_unknown_action_is_161(client):
    _refused(client, client.body("GenerateFromNothing"), 161)


def test_non_ascii_character_in_base64_image_is_230(client):
    uri = _data_uri(MANNEQUIN)
    middle = len(uri) // 2
    bad = uri[:middle] + "é" + uri[middle:]
    params = _reference_example(BatchSize=1, ImageAndMaskList=[bad, _data_uri(MASK)])
    _refused(client, client.body("GenerateFromMannequin", **params), 230, "ImageAndMaskList[0]")


def test_unknown_field_is_accepted_and_named_in_the_notes(client, stack):
    params = _reference_example(BatchSize=1, Widht=64)
    body = client.body("GenerateFromMannequin", **params)
    answer = client.post(body)
    _ok(answer, "GenerateFromMannequin", body)
    detail = client.wait(answer["TaskUID"], timeout=150)
    assert detail["Status"] == "Finished", detail
    assert "ignored fields: Widht" in _notes(detail), detail


# --- the end: Ctrl-C -------------------------------------------------------------------------------

def test_ctrl_c_stops_everything(stack):
    names = " ".join(" ".join(p.cmdline()) for p in stack.children if p.is_running())
    assert "uvicorn" in names and "celery" in names and "redis-server" in names
    rc, alive = stack.interrupt()
    assert rc == 0, stack.log_tail()
    assert not alive, f"left running: {[p.pid for p in alive]}"
