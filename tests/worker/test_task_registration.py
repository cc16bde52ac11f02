"""The worker registers one Celery task per name of the contract's action table (``JOB_TASK_NAMES``,
app/contract/jobs.py), and no other: a job the gateway sends (or the recovery sends again) always finds its entry
point. The table itself: tests/contract/test_actions.py."""
from __future__ import annotations

import importlib

from app.contract.jobs import JOB_TASK_NAMES
from app.contract.settings import get_settings


def test_every_job_task_of_the_table_is_registered_on_the_worker_and_no_other(redis_url, monkeypatch):
    # importing the tasks builds the worker's Celery app, which wants a broker URL (it does not connect)
    monkeypatch.setenv("ATELIER_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        importlib.import_module("workers.tasks")  # registers the worker's tasks on its app
        celery = importlib.import_module("workers.celery_app").celery
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    ours = {name for name in celery.tasks if not name.startswith("celery.")}  # Celery's built-in tasks aside
    assert set(JOB_TASK_NAMES) <= ours, f"not registered by workers/tasks.py: {set(JOB_TASK_NAMES) - ours}"
    assert ours == set(JOB_TASK_NAMES), f"registered but in no action of the table: {ours - set(JOB_TASK_NAMES)}"
