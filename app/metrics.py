"""The gateway's Prometheus metrics (``GET /metrics``) and what ``GET /readyz`` and ``GET /queue`` read
(docs/deployment.md "Health, readiness and metrics").

- ``atelier_api_requests_total{action,retcode}`` and ``atelier_api_request_seconds{action}``: every ``POST /``,
  counted by :func:`count_answer` (called by ``app.main.answer``) and timed by :class:`TimedApi`;
- read from Redis at scrape time (:class:`BrokerCollector`): ``atelier_queue_depth`` (job messages waiting in
  ``ATELIER_QUEUE`` and in its workers' direct queues, :func:`queue_depth`), ``atelier_tasks{status}`` (Queuing and
  Running tasks), ``atelier_workers_alive`` (workers consuming the queue) and ``atelier_broker_up``.

The workers count how tasks end and everything about jobs and models (``workers/metrics.py``); the webhook
deliveries are counted where they are made. A worker announces itself alive in ``atelier:workers:<queue>``
(``workers/metrics.py`` ``announce_alive`` writes it; :func:`live_workers` reads it: keep the two in step).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from fastapi import Request
from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.contract.jobs import ACTIVE_STATUSES
from app.contract.queue import live_workers_key
from app.contract.redis_conn import get_redis
from app.contract.routing import direct_key, waiting_lists
from app.contract.settings import get_settings
from app.contract.taskstore import P, task_key

log = logging.getLogger("atelier.gateway")
disable_created_metrics()  # no *_created series: they double the series and say nothing here

REQUESTS = Counter("atelier_api_requests_total", "API calls by action and RetCode", ["action", "retcode"])
REQUEST_SECONDS = Histogram("atelier_api_request_seconds", "Time to answer an API call (POST /), body read"
                            " included", ["action"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

_ACTION = "atelier_action"  # where count_answer leaves the action's label for TimedApi (the request's state)


def count_answer(request: Request, action: str, code: int) -> None:
    """Count one answer of ``POST /`` (``action``: the label, ``?`` for an unknown action, empty when the body
    named none) and leave the label for :class:`TimedApi`."""
    REQUESTS.labels(action, str(int(code))).inc()
    setattr(request.state, _ACTION, action)


class TimedApi:
    """ASGI middleware: observes how long each ``POST /`` took, by the action :func:`count_answer` saw."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # the dict behind request.state, shared with the route
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_SECONDS.labels(state.get(_ACTION, "")).observe(time.perf_counter() - t0)


# --- read from Redis -------------------------------------------------------------------------------------

def queue_depth(r: redis.Redis, queue: str) -> int:
    """Job messages waiting for a worker of ``queue`` (not those a worker has taken): in the Redis lists of every
    priority of the shared queue and of each worker's direct queue (app/contract/routing.py). Two round trips."""
    return _waiting(r, queue, r.smembers(direct_key(queue)))


def queue_state(r: redis.Redis, queue: str) -> tuple[int, int]:
    """(:func:`queue_depth`, :func:`live_workers`) of ``queue``, in two round trips (``GET /queue``, the scrape)."""
    pipe = r.pipeline(transaction=False)
    pipe.smembers(direct_key(queue))
    pipe.eval(_LIVE, 1, live_workers_key(queue))
    direct, alive = pipe.execute()
    return _waiting(r, queue, direct), int(alive)


def _waiting(r: redis.Redis, queue: str, direct_ids: Iterable[bytes | str]) -> int:
    # MULTI: one snapshot of all the lists, so that a job moved from a direct queue to the shared one meanwhile
    # (routing.hand_back, atomic) is counted once
    pipe = r.pipeline(transaction=True)
    for name in waiting_lists(queue, direct_ids):
        pipe.llen(name)
    return sum(pipe.execute())


def active_tasks(r: redis.Redis, scan_count: int = 5000) -> dict[str, int]:
    """Queuing and Running tasks, from the owners' active sets (``atelier:active:*``) and each task's status.
    Costs a SCAN of the whole keyspace and one HGET per active task."""
    counts = {s.value: 0 for s in ACTIVE_STATUSES}
    keys = list(r.scan_iter(match=f"{P}active:*", count=scan_count))
    if not keys:
        return counts
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.smembers(key)
    uids = sorted({uid for members in pipe.execute() for uid in members})
    pipe = r.pipeline(transaction=False)
    for uid in uids:
        pipe.hget(task_key(uid), "status")
    for status in pipe.execute():
        if status in counts:  # a record that expired, or one that ended between the two reads, is not counted
            counts[status] += 1
    return counts


_LIVE = """
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) + tonumber(t[2]) / 1000000), '+inf')
"""


def live_workers(r: redis.Redis, queue: str) -> int:
    """Workers alive (announced within their time to live, by Redis's clock) that consume ``queue``."""
    return int(r.eval(_LIVE, 1, live_workers_key(queue)))


class BrokerCollector(Collector):
    """The metrics read from Redis when ``/metrics`` is scraped, for the gateway's settings of the moment. When
    Redis does not answer, only ``atelier_broker_up 0``."""

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())  # names only: registering it reads nothing from Redis

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        queue = get_settings().queue
        try:
            r = get_redis()
            (depth, workers), tasks = queue_state(r, queue), active_tasks(r)
        except (redis.RedisError, RuntimeError) as e:  # RuntimeError: no ATELIER_REDIS_URL
            log.warning("metrics: Redis unavailable: %s", e)
            families["up"].add_metric([], 0)
            return [families["up"]]
        families["up"].add_metric([], 1)
        families["queue"].add_metric([queue], depth)
        for status, n in tasks.items():
            families["tasks"].add_metric([status], n)
        families["workers"].add_metric([queue], workers)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "up": GaugeMetricFamily("atelier_broker_up", "Whether Redis (broker and task store) answered the"
                                    " scrape"),
            "queue": GaugeMetricFamily("atelier_queue_depth", "Job messages waiting for a worker, in the queue"
                                       " and its workers' direct queues", labels=["queue"]),
            "tasks": GaugeMetricFamily("atelier_tasks", "Tasks not ended, by status (Queuing, Running), of every"
                                       " owner", labels=["status"]),
            "workers": GaugeMetricFamily("atelier_workers_alive", "Workers consuming the queue that announced"
                                         " themselves alive in the last seconds", labels=["queue"]),
        }


REGISTRY.register(BrokerCollector())
