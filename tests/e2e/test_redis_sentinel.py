"""Redis Sentinel with real processes (docs/deployment.md "Redis high availability"): a master, two replicas and
a sentinel (quorum 1, down-after-milliseconds 1000) on 127.0.0.1; a uvicorn gateway and a Celery worker (solo pool)
as subprocesses with ``ATELIER_REDIS_URL=sentinel://...`` and ``ATELIER_REDIS_WAIT_REPLICAS=1``.

- the master ``kill -9``-ed while tasks run: the sentinel promotes a replica, gateway and worker find it, every
  acknowledged task (RetCode 0) ends Finished; submissions during the outage get 150 (counted). The figures
  (kill -> new master, kill -> first acknowledged submission, kill -> all Finished) are printed (``pytest -s``);
- WAIT: a submission is acknowledged only once the replicas hold it; asking for more replicas than there are
  gets 150 and leaves no task behind.
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import httpx
import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from app.contract.redis_conn import connect, parse_redis_url
from app.contract.settings import get_settings
from app.contract.taskstore import TaskStore, active_key, task_key
from app.main import app
from app.services import get_services
from support.api import PUB, ROOT, example_inputs, free_port, generate_body, png_b64, signed
from support.redis_ha import Processes, SentinelSetup
from support.waiting import wait_until

pytestmark = pytest.mark.slow

SIZE = 256  # about 2 s a job of BatchSize 2 on one core: long enough to be mid-run when the master dies
MAN, MASK = example_inputs(SIZE, SIZE)
IMAGES = [png_b64(MAN), png_b64(MASK)]
SMALL = [png_b64(i) for i in example_inputs(64, 64)]


@pytest.fixture(scope="module")
def ha(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("sentinel")
    setup = SentinelSetup(base / "redis", replicas=2)
    env = {**os.environ, **atelier_env,
           "ATELIER_REDIS_URL": setup.url, "ATELIER_REDIS_SENTINEL_MASTER": setup.master_name,
           "ATELIER_REDIS_WAIT_REPLICAS": "1", "ATELIER_QUEUE": f"atelier-sentinel-{uuid.uuid4().hex[:8]}",
           "ATELIER_DATA_DIR": str(base / "data"), "ATELIER_PORT": str(free_port()),
           "ATELIER_LEASE_S": "4", "ATELIER_REAP_INTERVAL_S": "0.5", "OMP_NUM_THREADS": "1",
           "ATELIER_PROGRESS_INTERVAL_S": "0", "PYTHONPATH": str(ROOT)}
    procs = Processes(base, env, workers=1)
    try:
        procs.wait_ready()
        yield setup, procs
    finally:
        procs.close()
        setup.close()


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_services.cache_clear()


def test_a_submission_waits_for_the_replicas_and_gets_150_when_too_few_hold_it(ha, monkeypatch):
    setup, _ = ha
    store = TaskStore(connect(setup.url), 60)
    assert store.wait_replicated("probe", 2, 2000) == 2  # both replicas acknowledge the write

    # an in-process gateway asking for 3 replicas of a setup that has 2: not acknowledged, nothing left behind
    monkeypatch.setenv("ATELIER_REDIS_URL", setup.url)
    monkeypatch.setenv("ATELIER_REDIS_SENTINEL_MASTER", setup.master_name)
    monkeypatch.setenv("ATELIER_REDIS_WAIT_REPLICAS", "3")
    monkeypatch.setenv("ATELIER_REDIS_WAIT_TIMEOUT_MS", "300")
    monkeypatch.setenv("ATELIER_QUEUE", f"atelier-sentinel-nobody-{uuid.uuid4().hex[:6]}")  # no worker reads it
    r = setup.master.client()
    before = set(r.scan_iter(task_key("*")))
    _clear_caches()
    try:
        with TestClient(app) as client:
            out = client.post("/", json=signed(generate_body())).json()
    finally:
        _clear_caches()
    assert out["RetCode"] == 150, out
    assert set(r.scan_iter(task_key("*"))) == before
    assert r.smembers(active_key(PUB["pk-alice"])) <= {k.split(":")[-1] for k in before}


class Submitter(threading.Thread):
    """One small task every 0.3 s through the gateway until stopped: ``(time, RetCode, TaskUID)`` of each."""

    def __init__(self, procs: Processes):
        super().__init__(daemon=True)
        self.procs, self.stop, self.got = procs, threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set():
            body = generate_body(ImageAndMaskList=SMALL, Seed=len(self.got))
            try:
                out = self.procs.post(signed(body), timeout=30)
                self.got.append((time.monotonic(), out["RetCode"], out.get("TaskUID", "")))
            except httpx.HTTPError:
                self.got.append((time.monotonic(), -1, ""))
            self.stop.wait(0.3)

    def acknowledged(self, after: float = 0.0) -> list[str]:
        return [uid for t, code, uid in self.got if code == 0 and t > after]


def test_master_killed_mid_run_a_replica_takes_over_and_every_acknowledged_task_finishes(ha):
    setup, procs = ha
    setup.wait_synced()
    r = parse_redis_url(setup.url, sentinel_master=setup.master_name).client(socket_timeout=2)

    def status(uid: str) -> dict[str, str]:
        try:
            return r.hgetall(task_key(uid))
        except redis.RedisError:
            return {}

    first = []
    for i in range(4):
        out = procs.post(signed(generate_body(Width=SIZE, Height=SIZE, BatchSize=2, ImageAndMaskList=IMAGES,
                                              Seed=100 + i)))
        assert out["RetCode"] == 0, out
        first.append(out["TaskUID"])
    wait_until("a task running mid-job", lambda: any(status(u).get("status") == "Running"
                                                      and int(status(u).get("step", 0)) >= 1 for u in first), 60)
    sub = Submitter(procs)
    sub.start()
    wait_until("two submissions acknowledged before the kill", lambda: len(sub.acknowledged()) >= 2, 30)

    old_port = setup.master.port
    setup.master.kill()
    killed = time.monotonic()
    wait_until("the sentinel to promote a replica", lambda: _master_port(setup) not in (None, old_port), 30)
    promoted = time.monotonic() - killed
    wait_until("a submission acknowledged by the new master", lambda: sub.acknowledged(after=killed), 60)
    first_ok = min(t for t, code, _ in sub.got if code == 0 and t > killed) - killed
    wait_until("two more acknowledged", lambda: len(sub.acknowledged(after=killed)) >= 2, 30)
    sub.stop.set()
    sub.join(60)

    acknowledged = first + sub.acknowledged()
    refused = [code for t, code, _ in sub.got if code != 0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = {u: status(u).get("status") for u in acknowledged}
        if all(s in ("Finished", "Error", "Canceled") for s in states.values()):
            break
        time.sleep(0.25)
    all_done = time.monotonic() - killed
    reruns = sum(int(status(u).get("attempt", 0)) > 1 for u in acknowledged)
    print(f"\n[sentinel] kill -9 master -> replica promoted {promoted:.1f}s, first acknowledged submission"
          f" {first_ok:.1f}s, all {len(acknowledged)} acknowledged tasks ended {all_done:.1f}s;"
          f" {len(refused)} submissions refused during the outage (RetCodes {sorted(set(refused))}),"
          f" {reruns} task(s) run a second time")

    assert all(s == "Finished" for s in states.values()), (states, procs.logs())
    for uid in acknowledged:
        rec = status(uid)
        assert len(orjson.loads(rec.get("images", "[]"))) == (2 if uid in first else 1), rec
    assert set(refused) <= {150}, sub.got  # a refusal is a 150, never an HTTP error or a 500
    assert _master_port(setup) in {n.port for n in setup.replicas}
    # the gateway and the worker took the new master: one more task goes through
    out = procs.post(signed(generate_body(ImageAndMaskList=SMALL, Seed=99)))
    assert out["RetCode"] == 0, out
    wait_until("a task after the failover", lambda: status(out["TaskUID"]).get("status") == "Finished", 60)


def _master_port(setup: SentinelSetup) -> int | None:
    try:
        return setup.master_port()
    except redis.RedisError:
        return None
