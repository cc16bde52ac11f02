"""The Celery application configuration, shared by the gateway (which only sends) and the workers.

Jobs are acknowledged late (after the task ran) and re-delivered if a worker dies mid-job; the task
writes its results under the TaskUID, so running it twice is safe. One job at a time per worker
process (prefetch 1): a GPU worker holds one pipeline and should not hoard queued jobs.
"""
from __future__ import annotations

from celery import Celery

from app.contract.redis_conn import redis_target
from app.contract.settings import get_settings


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
        broker_transport_options={"visibility_timeout": 6 * 3600, **transport_options},
        broker_use_ssl=use_ssl,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
