"""A real worker's metrics and liveness, end to end: a worker of its own (its own queue, metrics on
ATELIER_WORKER_METRICS_PORT + ATELIER_WORKER_INDEX) runs jobs sent by an in-process gateway; its /metrics show the
jobs' phases, outcomes and images by model and what the model cache did; the gateway is ready while the worker
runs and not ready as soon as it shut down cleanly."""
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
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.contract.queue import queue_lists
from app.contract.redis_conn import get_redis
from app.contract.settings import get_settings
from app.main import app
from app.services import get_services
from support.api import ROOT, free_port, generate_body, signed

pytestmark = pytest.mark.slow


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_services.cache_clear()
    get_redis.cache_clear()


class Stack:
    """The in-process gateway of this module and its worker subprocess."""

    def __init__(self, client: TestClient, worker: subprocess.Popen, metrics_url: str, log: Path):
        self.client, self.worker, self.metrics_url, self.log = client, worker, metrics_url, log

    def post(self, body: dict) -> dict:
        r = self.client.post("/", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def run(self, **overrides) -> dict:
        out = self.post(signed(generate_body(**overrides)))
        assert out["RetCode"] == 0, out
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            detail = self.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [out["TaskUID"]]}))
            detail = detail["TaskDetailList"][0]
            if detail["Status"] in ("Finished", "Error", "Canceled"):
                return detail
            time.sleep(0.2)
        raise AssertionError("task did not end in time; worker log:\n" + self.log.read_text()[-3000:])

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = httpx.get(self.metrics_url, timeout=10)
        assert r.status_code == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def stack(live_stack, atelier_env):
    """Started after the session's live stack (which takes the environment as it is when it starts)."""
    queue = f"{atelier_env['ATELIER_QUEUE']}-metrics"
    port = free_port()
    env = {**os.environ, **atelier_env, "PYTHONPATH": str(ROOT), "ATELIER_QUEUE": queue,
           # the port is the base plus the worker's index, as make run sets them
           "ATELIER_WORKER_METRICS_PORT": str(port - 1), "ATELIER_WORKER_INDEX": "1"}
    log = Path(atelier_env["ATELIER_DATA_DIR"]).parent / "metrics-worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "-Q", queue,
             "--loglevel", "INFO", "-n", f"metrics-{uuid.uuid4().hex[:6]}@%h"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATELIER_QUEUE", queue)
        _clear_caches()
        try:
            with TestClient(app) as client:
                s = Stack(client, worker, f"http://127.0.0.1:{port}/metrics", log)
                deadline = time.monotonic() + 120
                while client.get("/readyz").status_code != 200:
                    assert worker.poll() is None, "worker exited:\n" + log.read_text()[-3000:]
                    assert time.monotonic() < deadline, "worker not ready:\n" + log.read_text()[-3000:]
                    time.sleep(0.2)
                yield s
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
            _clear_caches()
            redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"]).delete(*queue_lists(queue))


def test_the_worker_serves_its_metrics_on_the_base_port_plus_its_index(stack):
    samples = stack.scrape()
    assert value(samples, "atelier_model_cache_budget_bytes", place="device") == get_settings().model_cache_bytes
    assert value(samples, "atelier_model_cache_budget_bytes", place="host") == get_settings().model_cache_ram_bytes
    # a CPU worker has no GPU memory to report
    assert not any(name.startswith("atelier_gpu_memory") for name, _ in samples)


def test_a_job_shows_in_the_workers_metrics_by_model(stack):
    before = stack.scrape()
    assert stack.run(BatchSize=2)["Status"] == "Finished"
    first = stack.scrape()

    def delta(after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    m = "demo-inpaint"
    assert delta(first, "atelier_jobs_total", model=m, outcome="finished") == 1
    assert delta(first, "atelier_images_total", model=m) == 2
    for phase in ("queue_wait", "load", "inference", "store"):
        assert delta(first, f"atelier_job_{phase}_seconds_count", model=m) == 1, phase
    assert delta(first, "atelier_job_inference_seconds_sum", model=m) > 0
    assert delta(first, "atelier_job_queue_wait_seconds_sum", model=m) > 0
    loaded = delta(first, "atelier_model_cache_misses_total", kind="pipeline")
    if value(before, "atelier_job_load_seconds_count", model=m) == 0:  # the worker's first job of this model
        assert loaded == 1 and delta(first, "atelier_job_load_seconds_sum", model=m) > 0
    assert value(first, "atelier_model_cache_bytes", place="device") > 0

    # the same model again: a cache hit, nothing loaded
    assert stack.run()["Status"] == "Finished"
    second = stack.scrape()
    assert value(second, "atelier_model_cache_hits_total", kind="pipeline") > value(first,
                                                                                   "atelier_model_cache_hits_total",
                                                                                   kind="pipeline")
    assert value(second, "atelier_model_cache_misses_total", kind="pipeline") == value(
        first, "atelier_model_cache_misses_total", kind="pipeline")
    assert value(second, "atelier_job_load_seconds_bucket", model=m, le="0.001") - value(
        first, "atelier_job_load_seconds_bucket", model=m, le="0.001") == 1
    assert value(second, "atelier_images_total", model=m) - value(first, "atelier_images_total", model=m) == 1
    # the same photo and mask at the same size: the composition came from the worker's cache
    hits, misses = "atelier_composition_cache_hits_total", "atelier_composition_cache_misses_total"
    assert value(second, hits) - value(first, hits) == 1 and value(second, misses) == value(first, misses)
    assert value(second, "atelier_composition_cache_bytes") > 0


def test_a_failed_job_counts_as_an_error_with_its_code(stack):
    before = stack.scrape()
    detail = stack.run(MainModel={"ModelCode": "broken"})
    assert detail["Status"] == "Error" and detail["ErrorCode"] == 240
    after = stack.scrape()
    assert value(after, "atelier_jobs_total", model="broken", outcome="error") - value(
        before, "atelier_jobs_total", model="broken", outcome="error") == 1
    assert value(after, "atelier_job_errors_total", model="broken", code="240") - value(
        before, "atelier_job_errors_total", model="broken", code="240") == 1
    # it waited in the queue, but made nothing: no inference, no images
    assert value(after, "atelier_job_queue_wait_seconds_count", model="broken") - value(
        before, "atelier_job_queue_wait_seconds_count", model="broken") == 1
    assert value(after, "atelier_job_inference_seconds_count", model="broken") == 0
    assert value(after, "atelier_images_total", model="broken") == 0


def test_the_live_stacks_gateway_is_ready_while_its_worker_runs(live_stack):
    r = httpx.get(live_stack.url + "/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready" and r.json()["workers"] >= 1


def test_ready_while_the_worker_runs_and_not_once_it_shut_down(stack):
    got = stack.client.get("/readyz")
    assert got.status_code == 200 and got.json() == {"status": "ready", "workers": 1}
    stack.worker.terminate()  # warm shutdown: the worker withdraws itself, no waiting for its liveness to expire
    stack.worker.wait(60)
    got = stack.client.get("/readyz")
    assert got.status_code == 503, got.text
    assert got.json()["workers"] == 0
