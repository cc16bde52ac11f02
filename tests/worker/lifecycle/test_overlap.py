"""The worker's look-ahead (workers/lifecycle/overlap.py) against the real test Redis and real Celery messages (sent
by a Celery app with the deployment's priority lists): it finds the job the worker would take next, in priority
order and its direct queue first, without taking it; it holds what it prepared only until another job starts; and a
model that does not fit beside the running job's is not loaded ahead. Real worker: tests/e2e/test_overlap.py."""
from __future__ import annotations

import uuid

import pytest
import redis
import torch
from celery import Celery

from app.contract.jobs import GENERATE_TASK, RESIZE_TASK
from app.contract.queue import PRIORITY_STEPS, broker_priority, queue_lists
from workers.lifecycle.overlap import Finisher, LookAhead
from workers.models.cache import Lease, ModelCache, NoRoom


@pytest.fixture()
def queues(redis_url):
    shared = f"overlap-{uuid.uuid4().hex[:8]}"
    direct = f"{shared}.w.me"
    sender = Celery("overlap-test", broker=redis_url)
    sender.conf.broker_transport_options = {"priority_steps": list(PRIORITY_STEPS),
                                            "queue_order_strategy": "priority"}
    r = redis.Redis.from_url(redis_url)

    def send(queue: str, uid: str, priority: int = 5, task: str = GENERATE_TASK.name) -> None:
        sender.send_task(task, args=[{"task_uid": uid}], queue=queue, priority=broker_priority(priority))

    send.r, send.shared, send.direct = r, shared, direct
    yield send
    r.delete(*queue_lists(shared), *queue_lists(direct))
    sender.close()


def _look_ahead(send, cache: ModelCache) -> tuple[LookAhead, list[str]]:
    seen: list[str] = []

    def prepare(message: dict, held: Lease) -> None:
        seen.append(message["task_uid"])
        held.get(("model", message["task_uid"]), lambda: object(), label="m", kind="pipeline", estimate=1, ahead=True)

    return LookAhead(send.r, [send.direct, send.shared], cache, {GENERATE_TASK.name: prepare}), seen


def _waiting(send) -> int:
    return sum(send.r.llen(key) for q in (send.shared, send.direct) for key in queue_lists(q))


def test_the_look_ahead_prepares_the_job_the_worker_takes_next_without_taking_it(queues):
    cache = ModelCache(device_bytes=100, host_bytes=100, device="cpu")
    look, seen = _look_ahead(queues, cache)
    look.trigger()
    assert look.wait(10) and seen == []  # nothing queued: nothing prepared
    queues(queues.shared, "low-first", priority=2)
    queues(queues.shared, "shared-5")
    queues(queues.direct, "direct-5")
    queues(queues.shared, "resize-9", priority=9, task=RESIZE_TASK.name)  # the next one, but nothing to prepare
    look.trigger()
    assert look.wait(10) and seen == [] and look.prepared == 0
    queues.r.delete(*queue_lists(queues.shared)[:1])  # the Priority 9 list: the resize taken by another worker
    look.trigger()
    assert look.wait(10)
    assert seen == ["direct-5"]  # Priority 5 before 2; at one Priority the worker's own queue first
    assert _waiting(queues) == 3  # peeked, not taken
    assert cache.held() == ["m"]  # its model held for it...
    look.started("direct-5")
    assert cache.held() == ["m"]  # ... while the job it was prepared for starts
    look.release()
    assert cache.held() == []


def test_what_the_look_ahead_holds_goes_when_another_job_starts(queues):
    cache = ModelCache(device_bytes=100, host_bytes=100, device="cpu")
    look, seen = _look_ahead(queues, cache)
    queues(queues.shared, "peeked")
    look.trigger()
    assert look.wait(10) and seen == ["peeked"] and cache.held() == ["m"]
    look.started("another")  # another worker took it, or a higher job passed it
    assert cache.held() == []


def test_a_model_that_does_not_fit_beside_the_running_job_s_is_not_loaded_ahead():
    cache = ModelCache(device_bytes=100, host_bytes=100, device="cpu")
    loads = []

    def load(name: str, floats: int):
        def go() -> torch.Tensor:
            loads.append(name)
            return torch.zeros(floats)  # 4 bytes each
        return go

    with cache.lease() as running:
        held = running.get("a", load("a", 20), label="a", kind="pipeline", estimate=80)
        with cache.lease() as ahead, pytest.raises(NoRoom):
            ahead.get("b", load("b", 20), label="b", kind="pipeline", estimate=80, ahead=True)
        with cache.lease() as ahead:
            ahead.get("c", load("c", 5), label="c", kind="vae", estimate=20, ahead=True)  # it fits
            assert ahead.get("a", load("a", 20), label="a", kind="pipeline", ahead=True) is held  # a hit
    assert loads == ["a", "c"]


def test_the_finisher_runs_the_stores_in_order_and_drains():
    done: list[int] = []
    finisher = Finisher()
    for i in range(5):
        finisher.submit(lambda i=i: done.append(i))
    finisher.submit(lambda: 1 / 0)  # one failing store does not stop the next ones
    finisher.submit(lambda: done.append(5))
    finisher.drain()
    assert done == [0, 1, 2, 3, 4, 5]
