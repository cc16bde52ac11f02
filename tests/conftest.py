"""Shared fixtures: a real Redis (ATELIER_TEST_REDIS_URL, default db 15 of 127.0.0.1:6379), an
isolated data dir, key file and Celery queue per test session, signed-request helpers, and a live
stack (uvicorn gateway + Celery worker subprocesses) for end-to-end tests."""
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
from fastapi.testclient import TestClient

from app.contract.queue import queue_lists
from app.contract.redis_conn import get_redis
from app.contract.settings import get_settings
from app.contract.taskstore import active_key
from app.main import app
from app.services import get_services
from support.api import KEYS, PUB, ROOT, TEST_MODELS_YAML, TEST_REDIS_URL, free_port, signed, write_corrupt_engines


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(TEST_REDIS_URL).ping()
    except redis.RedisError as e:
        pytest.fail(f"the tests need a Redis at {TEST_REDIS_URL} ({e}); .ci/run starts one")
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def atelier_env(tmp_path_factory, redis_url) -> dict[str, str]:
    """Environment of an isolated deployment: its own data dir, keys and queue."""
    base = tmp_path_factory.mktemp("atelier")
    keys_file = base / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [{"PublicKey": PUB[k], "PrivateKey": v} for k, v in KEYS.items()]}))
    port = free_port()
    models = base / "models.yaml"
    models.write_text(TEST_MODELS_YAML)
    write_corrupt_engines(base)
    (base / "corrupt-lora.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + b"\x00" * 64)
    env = {
        "ATELIER_MODELS_CONFIG": str(models),
        "ATELIER_DATA_DIR": str(base / "data"),
        "ATELIER_REDIS_URL": redis_url,
        "ATELIER_KEYS_FILE": str(keys_file),
        "ATELIER_QUEUE": f"atelier-test-{uuid.uuid4().hex[:8]}",
        "ATELIER_PORT": str(port),
        "ATELIER_DEVICE": "cpu",
        "ATELIER_PROGRESS_INTERVAL_S": "0",
        # the demo model is built once per machine, not once per session
        "ATELIER_DEMO_MODELS_DIR": os.environ.get("ATELIER_DEMO_MODELS_DIR",
                                                   str(Path.home() / ".cache" / "atelier" / "test-models")),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _clear_caches()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _clear_caches()
    r = redis.Redis.from_url(redis_url)
    r.delete(*queue_lists(env["ATELIER_QUEUE"]))


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_services.cache_clear()
    get_redis.cache_clear()


@pytest.fixture()
def api(atelier_env, monkeypatch):
    """An in-process gateway (FastAPI TestClient) against the real Redis. It sends its jobs to a queue of its
    own that no worker reads (the session's live stack may be running), so what it queued stays queued:
    ``api.queue`` names it."""
    queue = f"{atelier_env['ATELIER_QUEUE']}-gateway-only"
    monkeypatch.setenv("ATELIER_QUEUE", queue)
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    active_before = {k: r.smembers(k) for k in r.scan_iter(active_key("*"))}
    _clear_caches()
    with TestClient(app) as client:
        def post(body: dict) -> dict:
            r = client.post("/", json=body)
            assert r.status_code == 200, r.text
            return r.json()
        post.client = client
        post.queue = queue
        yield post
    _clear_caches()
    r.delete(*queue_lists(queue))
    # the tasks it queued can never run now: they stop counting against their key's active-task limit (153), which
    # the session's later tests would otherwise reach one test at a time
    for k in r.scan_iter(active_key("*")):
        queued_here = r.smembers(k) - active_before.get(k, set())
        if queued_here:
            r.srem(k, *queued_here)


# --- live stack ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def live_stack(atelier_env):
    """A real gateway (uvicorn) and a real Celery worker (solo pool) as subprocesses."""
    env = {**os.environ, **atelier_env, "PYTHONPATH": str(ROOT)}
    port = atelier_env["ATELIER_PORT"]
    logs = Path(atelier_env["ATELIER_DATA_DIR"]).parent
    procs = []
    for name, argv in [
        ("gateway", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", port]),
        ("worker", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo",
                    "-Q", atelier_env["ATELIER_QUEUE"], "--loglevel", "INFO", "-n", f"test-{uuid.uuid4().hex[:6]}@%h"]),
    ]:
        log = open(logs / f"{name}.log", "wb")
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        pytest.fail("gateway did not come up: " + (logs / "gateway.log").read_text()[-2000:])

    class Stack:
        url = base
        log_dir = logs
        processes = procs

        def post(self, body: dict) -> dict:
            r = httpx.post(base + "/", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        def wait(self, uid: str, key: str = "pk-alice", timeout: float = 240) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                d = self.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}, key))
                detail = d["TaskDetailList"][0]
                if detail["Status"] in ("Finished", "Error"):
                    return detail
                time.sleep(0.2)
            raise AssertionError("task did not end in time; worker log:\n"
                                 + (logs / "worker.log").read_text()[-3000:])

    yield Stack()
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
