"""The Celery application configuration, shared by the gateway (which only sends) and the workers.

Jobs are acknowledged late (after the task ran) and re-delivered if a worker dies mid-job; the task
writes its results under the TaskUID, so running it twice is safe. One job at a time per worker
process (prefetch 1): a GPU worker holds one pipeline and should not hoard queued jobs.
"""
from __future__ import annotations

from celery import Celery
from kombu.transport.redis import Channel

from app.contract.limits import PRIORITY_RANGE
from app.contract.redis_conn import redis_target
from app.contract.settings import get_settings

#: kombu's Redis transport keeps one list per priority step and a worker pops them in this order: step 0 (the
#: queue's own list) first. One step per wire Priority, so that every Priority runs before the ones below it.
PRIORITY_STEPS: tuple[int, ...] = tuple(range(int(PRIORITY_RANGE.hi - PRIORITY_RANGE.lo) + 1))


def broker_priority(priority: int) -> int:
    """The kombu priority of a wire ``Priority`` (docs/API.md "Priority"): on Redis, kombu's 0 is served first, so
    the wire's highest (9) is kombu's 0 and the default (5) is 4."""
    return int(PRIORITY_RANGE.hi) - int(priority)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s waiting job messages, highest priority first (kombu's names)."""
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]


def live_workers_key(queue: str) -> str:
    """The Redis sorted set of the workers consuming ``queue``, each scored with the Redis time until which it
    counts as alive: written by the workers (``workers/metrics.py``), counted by ``/readyz`` (``app/metrics.py``)."""
    return f"atelier:workers:{queue}"


def make_celery(name: str = "atelier") -> Celery:
    s = get_settings()
    url, transport_options, use_ssl = redis_target().celery_broker()  # Sentinel and TLS: redis_conn.py
    app = Celery(name, broker=url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=s.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 6 * 3600, "priority_steps": list(PRIORITY_STEPS),
                                  "queue_order_strategy": "priority", **transport_options},
        broker_use_ssl=use_ssl,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
