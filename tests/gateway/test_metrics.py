"""The gateway's /metrics, /readyz and /queue against a real Redis: API calls counted and timed by action and RetCode,
the queue depth (the shared queue's and the workers' direct queues' lists, every priority) and the Queuing tasks read
from Redis at scrape time, and readiness from the workers' liveness announcements (written here through the very
functions a worker uses)."""
from __future__ import annotations

import time

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

import app.metrics
from app.contract.limits import DEFAULT_PRIORITY, PRIORITY_FIELD
from app.contract.queue import broker_priority, queue_lists
from app.contract.routing import advertise, direct_key, direct_queue, gone_key, hand_back, routed_key, warm_key
from app.metrics import queue_depth
from app.services import get_services
from support.api import TEST_REDIS_URL, free_port, generate_body, signed
from workers.metrics import ALIVE_TTL_S, announce_alive, withdraw


def scrape(api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics: (name, sorted labels) -> value."""
    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_calls_are_counted_and_timed_by_action_and_retcode(api):
    before = scrape(api)
    assert api(signed({"Action": "ListModels"}))["RetCode"] == 0
    assert api(signed({"Action": "ListModels"}))["RetCode"] == 0
    bad = signed({"Action": "ListModels"})
    bad["Signature"] = "0" * 40
    assert api(bad)["RetCode"] == 171
    assert api({"Action": "Frobnicate"})["RetCode"] == 161
    raw = api.client.post("/", content=b"not json", headers={"content-type": "application/json"})
    assert raw.json()["RetCode"] == 230
    after = scrape(api)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("atelier_api_requests_total", action="ListModels", retcode="0") == 2
    assert delta("atelier_api_requests_total", action="ListModels", retcode="171") == 1
    assert delta("atelier_api_requests_total", action="?", retcode="161") == 1  # an unknown action is not a label
    assert delta("atelier_api_requests_total", action="", retcode="230") == 1   # no body, no action
    # every call timed once, under the action its answer names
    assert delta("atelier_api_request_seconds_count", action="ListModels") == 3
    assert delta("atelier_api_request_seconds_count", action="?") == 1
    assert delta("atelier_api_request_seconds_count", action="") == 1
    assert delta("atelier_api_request_seconds_sum", action="ListModels") > 0
    assert delta("atelier_api_request_seconds_bucket", action="ListModels", le="+Inf") == 3
    # other routes are not API calls
    api.client.get("/healthz")
    timed = sum(v for (name, _), v in after.items() if name == "atelier_api_request_seconds_count")
    assert sum(v for (name, _), v in scrape(api).items() if name == "atelier_api_request_seconds_count") == timed


def test_queue_depth_and_queuing_tasks_are_read_from_redis(api):
    r = redis_lib.Redis.from_url(TEST_REDIS_URL)
    before = scrape(api)
    assert value(before, "atelier_queue_depth", queue=api.queue) == 0 == queue_depth(r, api.queue)
    assert value(before, "atelier_broker_up") == 1
    uids = [api(signed(generate_body(Seed=seed)))["TaskUID"] for seed in (1, 2)]
    after = scrape(api)
    # no worker reads api.queue: both job messages wait there
    assert value(after, "atelier_queue_depth", queue=api.queue) == 2 == queue_depth(r, api.queue)
    assert value(after, "atelier_tasks", status="Queuing") - value(before, "atelier_tasks", status="Queuing") == 2
    assert ("atelier_tasks", (("status", "Running"),)) in after

    out = api(signed({"Action": "CancelTask", "TaskUIDList": [uids[0]]}))
    assert out["RetCode"] == 0, out
    canceled = scrape(api)
    assert value(canceled, "atelier_tasks", status="Queuing") - value(before, "atelier_tasks", status="Queuing") == 1
    assert value(canceled, "atelier_queue_depth", queue=api.queue) == 2  # its message stays until a worker skips it


def lengths(r, queue: str) -> list[int]:
    return [r.llen(name) for name in queue_lists(queue)]


def test_jobs_waiting_in_a_workers_direct_queue_are_counted(api):
    """Routed jobs wait in a worker's direct queue, at their priority: /queue, atelier_queue_depth and queue_depth
    count them there, then still once when the worker is gone, and once handed back to the shared queue."""
    r = get_services().tasks.r
    worker = f"test-host:{free_port()}"
    direct = direct_queue(api.queue, worker)
    announce_alive(r, worker, [api.queue])  # a live worker of the gateway's queue, as its heartbeat says...
    advertise(r, api.queue, worker, [], ALIVE_TTL_S)  # ... with a direct queue
    try:
        before, shared = queue_depth(r, api.queue), lengths(r, api.queue)
        for body in (generate_body(Seed=1), generate_body(Seed=2, **{PRIORITY_FIELD: 9})):
            assert api(signed(body))["RetCode"] == 0
        want = [0] * len(queue_lists(direct))
        want[broker_priority(9)] = want[broker_priority(DEFAULT_PRIORITY)] = 1
        assert lengths(r, direct) == want, "both routed to the worker, each in its priority's list"
        assert lengths(r, api.queue) == shared  # the shared queue's lists alone would say nothing was queued

        assert queue_depth(r, api.queue) == before + 2
        got = api.client.get("/queue")  # not signed: for an autoscaler
        assert got.status_code == 200, got.text
        assert got.json() == {"queue": api.queue, "waiting": before + 2, "workers": 1}
        assert value(scrape(api), "atelier_queue_depth", queue=api.queue) == before + 2

        withdraw(r, worker, [api.queue])  # gone with jobs in its queue: they still wait, for the reclaim
        got = api.client.get("/queue").json()
        assert got["waiting"] == before + 2 and got["workers"] == 0
        hand_back(r, api.queue, worker)  # moved (what the recovery loop's reclaim does): counted once
        assert sum(lengths(r, api.queue)) == sum(shared) + 2 and sum(lengths(r, direct)) == 0
        assert api.client.get("/queue").json()["waiting"] == queue_depth(r, api.queue) == before + 2
    finally:
        withdraw(r, worker, [api.queue])
        r.srem(direct_key(api.queue), worker)
        r.delete(*queue_lists(direct), warm_key(worker), routed_key(worker), gone_key(worker))


def test_readyz_needs_a_live_worker_on_the_gateways_queue(api):
    r = get_services().tasks.r
    me, other = f"test-host:{free_port()}", f"test-host:{free_port()}"
    try:
        got = api.client.get("/readyz")
        assert got.status_code == 503, got.text
        assert got.json()["workers"] == 0 and api.queue in got.json()["reason"]

        announce_alive(r, me, ["some-other-queue"])  # a worker of another queue does not serve this gateway
        assert api.client.get("/readyz").status_code == 503

        announce_alive(r, me, [api.queue])
        got = api.client.get("/readyz")
        assert got.status_code == 200 and got.json() == {"status": "ready", "workers": 1}
        announce_alive(r, other, [api.queue])
        announce_alive(r, other, [api.queue])  # renewed, not counted twice
        assert api.client.get("/readyz").json()["workers"] == 2
        assert value(scrape(api), "atelier_workers_alive", queue=api.queue) == 2

        withdraw(r, me, [api.queue])  # a clean shutdown
        assert api.client.get("/readyz").json()["workers"] == 1
        announce_alive(r, other, [api.queue], ttl_s=0.3)  # a worker that stops announcing itself...
        assert api.client.get("/readyz").status_code == 200
        time.sleep(0.5)
        got = api.client.get("/readyz")  # ... is not alive any more
        assert got.status_code == 503 and got.json()["workers"] == 0
    finally:
        withdraw(r, me, [api.queue, "some-other-queue"])
        withdraw(r, other, [api.queue])


def test_readyz_and_metrics_when_redis_does_not_answer(api, monkeypatch):
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, decode_responses=True)
    monkeypatch.setattr(get_services().tasks, "r", dead)
    got = api.client.get("/readyz")
    assert got.status_code == 503 and got.json()["status"] == "unavailable" and "broker" in got.json()["reason"]
    got = api.client.get("/queue")  # an autoscaler reading it keeps the count it had (KEDA: the scaler failed)
    assert got.status_code == 503 and got.json()["status"] == "unavailable" and "broker" in got.json()["reason"]
    assert "waiting" not in got.json() and got.json()["queue"] == api.queue

    monkeypatch.setattr(app.metrics, "get_redis", lambda: dead)
    samples = scrape(api)  # still served: the counters, and the broker down
    assert value(samples, "atelier_broker_up") == 0
    assert not any(name == "atelier_queue_depth" for name, _ in samples)
    assert any(name == "atelier_api_requests_total" for name, _ in samples)


@pytest.mark.parametrize("status", ["Queuing", "Running"])
def test_active_tasks_counts_by_the_records_status(api, status):
    """A task's status is read from its record: a Running one is counted Running, an ended one not at all."""
    svc = get_services()
    r = svc.tasks.r
    uid = api(signed(generate_body()))["TaskUID"]
    before = app.metrics.active_tasks(r)
    if status == "Running":
        state, _ = svc.tasks.start(uid, "test-worker", 30, 4)
        assert state == "started"
        assert app.metrics.active_tasks(r)["Running"] - before["Running"] == 1
        assert app.metrics.active_tasks(r)["Queuing"] - before["Queuing"] == -1
        assert svc.tasks.mark_finished(uid, [], 1, worker="test-worker")
        assert app.metrics.active_tasks(r)["Running"] - before["Running"] == 0
    else:
        assert svc.tasks.mark_error(uid, 500, "test")
        assert app.metrics.active_tasks(r)["Queuing"] - before["Queuing"] == -1
