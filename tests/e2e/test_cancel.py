"""CancelTask end to end (docs/API.md): a real gateway (uvicorn) and one real Celery worker (solo pool) as
subprocesses, on the test Redis with a queue and a data dir of their own.

A Queuing task ends Canceled at once and never runs; a Running one ends Canceled at its next denoising step
and the worker takes the next job; an ended task is left as it is; another key's task is neither shown nor
canceled; cancelling twice answers Canceled twice.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from app.contract.queue import queue_lists
from support.api import ROOT, example_inputs, free_port, generate_body, png_b64, signed

pytestmark = pytest.mark.slow

MAN, MASK = example_inputs(256, 256)
IMAGES = [png_b64(MAN), png_b64(MASK)]
# about 8 s on one CPU core, both images in one pipeline call (a denoising step of about 1 s: cancellation
# happens at a step's end): canceled long before its end
LONG = dict(Width=512, Height=512, BatchSize=2)
SHORT = dict(Width=128, Height=128, BatchSize=1)


class Stack:
    def __init__(self, base: Path, env: dict[str, str]):
        self.base, self.env = base, env
        self.url = f"http://127.0.0.1:{env['ATELIER_PORT']}"
        self.data_dir = Path(env["ATELIER_DATA_DIR"])
        self.r = redis.Redis.from_url(env["ATELIER_REDIS_URL"], decode_responses=True)
        self.worker_log = base / "worker.log"
        port = env["ATELIER_PORT"]
        gateway = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", port]
        worker = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo",
                  "-Q", env["ATELIER_QUEUE"], "--loglevel", "INFO", "-n", f"cancel-{uuid.uuid4().hex[:6]}@%h"]
        self.procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
                      for argv, log in [(gateway, base / "gateway.log"), (worker, self.worker_log)]]

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                up = httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and " ready." in self.worker_log.read_text(errors="replace"):
                return
            assert all(p.poll() is None for p in self.procs), self.worker_log.read_text()[-2000:]
            time.sleep(0.2)
        pytest.fail("the stack did not come up: " + self.worker_log.read_text()[-2000:])

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def post(self, body: dict) -> dict:
        r = httpx.post(self.url + "/", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["RetCode"] == 0, out
        return out

    def submit(self, key: str = "pk-alice", **overrides) -> str:
        body = generate_body(ImageAndMaskList=IMAGES, **overrides)
        return self.post(signed(body, key))["TaskUID"]

    def cancel(self, uids: list[str], key: str = "pk-alice") -> dict[str, dict]:
        out = self.post(signed({"Action": "CancelTask", "TaskUIDList": uids}, key))
        return {d["TaskUID"]: d for d in out["TaskDetailList"]}

    def detail(self, uid: str, key: str = "pk-alice") -> dict:
        return self.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}, key))["TaskDetailList"][0]

    def wait(self, uid: str, cond, timeout: float, key: str = "pk-alice") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.detail(uid, key)
            if cond(d):
                return d
            time.sleep(0.05)
        raise AssertionError(f"task {uid}: {d}\n" + self.worker_log.read_text()[-2000:])

    def record(self, uid: str) -> dict[str, str]:
        return self.r.hgetall(f"atelier:task:{uid}")

    def log_lines(self, uid: str) -> list[str]:
        return [line for line in self.worker_log.read_text(errors="replace").splitlines() if f"task {uid}" in line]

    def result_dir(self, uid: str) -> Path:
        return self.data_dir / "results" / uid


@pytest.fixture(scope="module")
def stack(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("cancel")
    env = {**os.environ, **atelier_env, "ATELIER_QUEUE": f"atelier-cancel-{uuid.uuid4().hex[:8]}",
           "ATELIER_DATA_DIR": str(base / "data"), "ATELIER_PORT": str(free_port()), "ATELIER_LEASE_S": "4",
           "ATELIER_REAP_INTERVAL_S": "0.5", "ATELIER_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "ATELIER_PROGRESS_INTERVAL_S": "0", "PYTHONPATH": str(ROOT)}
    s = Stack(base, env)
    try:
        s.wait_up()
        yield s
    finally:
        s.close()
        s.r.delete(*queue_lists(env["ATELIER_QUEUE"]))


def _running(d: dict) -> bool:
    return d["Status"] == "Running" and d["Step"] >= 1


def _ended(d: dict) -> bool:
    return d["Status"] in ("Finished", "Error", "Canceled")


def test_cancel_queuing_running_ended_and_foreign_tasks(stack):
    long_uid = stack.submit(Seed=1, **LONG)
    stack.wait(long_uid, _running, 60)  # the one worker is busy with it

    # a Queuing task: Canceled in the answer, at once; twice
    queued = stack.submit(Seed=2, **SHORT)
    assert stack.detail(queued)["Status"] == "Queuing"
    first = stack.cancel([queued])
    assert list(first) == [queued] and first[queued]["Status"] == "Canceled", first
    assert first[queued]["ImgList"] == []
    assert stack.cancel([queued])[queued]["Status"] == "Canceled"

    # another key's task: left out of the answer, not canceled
    bobs = stack.submit("pk-bob", Seed=3, **SHORT)
    assert stack.cancel([bobs, queued]).keys() == {queued}
    assert stack.detail(bobs, "pk-bob")["Status"] == "Queuing"

    nxt = stack.submit(Seed=4, **SHORT)

    # the Running task: Canceled within ~3 s, at its next denoising step, without images
    d = stack.wait(long_uid, _running, 30)
    step = d["Step"]
    asked = time.monotonic()
    answer = stack.cancel([long_uid])
    assert answer[long_uid]["Status"] in ("Running", "Canceled"), answer
    d = stack.wait(long_uid, _ended, 10)
    took = time.monotonic() - asked
    print(f"\n[cancel] a Running task (step {step} of {d['TotalSteps']}) ended Canceled {took:.2f}s after CancelTask")
    assert d["Status"] == "Canceled" and d["ImgList"] == [] and d["Step"] < d["TotalSteps"], d
    assert took < 3.0
    assert stack.cancel([long_uid])[long_uid]["Status"] == "Canceled"  # idempotent

    # the worker goes on: the canceled Queuing task is skipped, the next ones run
    done = stack.wait(nxt, _ended, 60)
    assert done["Status"] == "Finished" and len(done["ImgList"]) == 1, done
    bob_done = stack.wait(bobs, _ended, 60, "pk-bob")
    assert bob_done["Status"] == "Finished", bob_done

    # an ended task is left as it is
    again = stack.cancel([nxt])[nxt]
    assert again["Status"] == "Finished" and len(again["ImgList"]) == 1, again
    assert stack.record(nxt)["status"] == "Finished" and (stack.result_dir(nxt) / "0.png").is_file()

    # the canceled Queuing task never ran: never started (no attempt), no log line but the skip, no images
    h = stack.record(queued)
    assert h["status"] == "Canceled" and "attempt" not in h and "started_at" not in h, h
    assert not stack.result_dir(queued).exists()
    assert all("already ended; not run here" in line for line in stack.log_lines(queued)), stack.log_lines(queued)
    assert stack.detail(queued)["ImgList"] == []
    # the canceled Running task: one run, ended by its worker, no images
    assert stack.record(long_uid)["attempt"] == "1"
    assert any(f"task {long_uid} canceled by its owner" in line for line in stack.log_lines(long_uid))
    assert not stack.result_dir(long_uid).exists()
