"""Shared fixtures: a real Redis (ATELIER_TEST_REDIS_URL, default db 15 of 127.0.0.1:6379), an
isolated data dir, key file and Celery queue per test session, signed-request helpers, and a live
stack (uvicorn gateway + Celery worker subprocesses) for end-to-end tests."""
from __future__ import annotations

import base64
import io
import os
import socket
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

ROOT = Path(__file__).resolve().parents[1]
TEST_REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
KEYS = {"pk-alice": "alice-secret", "pk-bob": "bob-secret"}  # logical key name -> PrivateKey
# The PublicKeys are unique per test session, so that tasks left in Redis by an earlier session (or a
# concurrent one) never count against this session's per-key limits or show up in its listings.
PUB = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in KEYS}

# The test deployment: the shipped models plus a 4-channel demo and a model whose files are missing.
TEST_MODELS_YAML = (ROOT / "models_config" / "models.yaml").read_text() + """
  - ModelCode: demo-sd15
    Name: Demo 4-channel base model
    ModelType: Main
    source: {demo: sd15}
    defaults: {steps: 4, guidance_scale: 5.0}
    TriggerWordList: [fashion photo]
  - ModelCode: broken
    Name: A model whose files are missing
    ModelType: Main
    source: {path: /nonexistent/model}
  - ModelCode: corrupt-lora
    Name: A LoRA file that is not a LoRA
    ModelType: LoRA
    source: {file: corrupt-lora.safetensors}
  - ModelCode: demo-canny-default
    Name: Demo model with canny control by default
    ModelType: Main
    source: {demo: inpaint}
    defaults: {steps: 8, guidance_scale: 5.0}
    default_control:
      - {PreProcessor: canny, ControlModel: demo-controlnet}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    r.delete(env["ATELIER_QUEUE"])


def _clear_caches() -> None:
    from app.core.redis_conn import get_redis
    from app.core.settings import get_settings
    from app.services import get_services

    get_settings.cache_clear()
    get_services.cache_clear()
    get_redis.cache_clear()


# --- request helpers ---------------------------------------------------------------------------

def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def signed(body: dict, key: str = "pk-alice", private_key: str | None = None) -> dict:
    """Sign as the test key ``key`` ("pk-alice" or "pk-bob") with an implementation written independently
    of app.signature (tests/independent_signer.py)."""
    from independent_signer import picpik_signature

    body = {"PublicKey": PUB[key], "request_uuid": str(uuid.uuid4()), **body}
    body["Signature"] = picpik_signature(body, private_key or KEYS[key])
    return body


def example_inputs(w: int = 64, h: int = 80) -> tuple[Image.Image, Image.Image]:
    """A small mannequin (grey figure, red garment block) and its clothes mask."""
    man = Image.new("RGB", (w, h), (220, 220, 215))
    for x in range(w // 3, 2 * w // 3):
        for y in range(4, h - 4):
            man.putpixel((x, y), (140, 140, 140))
    mask = Image.new("L", (w, h), 0)
    for x in range(w // 3, 2 * w // 3):
        for y in range(h // 3, 2 * h // 3):
            man.putpixel((x, y), (200, 20 + (x * 7) % 50, 40 + (y * 5) % 60))
            mask.putpixel((x, y), 255)
    return man, mask


def generate_body(**overrides) -> dict:
    man, mask = example_inputs()
    body = {
        "Action": "GenerateFromMannequin",
        "MainModel": {"ModelCode": "demo-inpaint"},
        "PositivePrompts": ["a woman", "studio photo"],
        "ImageAndMaskList": [png_b64(man), png_b64(mask)],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
        "Width": 64, "Height": 64, "Seed": 1234,
    }
    body.update(overrides)
    return body


@pytest.fixture()
def api(atelier_env):
    """An in-process gateway (FastAPI TestClient) against the real Redis."""
    from fastapi.testclient import TestClient

    from app.main import app

    with TestClient(app) as client:
        def post(body: dict) -> dict:
            r = client.post("/", json=body)
            assert r.status_code == 200, r.text
            return r.json()
        post.client = client
        yield post


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
