"""The worker's Celery application: ``celery -A workers.celery_app worker --pool solo``.

One process per GPU (``--pool solo``, concurrency 1): the process keeps its pipelines warm in
memory between jobs (workers/model_cache.py)."""
from __future__ import annotations

import logging

from app.core.queue import make_celery

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

celery = make_celery("atelier-worker")
celery.conf.include = ["workers.tasks"]
app = celery
