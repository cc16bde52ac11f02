"""Storage and the task store's retention. The local-folder backend passes the storage contract
(tests/support/storage_contract.py) and keeps the data dir's layout (``inputs/{sha[:2]}/{sha}``,
``results/{TaskUID}/{name}``), so a deployment's stored inputs and results stay readable and are swept;
task records expire in Redis."""
from __future__ import annotations

import hashlib
import os
import time
import uuid

import pytest
import redis

from app.contract.settings import Settings
from app.contract.storage import Storage, open_storage
from app.contract.storage_local import LocalStore
from app.contract.taskstore import TaskStore, task_key
from support.storage_contract import UID, StorageContract


class TestLocalStorage(StorageContract):
    tick_s = 0.05

    @pytest.fixture
    def storage_factory(self, tmp_path):
        return lambda: LocalStore(tmp_path / "data")


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_the_data_dir_keeps_its_layout_and_what_was_stored_before_is_read_and_swept(tmp_path):
    data = b"\x89PNG stored by an earlier version"
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "inputs" / sha[:2]).mkdir(parents=True)
    (tmp_path / "inputs" / sha[:2] / sha).write_bytes(data)
    (tmp_path / "results" / UID).mkdir(parents=True)
    (tmp_path / "results" / UID / "0.png").write_bytes(b"png")
    st = open_storage(Settings(data_dir=tmp_path))
    assert st.has_input(sha) and st.read_result(UID, "0.png") == b"png"
    with st.open_input(sha) as f:
        assert f.read() == data
    st.write_result("b" * 21, "clothes-mask.png", b"mask")
    assert (tmp_path / "results" / ("b" * 21) / "clothes-mask.png").read_bytes() == b"mask"
    _age(tmp_path / "inputs" / sha[:2] / sha, 100)
    _age(tmp_path / "results" / UID / "0.png", 100)
    assert st.sweep(retention_s=50) == 2
    assert not (tmp_path / "inputs" / sha[:2] / sha).exists() and not (tmp_path / "results" / UID).exists()
    assert (tmp_path / "results" / ("b" * 21) / "clothes-mask.png").exists()


def test_what_a_crashed_write_left_behind_goes_with_the_sweep(tmp_path):
    st = Storage(LocalStore(tmp_path))
    data = b"input"
    sha = hashlib.sha256(data).hexdigest()
    st.put_input(sha, data)
    st.write_result(UID, 0, b"png")
    stale = [tmp_path / "inputs" / sha[:2] / ".tmp-crashed", tmp_path / "results" / UID / ".tmp-crashed"]
    for path in stale:
        path.write_bytes(b"half")
        _age(path, 100)
    assert st.sweep(retention_s=50) == 0  # the objects are young; a temporary file is never one
    assert not stale[0].exists() and st.has_input(sha)
    _age(tmp_path / "results" / UID / "0.png", 100)
    assert st.sweep(retention_s=50) == 1 and not (tmp_path / "results" / UID).exists()


def test_an_empty_task_folder_goes_with_the_sweep(tmp_path):
    (tmp_path / "results" / UID).mkdir(parents=True)
    _age(tmp_path / "results" / UID, 100)
    assert Storage(LocalStore(tmp_path)).sweep(retention_s=50) == 1 and not (tmp_path / "results" / UID).exists()


def test_a_local_store_gives_no_link_and_nothing_outside_its_folder(tmp_path):
    st = Storage(LocalStore(tmp_path / "data"))
    assert st.result_link(UID, "0.png", int(time.time()) + 60) is None  # the gateway serves /results/...
    with pytest.raises(ValueError):
        st.write_result("../../" + "a" * 15, 0, b"x")
    assert not (tmp_path / "data").exists() and list(tmp_path.iterdir()) == []


# owners unique to this run: tasks left in the shared Redis by earlier runs never count
OWNER_TTL, OWNER_LEASE, OWNER_CANCEL = (f"pk-{name}-{uuid.uuid4().hex[:8]}" for name in ("ttl", "lease", "cancel"))


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
