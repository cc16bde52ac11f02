"""Storage and the task store's retention: inputs stored once by content hash, results swept after
the retention period, task records expiring in Redis."""
from __future__ import annotations

import hashlib
import os
import time

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


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 20, "A" * 21])
def test_result_names_are_checked(tmp_path, bad):
    with pytest.raises(ValueError):
        Storage(tmp_path).result_path(bad, "0.png")


def test_task_record_expires_after_retention_once_finished(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TaskStore(r, retention_s=60)
    uid, created = store.create("pk-ttl", None, "GenerateFromMannequin", 7, 0)
    assert created and 60 < r.ttl(task_key(uid)) <= 7 * 60
    store.mark_running(uid, 4)
    assert store.active("pk-ttl") == [uid]
    store.mark_finished(uid, ["0.png"], 7)
    assert 0 < r.ttl(task_key(uid)) <= 60
    assert store.active("pk-ttl") == []
    rec = store.get(uid)
    assert rec.status == "Finished" and rec.images == ["0.png"] and rec.progress == 100
