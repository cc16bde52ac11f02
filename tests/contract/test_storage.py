"""Storage and the task store's retention: inputs stored once by content hash, results swept after
the retention period, task records expiring in Redis."""
from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest
import redis

from app.contract.storage import Storage
from app.contract.taskstore import TaskStore, task_key


def test_inputs_stored_once_and_swept_after_retention(tmp_path):
    st = Storage(tmp_path)
    data = b"\x89PNG fake"
    sha = hashlib.sha256(data).hexdigest()
    assert st.put_input(sha, data) == st.put_input(sha, data) == sha
    assert len(list(st.inputs.glob("*/*"))) == 1
    st.write_result("a" * 21, 0, b"png")
    old = time.time() - 100
    os.utime(st.input_path(sha), (old, old))
    os.utime(st.results / ("a" * 21), (old, old))
    st.write_result("b" * 21, 0, b"png")
    assert st.sweep(retention_s=50) == 2
    assert not st.input_path(sha).exists()
    assert not (st.results / ("a" * 21)).exists() and (st.results / ("b" * 21) / "0.png").exists()


# owners unique to this run: tasks left in the shared Redis by earlier runs never count
OWNER_TTL, OWNER_LEASE, OWNER_CANCEL = (f"pk-{name}-{uuid.uuid4().hex[:8]}" for name in ("ttl", "lease", "cancel"))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 20, "A" * 21])
def test_result_names_are_checked(tmp_path, bad):
    with pytest.raises(ValueError):
        Storage(tmp_path).result_path(bad, "0.png")


def test_task_record_expires_after_retention_once_finished(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TaskStore(r, retention_s=60)
    uid, created = store.create(OWNER_TTL, None, "GenerateFromMannequin", 7, 0)
    assert created and 60 < r.ttl(task_key(uid)) <= 7 * 60
    assert store.start(uid, "host:1", lease_s=30, total_steps=4) == ("started", 1)
    assert store.active(OWNER_TTL) == [uid]
    assert store.start(uid, "host:2", lease_s=30, total_steps=4) == ("busy", 0)  # held by a live worker
    assert not store.mark_finished(uid, ["0.png"], 7, worker="host:2")  # only the lease holder ends it
    assert store.mark_finished(uid, ["0.png"], 7, worker="host:1")
    assert 0 < r.ttl(task_key(uid)) <= 60
    assert store.active(OWNER_TTL) == []
    rec = store.get(uid)
    assert rec.status == "Finished" and rec.images == ["0.png"] and rec.progress == 100


def test_an_expired_lease_is_reaped_requeued_and_after_the_last_death_given_up(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TaskStore(r, retention_s=60)
    uid, _ = store.create(OWNER_LEASE, None, "GenerateFromMannequin", 7, 0, job={"v": 1})
    assert store.start(uid, "host:1", lease_s=-1, total_steps=4) == ("started", 1)  # a lease already expired
    assert uid in store.expired_leases()
    assert store.reap(uid, max_deaths=2, requeue_grace_s=-1) == ("requeue", 1)
    rec = store.get(uid)
    assert rec.status == "Queuing" and rec.deaths == 1 and rec.job == {"v": 1}
    assert store.reap(uid, max_deaths=2, requeue_grace_s=30) == ("resend", 1)  # not started in time: not a death
    assert store.start(uid, "host:2", lease_s=-1, total_steps=4) == ("started", 2)
    assert store.renew(uid, "host:1", 30) == "lost"  # the first run is no longer the task's
    assert store.reap(uid, max_deaths=2, requeue_grace_s=30) == ("poison", 2)
    assert store.get(uid).status == "Running" and uid not in store.expired_leases(now=float("inf"))


def test_taking_over_an_expired_lease_counts_the_death_the_recovery_would_have(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TaskStore(r, retention_s=60)
    uid, _ = store.create(OWNER_LEASE, None, "GenerateFromMannequin", 7, 0)
    store.start(uid, "host:1", lease_s=-1, total_steps=4, max_deaths=3)
    assert store.start(uid, "host:2", lease_s=-1, total_steps=4, max_deaths=3) == ("started", 2)  # host:1 died
    assert store.get(uid).deaths == 1
    assert store.start(uid, "host:3", lease_s=-1, total_steps=4, max_deaths=3) == ("started", 3)
    assert store.start(uid, "host:4", lease_s=30, total_steps=4, max_deaths=3) == ("poison", 3)


def test_cancel_ends_a_queuing_task_and_flags_a_running_one(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TaskStore(r, retention_s=60)
    queued, _ = store.create(OWNER_CANCEL, None, "GenerateFromMannequin", 7, 0)
    assert store.cancel(queued) == "Queuing" and store.get(queued).status == "Canceled"
    assert store.start(queued, "host:1", lease_s=30, total_steps=4) == ("ended", 0)  # never runs
    running, _ = store.create(OWNER_CANCEL, None, "GenerateFromMannequin", 7, 0)
    store.start(running, "host:1", lease_s=30, total_steps=4)
    assert store.cancel(running) == "Running" and store.renew(running, "host:1", 30) == "cancel"
    assert store.mark_canceled(running, worker="host:1") and store.get(running).status == "Canceled"
    assert store.cancel(running) == "Canceled"  # ended: left as it is
    assert store.active(OWNER_CANCEL) == []
