"""Model-aware routing with real processes (docs/deployment.md "Scheduling"): a gateway (uvicorn) and two Celery
workers whose model caches hold one pipeline each, two Main models (two copies of the demo checkpoint). A burst of
both models' jobs loads each pipeline about once (the workers' own ``atelier_model_cache_misses_total``), where the
shared queue alone makes the workers take turns loading them; a worker killed with jobs routed to it loses none of
them (the gateway hands its queue back), and one stopped with SIGTERM hands its queue back itself."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from app.contract.limits import DEFAULT_PRIORITY, PRIORITY_FIELD
from app.contract.queue import queue_lists
from app.contract.routing import direct_key, direct_queue
from app.contract.taskstore import TaskStore
from support.api import ROOT, free_port, generate_body, signed
from support.waiting import answers, stop, wait_until
from workers.models.sources import demo_path

pytestmark = pytest.mark.slow

MODELS = ("route-a", "route-b")


class Deployment:
    """A gateway and two workers on a queue of their own, sharing the session's Redis and data dir."""

    def __init__(self, base: Path, env: dict[str, str]):
        self.base, self.env = base, env
        self.url = f"http://127.0.0.1:{env['ATELIER_PORT']}"
        self.queue = env["ATELIER_QUEUE"]
        self.r = redis.Redis.from_url(env["ATELIER_REDIS_URL"], decode_responses=True)
        self.procs: dict[str, subprocess.Popen] = {}
        # each worker's metrics port, free when asked (make run's base + index could fall on a port in use)
        self.metrics_ports = [free_port() for _ in range(2)]
        self.start("gateway", [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                               env["ATELIER_PORT"]])
        for i in range(2):
            self.start_worker(i)

    def start(self, name: str, argv: list[str], **extra: str) -> None:
        log = (self.base / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(argv, env={**self.env, **extra}, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT)

    def start_worker(self, i: int) -> None:
        self.start(f"worker{i}", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
                                  "solo", "-Q", self.queue, "--loglevel", "INFO", "-n",
                                  f"route{i}-{uuid.uuid4().hex[:6]}@%h"], ATELIER_WORKER_INDEX=str(i),
                   ATELIER_WORKER_METRICS_PORT=str(self.metrics_ports[i] - i))

    def worker_id(self, i: int) -> str:
        return f"{os.uname().nodename}:{self.procs[f'worker{i}'].pid}"

    def wait_ready(self, timeout: float = 120) -> None:
        """The gateway answers, and both workers serve their metrics and consume their direct queues (advertised
        in Redis)."""
        def up() -> bool:
            ids = {self.worker_id(i) for i in range(2)}
            return (answers(f"{self.url}/healthz") and ids <= self.r.smembers(direct_key(self.queue))
                    and all(answers(self.metrics_url(i)) for i in range(2)))

        wait_until("the deployment to come up", up, timeout, step=0.2, on_fail=self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in self.base.glob("*.log"))

    def submit(self, model: str, seed: int, size: int = 64, priority: int = DEFAULT_PRIORITY) -> str:
        body = generate_body(MainModel={"ModelCode": model}, Seed=seed, Width=size, Height=size,
                             **{PRIORITY_FIELD: priority})
        out = httpx.post(self.url + "/", json=signed(body), timeout=30).json()
        assert out["RetCode"] == 0, out
        return out["TaskUID"]

    def statuses(self, uids: list[str]) -> dict[str, str]:
        out = httpx.post(self.url + "/", json=signed({"Action": "ListTasksDetails", "TaskUIDList": uids}),
                         timeout=30).json()
        return {d["TaskUID"]: d["Status"] for d in out["TaskDetailList"]}

    def wait_finished(self, uids: list[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.statuses(uids)
            if all(s in ("Finished", "Error", "Canceled") for s in got.values()):
                assert set(got.values()) == {"Finished"}, got
                return
            time.sleep(0.3)
        raise AssertionError(f"not finished: {self.statuses(uids)}\n{self.logs()}")

    def metrics_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[i]}/metrics"

    def pipeline_loads(self, i: int) -> int:
        text = httpx.get(self.metrics_url(i), timeout=5).text
        found = re.search(r'^atelier_model_cache_misses_total\{kind="pipeline"\} (\S+)$', text, re.M)
        return int(float(found.group(1))) if found else 0

    def held_model(self, i: int, timeout: float = 120) -> str:
        """One of :data:`MODELS` that worker ``i`` holds; when it holds none (the tests run alone, or after a
        restart), jobs of both are run until it does."""
        deadline, seed = time.monotonic() + timeout, 1000
        while True:
            held = self.r.get(f"atelier:warm:{self.worker_id(i)}") or ""
            found = next((m for m in MODELS if m in held), None)
            if found:
                return found
            assert time.monotonic() < deadline, f"worker {i} holds none of {MODELS}: {held!r}\n{self.logs()}"
            uids = [self.submit(MODELS[k % 2], seed + k) for k in range(4)]
            seed += 4
            self.wait_finished(uids)

    def direct_backlog(self, i: int) -> int:
        return sum(self.r.llen(n) for n in queue_lists(direct_queue(self.queue, self.worker_id(i))))

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            stop(p)


@pytest.fixture(scope="module")
def deployment(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("routing")
    demo = demo_path("inpaint", Path(atelier_env["ATELIER_DEMO_MODELS_DIR"]))
    copy = shutil.copytree(demo, base / "route-b")  # the same weights in another folder: another pipeline to load
    models = yaml.safe_load(Path(atelier_env["ATELIER_MODELS_CONFIG"]).read_text())
    models["models"] += [
        {"ModelCode": "route-a", "Name": "A", "ModelType": "Main", "family": "sd15", "source": {"path": str(demo)},
         "defaults": {"steps": 2, "guidance_scale": 5.0}, "faces": {"refine": False}},
        {"ModelCode": "route-b", "Name": "B", "ModelType": "Main", "family": "sd15", "source": {"path": str(copy)},
         "defaults": {"steps": 2, "guidance_scale": 5.0}, "faces": {"refine": False}},
    ]
    (base / "models.yaml").write_text(yaml.safe_dump(models, sort_keys=False))
    env = {**os.environ, **atelier_env, "PYTHONPATH": str(ROOT), "ATELIER_MODELS_CONFIG": str(base / "models.yaml"),
           "ATELIER_QUEUE": f"atelier-routing-{uuid.uuid4().hex[:8]}", "ATELIER_PORT": str(free_port()),
           # one demo pipeline (4.2 MB) fits, two do not; nothing kept in host memory either
           "ATELIER_MODEL_CACHE_BYTES": str(6 * 1024**2), "ATELIER_MODEL_CACHE_RAM_BYTES": "0"}
    d = Deployment(base, env)
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()
        d.r.delete(*queue_lists(d.queue))


def test_a_burst_of_two_models_loads_each_pipeline_about_once(deployment):
    d = deployment
    before = sum(d.pipeline_loads(i) for i in range(2))
    order = [MODELS[i % 2] for i in range(20)]
    random.Random(7).shuffle(order)
    uids = [d.submit(m, seed) for seed, m in enumerate(order)]
    d.wait_finished(uids)
    loads = sum(d.pipeline_loads(i) for i in range(2)) - before
    assert loads <= 4, f"{loads} pipeline loads for 20 jobs of 2 models on 2 workers"


def test_an_interactive_job_of_a_model_held_nowhere_starts_on_the_first_worker_to_free(deployment):
    """A catalogue batch at Priority 1 keeps both workers busy; a Priority 9 job of a third model (a load wherever it
    runs) goes to the shared queue, so the first worker to free takes it: no job of the batch starts between its
    submission and its start (sent to one worker's own queue, it would wait for that worker while the other went on
    with the batch)."""
    d = deployment
    for i in range(2):
        d.held_model(i)  # each holds one of MODELS, nothing else (its cache fits one pipeline)
    batch = [d.submit(MODELS[k % 2], 300 + k, size=512, priority=1) for k in range(12)]
    high = d.submit("demo-inpaint", 999, priority=9)
    queued = time.time()  # its job is in a queue once the gateway answered
    d.wait_finished([*batch, high])
    store = TaskStore(d.r, 3600)
    h = store.get(high)
    jobs = [store.get(uid) for uid in batch]
    # a batch job a worker took just before the high one was queued writes its start a moment later: 0.1 s of slack
    passed = [rec.uid for rec in jobs if queued + 0.1 < rec.started_at < h.started_at]
    assert not passed, f"batch jobs started while the high one waited: {passed}"
    assert any(rec.started_at > h.started_at for rec in jobs), "the batch should still have been waiting"


def test_a_killed_worker_s_routed_jobs_run_on_the_other(deployment):
    d = deployment
    # a worker holding a model: a run of that model's jobs queues on its worker
    victim = 0
    model = d.held_model(victim)
    uids = [d.submit(model, 100 + i, size=256) for i in range(8)]
    deadline = time.monotonic() + 30
    while d.direct_backlog(victim) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.direct_backlog(victim) >= 2, "the jobs should wait in the worker's own queue"
    d.procs[f"worker{victim}"].send_signal(signal.SIGKILL)
    d.procs[f"worker{victim}"].wait(10)
    t0 = time.monotonic()
    d.wait_finished(uids, timeout=180)
    assert d.direct_backlog(victim) == 0
    print(f"jobs of a killed worker all finished {time.monotonic() - t0:.1f}s after the kill")
    d.start_worker(victim)
    d.wait_ready()


def test_a_stopped_worker_hands_its_queue_back(deployment):
    d = deployment
    victim = 1
    model = d.held_model(victim)
    uids = [d.submit(model, 200 + i, size=256) for i in range(8)]
    deadline = time.monotonic() + 30
    while d.direct_backlog(victim) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.direct_backlog(victim) >= 2, "the jobs should wait in the worker's own queue"
    d.procs[f"worker{victim}"].send_signal(signal.SIGTERM)  # warm shutdown: finishes its job, hands back the rest
    d.procs[f"worker{victim}"].wait(60)
    assert d.direct_backlog(victim) == 0
    d.wait_finished(uids, timeout=120)
    assert re.search(r"handed \d+ job\(s\) of this worker's queue back", (d.base / f"worker{victim}.log").read_text(
        errors="replace")), "the worker itself hands its queue back (not the gateway's reclaim, seconds later)"
