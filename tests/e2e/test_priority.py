"""Priority with a real Celery worker (docs/API.md "Priority"): among queued jobs the higher Priority runs first, so
that one photographer's job passes a catalogue batch queued before it, starting as soon as the worker frees.

The gateway is the in-process one of the ``api`` fixture, whose queue no other worker reads; the test starts its own
worker on that queue once the batch is queued, as a deployment whose workers are all busy would have it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from app.contract.limits import PRIORITY_FIELD
from app.services import get_services
from support.api import ROOT, TASK_BODIES, signed
from support.waiting import stop, wait_until

BATCH = 200


@pytest.fixture()
def roomy(monkeypatch):
    """A key may have the whole batch queued (the default active limit is 32)."""
    monkeypatch.setenv("ATELIER_MAX_ACTIVE_TASKS_PER_KEY", str(BATCH + 10))


def _resize(priority: int) -> dict:
    # big enough that a job takes a moment (so the batch is still running when the high one comes), small enough
    # that the test stays short
    return signed({**TASK_BODIES["ResizeImage"](), "Width": 1024, "Height": 1024, PRIORITY_FIELD: priority})


@pytest.mark.slow
def test_a_high_priority_job_passes_a_queued_batch_as_soon_as_the_worker_frees(roomy, api, atelier_env, tmp_path):
    tasks = get_services().tasks
    batch = [api(_resize(0))["TaskUID"] for _ in range(BATCH)]
    default = api(_resize(5))["TaskUID"]  # queued after the whole batch, at the default Priority
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "-Q", api.queue,
         "--loglevel", "INFO", "-n", f"prio-{uuid.uuid4().hex[:6]}@%h"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        # 1. a worker that starts on a queued batch takes the higher Priority first
        wait_until("the default-priority job to finish", lambda: tasks.get(default).status == "Finished", 180)
        first_low = min((tasks.get(u).started_at or float("inf")) for u in batch)
        assert tasks.get(default).started_at < first_low

        # 2. while the batch runs, a Priority 9 job starts as soon as the job running when it came ends
        wait_until("the batch to be running", lambda: sum(tasks.get(u).status != "Queuing" for u in batch) >= 2, 120)
        sent_at = time.time()
        high = api(_resize(9))["TaskUID"]
        wait_until("the high-priority job to finish", lambda: tasks.get(high).status == "Finished", 60)
        started = tasks.get(high).started_at
        passed_by = [u for u in batch if sent_at < (tasks.get(u).started_at or float("inf")) < started]
        assert len(passed_by) <= 1, f"{len(passed_by)} batch jobs started between its submission and its start"
        waiting = sum(tasks.get(u).status == "Queuing" for u in batch)
        assert waiting > BATCH / 2, "the batch should still be mostly queued: the test shows nothing otherwise"
    finally:
        stop(worker)
