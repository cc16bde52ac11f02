"""Webhooks end to end (docs/API.md "Webhooks"): a uvicorn gateway and a Celery worker as subprocesses, on a
redis-server of the module's own, a real HTTP receiver on 127.0.0.1.

- a task that a real worker finishes is POSTed, signed (Standard Webhooks, the key's WebhookSecret), to its
  CallbackUrl: its TaskDetail, whose result link serves the image;
- a task that ends while no gateway runs (the worker never delivers) is delivered once a gateway starts again.
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
import yaml
from PIL import Image
from standardwebhooks import Webhook

from app.contract.taskstore import WEBHOOKS, TaskStore
from support.api import ROOT, free_port, generate_body, png_b64
from support.signer import picpik_signature
from support.webhooks import Receiver, make_secret, private_redis

pytestmark = pytest.mark.slow

PUBLIC, PRIVATE, SECRET = f"wh-e2e-{uuid.uuid4().hex[:8]}", "e2e-private", make_secret()


class Stack:
    """A gateway and a worker of this module's deployment, each stopped and started again at will."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.tasks = TaskStore(redis.Redis.from_url(env["ATELIER_REDIS_URL"], decode_responses=True), 3600)
        self.url = f"http://127.0.0.1:{env['ATELIER_PORT']}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = 0

    def start(self, name: str) -> None:
        self.starts += 1
        argv = {"gateway": ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", self.env["ATELIER_PORT"]],
                "worker": ["celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "-Q",
                           self.env["ATELIER_QUEUE"], "--loglevel", "INFO", "-n", f"wh-{uuid.uuid4().hex[:6]}@%h"]}
        log = (self.logs / f"{name}.{self.starts}.log").open("wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", *argv[name]], env=self.env, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)
        if name == "gateway":
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or self.procs[name].poll() is not None:
                    raise AssertionError(f"the gateway did not come up; see {self.logs}")
                time.sleep(0.1)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def post(self, body: dict) -> dict:
        body = {"PublicKey": PUBLIC, "request_uuid": str(uuid.uuid4()), **body}
        body["Signature"] = picpik_signature(body, PRIVATE)
        r = httpx.post(self.url + "/", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def stack(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("webhooks-e2e")
    keys = base / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"PublicKey": PUBLIC, "PrivateKey": PRIVATE, "WebhookSecret": SECRET}]}))
    with private_redis(base) as redis_url:
        env = {**os.environ, **atelier_env, "PYTHONPATH": str(ROOT), "ATELIER_REDIS_URL": redis_url,
               "ATELIER_KEYS_FILE": str(keys), "ATELIER_DATA_DIR": str(base / "data"), "ATELIER_PORT": str(free_port()),
               "ATELIER_QUEUE": f"atelier-webhooks-{uuid.uuid4().hex[:8]}", "ATELIER_WEBHOOK_ALLOW_PRIVATE": "1",
               "ATELIER_WEBHOOK_INTERVAL_S": "0.2"}
        s = Stack(env, base)
        s.start("worker")
        s.start("gateway")
        yield s
        for name in list(s.procs):
            s.stop(name)


@pytest.fixture()
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


def _check_delivery(post, uid: str) -> dict:
    """The POST a task's webhook made: signed with the key's secret, its TaskDetail Finished with one image."""
    assert post.headers["webhook-id"] == f"{uid}-Finished"
    payload = Webhook(SECRET).verify(post.body, post.headers)
    assert (payload["TaskUID"], payload["Status"], payload["ErrorCode"]) == (uid, "Finished", 0)
    assert len(payload["ImgList"]) == 1
    image = httpx.get(payload["ImgList"][0], timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    return payload


def test_a_finished_task_is_posted_signed_to_its_callback_url(stack, receiver):
    answer = stack.post(generate_body(CallbackUrl=receiver.url()))
    assert answer["RetCode"] == 0, answer
    uid = answer["TaskUID"]
    post = receiver.wait(1, timeout=240)[0]
    payload = _check_delivery(post, uid)
    assert stack.post({"Action": "ListTasksDetails", "TaskUIDList": [uid]})["TaskDetailList"] == [payload]
    time.sleep(1)  # delivered once: a 2xx ends the delivery
    assert len(receiver.received) == 1 and stack.tasks.r.zscore(WEBHOOKS, uid) is None


def test_a_task_that_ends_while_no_gateway_runs_is_delivered_when_one_starts(stack, receiver):
    stack.stop("worker")
    answer = stack.post(generate_body(CallbackUrl=receiver.url()))
    assert answer["RetCode"] == 0, answer
    uid = answer["TaskUID"]
    stack.stop("gateway")
    stack.start("worker")  # it finishes the task with no gateway running
    deadline = time.monotonic() + 240
    while (rec := stack.tasks.get(uid)).status.value != "Finished":
        assert rec.status.value in ("Queuing", "Running") and time.monotonic() < deadline, rec
        time.sleep(0.2)
    time.sleep(2)
    assert receiver.received == []  # the worker does not deliver ...
    assert stack.tasks.r.zscore(WEBHOOKS, uid) is not None  # ... the delivery waits in Redis
    stack.start("gateway")
    _check_delivery(receiver.wait(1, timeout=60)[0], uid)


def test_a_described_tasks_texts_are_in_its_webhook(stack, receiver):
    """DescribeImages' TxtList travels in its webhook like ImgList does (the payload is its TaskDetail)."""
    image = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))
    answer = stack.post({"Action": "DescribeImages", "ImageList": [image, image], "CallbackUrl": receiver.url()})
    assert answer["RetCode"] == 0, answer
    uid = answer["TaskUID"]
    post = receiver.wait(1, timeout=240)[0]
    payload = Webhook(SECRET).verify(post.body, post.headers)
    assert (payload["TaskUID"], payload["Status"], payload["ImgList"]) == (uid, "Finished", [])
    texts = payload["TxtList"]
    assert len(texts) == 2 and texts[0] and texts[0] == texts[1] and payload["ConsumeApiPoint"] == 2
    assert stack.post({"Action": "ListTasksDetails", "TaskUIDList": [uid]})["TaskDetailList"] == [payload]
