"""The lease renewal of running jobs: one thread per worker process renews every running job's lease on time,
notices a cancellation or a lost lease, and stops renewing a job that ended or is stuck past its budget."""
from __future__ import annotations

import threading
import time

import pytest

from app.contract.redis_conn import connect
from app.contract.taskstore import TaskStore
from workers.lifecycle.watch import RENEWAL, JobWatch


class QuickWatch(JobWatch):
    RENEW_EVERY_S = 0.05


@pytest.fixture
def store(redis_url) -> TaskStore:
    return TaskStore(connect(redis_url), retention_s=60)


def running(store: TaskStore, worker: str = "host:1", lease_s: float = 0.5) -> str:
    uid, _ = store.create("pk-renewal", None, "GenerateFromMannequin", 1, 0)
    assert store.start(uid, worker, lease_s=lease_s, total_steps=4) == ("started", 1)
    return uid


def lease_until(store: TaskStore, uid: str) -> float:
    return float(store.r.hget(f"atelier:task:{uid}", "lease_until"))


def test_two_running_jobs_are_renewed_by_one_thread_until_they_end(store):
    a, b = running(store), running(store)
    threads_before = threading.active_count()
    with QuickWatch(store, a, "host:1", 0.5, budget_s=60), QuickWatch(store, b, "host:1", 0.5, budget_s=60):
        first = lease_until(store, a), lease_until(store, b)
        time.sleep(0.3)
        assert lease_until(store, a) > first[0] and lease_until(store, b) > first[1]
        assert threading.active_count() <= threads_before + 1  # one renewal thread, whatever the jobs
    ended = lease_until(store, a)
    time.sleep(0.2)
    assert lease_until(store, a) == ended  # an ended job's lease is left alone
    assert not RENEWAL._due


def test_a_cancellation_and_a_lost_lease_are_noticed(store):
    uid, taken = running(store), running(store)
    with QuickWatch(store, uid, "host:1", 0.5, budget_s=60) as watch, \
            QuickWatch(store, taken, "host:1", 0.5, budget_s=60) as lost:
        assert store.cancel(uid) == "Running"
        store.r.hset(f"atelier:task:{taken}", "worker", "host:2")  # taken over for a dead worker's
        deadline = time.monotonic() + 3
        while not (watch.canceled.is_set() and lost.lost.is_set()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watch.canceled.is_set() and lost.lost.is_set()
        time.sleep(0.15)
        assert lost not in RENEWAL._due and watch in RENEWAL._due  # a lost lease is no longer renewed


def test_a_job_stuck_past_twice_its_budget_is_no_longer_renewed(store, caplog):
    uid = running(store)
    with QuickWatch(store, uid, "host:1", 0.5, budget_s=0.1) as watch:
        time.sleep(0.5)
        assert watch not in RENEWAL._due
        stopped = lease_until(store, uid)
        time.sleep(0.15)
        assert lease_until(store, uid) == stopped
    assert "stuck past twice its time budget" in caplog.text
