"""The device never waits for the CPU (docs/deployment.md "Scheduling", workers/lifecycle/overlap.py), with a real
Celery worker: while a job denoises, the worker prepares the job it will take next (its photo decoded and composed,
its pipeline held), and stores a job's results while the next one denoises, the results in the order the jobs ran.

The gateway is the in-process one of the ``api`` fixture, whose queue no other worker reads; the jobs are queued
before the test's worker starts, as a backlog a worker finds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.services import get_services
from support.api import ROOT, example_inputs, generate_body, png_b64, signed

JOBS = 4
SIZE = 128
METRICS_PORT = 19342  # this room's private range


def _until(what: str, cond, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics() -> dict:
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_the_worker_prepares_the_next_job_and_stores_in_order(api, tmp_path):
    tasks = get_services().tasks
    man, mask = example_inputs(SIZE, SIZE)
    uids = []
    for i in range(JOBS):  # a catalogue batch: another photo each (another content hash), one mask
        photo = man.copy()
        photo.putpixel((0, 0), (i, 0, 0))
        body = generate_body(Width=SIZE, Height=SIZE, BatchSize=2, Seed=100 + i,
                             ImageAndMaskList=[png_b64(photo), png_b64(mask)])
        uids.append(api(signed(body))["TaskUID"])
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "-Q", api.queue,
         "--loglevel", "INFO", "-n", f"overlap-{uuid.uuid4().hex[:6]}@%h"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "ATELIER_WORKER_METRICS_PORT": str(METRICS_PORT),
             "ATELIER_WORKER_INDEX": "0", "ATELIER_PROGRESS_INTERVAL_S": "0"},
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _until("every job to end", lambda: all(tasks.get(u).status in ("Finished", "Error") for u in uids), 180)
        recs = [tasks.get(u) for u in uids]
        for rec in recs:
            assert rec.status == "Finished" and len(rec.images) == 2, (rec, log.read_text()[-3000:])
            assert rec.step == rec.total_steps > 0  # the progress of the last step, written with the Finished mark
        # one worker: run in the order queued, and each Finished before the next one's Finished (results in order)
        assert [r.uid for r in sorted(recs, key=lambda r: r.started_at)] == uids
        assert [r.uid for r in sorted(recs, key=lambda r: r.finished_at)] == uids
        samples = _metrics()
        # every photo is new: composed once each, the 2nd.. by the look-ahead while the one before denoised, so
        # that each of those jobs found its composition ready
        assert samples[("atelier_composition_cache_misses_total", ())] == JOBS
        assert samples[("atelier_composition_cache_hits_total", ())] == JOBS - 1
        assert samples[("atelier_model_cache_misses_total", (("kind", "pipeline"),))] == 1
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
