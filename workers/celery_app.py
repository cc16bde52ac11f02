"""The worker's Celery application: ``celery -A workers.celery_app worker --pool solo``.

One process per GPU (``--pool solo``, concurrency 1): the process keeps its models warm in memory
between jobs (``workers/models``). The tasks are in ``workers/tasks.py``.
"""
from __future__ import annotations

from app.contract.queue import make_celery
from workers.logs import configure_worker_logging

configure_worker_logging()

celery = make_celery("atelier-worker")
celery.conf.include = ["workers.tasks"]
app = celery
