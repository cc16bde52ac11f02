"""End to end: signed requests to a real gateway (uvicorn), a real Redis, a real Celery worker,
the real demo model (tiny random weights, built by code), results downloaded over HTTP."""
from __future__ import annotations

import io
import re
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from app.contract.jobs import GENERATE_TASK_NAME
from app.contract.queue import make_celery
from app.services import get_services
from support.api import PUB, example_inputs, generate_body, signed

pytestmark = pytest.mark.slow


def _download(url: str) -> Image.Image:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def test_generate_end_to_end_clothes_kept_bit_exact(live_stack):
    out = live_stack.post(signed(generate_body(BatchSize=2, Width=64, Height=80,
                                               Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1,
                                                          "ResizeMode": "JustResize"})))
    assert out["RetCode"] == 0, out
    detail = live_stack.wait(out["TaskUID"])
    assert detail["Status"] == "Finished", detail
    assert detail["Seed"] == 1234 and detail["Progress"] == 100 and detail["ErrorCode"] == 0
    assert len(detail["ImgList"]) == 2
    man, mask = example_inputs()
    keep = np.array(mask) > 127
    imgs = [np.array(_download(u).convert("RGB")) for u in detail["ImgList"]]
    for img in imgs:
        assert img.shape == (80, 64, 3)
        assert np.array_equal(img[keep], np.array(man)[keep]), "clothes pixels must be identical"
    assert not np.array_equal(imgs[0], imgs[1]), "image i uses seed s+i"
    assert not np.array_equal(imgs[0][~keep], np.array(man)[~keep]), "the rest is redrawn"


def test_same_seed_same_images(live_stack):
    a = live_stack.wait(live_stack.post(signed(generate_body(Seed=77)))["TaskUID"])
    b = live_stack.wait(live_stack.post(signed(generate_body(Seed=77)))["TaskUID"])
    assert np.array_equal(np.array(_download(a["ImgList"][0])), np.array(_download(b["ImgList"][0])))


def test_result_links_are_owner_only_and_signed(live_stack):
    d = live_stack.wait(live_stack.post(signed(generate_body()))["TaskUID"])
    link = d["ImgList"][0]
    assert httpx.get(link).status_code == 200
    assert httpx.get(link.replace("sig=", "sig=0")).status_code == 404
    assert httpx.get(link.split("?")[0]).status_code in (404, 422)
    bob = live_stack.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [d["TaskUID"]]}, "pk-bob"))
    assert bob["TaskDetailList"] == []


def test_progress_is_visible_while_running(live_stack):
    uid = live_stack.post(signed(generate_body(Width=256, Height=256, Seed=5)))["TaskUID"]
    seen = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        d = live_stack.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
        seen.add((d["Status"], d["Step"], d["TotalSteps"]))
        if d["Status"] in ("Finished", "Error"):
            break
        time.sleep(0.05)
    assert d["Status"] == "Finished"
    running_steps = {step for status, step, total in seen if status == "Running" and total > 0}
    assert running_steps, f"never saw a Running state with TotalSteps: {seen}"


def test_bad_requests_keep_service_serving(live_stack):
    assert live_stack.post({"Action": "GenerateFromMannequin"})["RetCode"] == 170
    assert live_stack.post(signed(generate_body(ImageAndMaskList=["bm90IGFuIGltYWdl", "x"])))["RetCode"] == 230
    r = httpx.post(live_stack.url + "/", content=b"\x00\xff", timeout=10)
    assert r.status_code == 200 and r.json()["RetCode"] == 230
    d = live_stack.wait(live_stack.post(signed(generate_body()))["TaskUID"])
    assert d["Status"] == "Finished"


def test_unsupported_job_version_ends_in_error_and_worker_goes_on(live_stack, atelier_env):
    """A job message of an unknown version ends its task in Error; the next job still runs."""
    svc = get_services()
    uid, _ = svc.tasks.create(PUB["pk-alice"], None, "GenerateFromMannequin", 1, 0)
    make_celery().send_task(GENERATE_TASK_NAME, args=[{"v": 99, "task_uid": uid}], queue=atelier_env["ATELIER_QUEUE"])
    d = live_stack.wait(uid)
    assert d["Status"] == "Error" and d["ErrorCode"] == 505 and "version" in d["ErrorMessage"]
    assert "Traceback" not in d["ErrorMessage"]
    assert live_stack.wait(live_stack.post(signed(generate_body()))["TaskUID"])["Status"] == "Finished"


def test_the_worker_log_is_quiet_and_has_one_timing_line_per_job(live_stack):
    """No progress bars, no known-harmless warnings, and each finished job's phases in one line."""
    uid = live_stack.post(signed(generate_body(Seed=4242)))["TaskUID"]
    assert live_stack.wait(uid)["Status"] == "Finished"
    log = (live_stack.log_dir / "worker.log").read_text()
    for noise in ("Loading pipeline components", "Loading weights", "it/s]", "%|",
                  "were passed to AutoencoderTiny", "Expected types for vae"):
        assert noise not in log, noise
    [line] = [x for x in log.splitlines() if f"task {uid} finished:" in x]
    assert re.search(r"queue wait \d+\.\d\ds, load \d+\.\d\ds, inference \d+\.\d\ds, store \d+\.\d\ds$", line), line
    assert "worker runtime on cpu" in log  # built once at start, before the first job
    assert log.count("worker runtime on") == 1
