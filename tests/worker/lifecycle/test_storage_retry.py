"""A running job's storage failing (workers/lifecycle/storage_retry.py), with real parts: a WorkerRuntime built as
a worker builds it (its storage on the S3 backend, moto's server on 127.0.0.1, or on a data dir) running real
ResizeImage jobs against the real Redis task store, while the server is stopped and started again.

- the bucket down for the whole time budget: Error 508 naming the storage, after several tries (not 230);
- the bucket back within the budget: the same job finishes, its result stored whole;
- an input that is not there: Error 230 ``missing`` at once, never retried (an answer, not a failure);
- a data dir whose results cannot be written: Error 508 too;
- the owner canceling while the job waits for the storage: Canceled, without waiting for the budget;
- outside a job: the OSError once, as it is;
- the wrapper is an ObjectStore like any backend: the storage contract, on a data dir.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from app.contract.codes import ErrorCode
from app.contract.jobs import ResizeJobMessage
from app.contract.settings import Settings
from app.contract.storage import INPUTS
from app.contract.storage_local import LocalStore
from support.api import stored
from support.s3 import MotoServer, new_bucket, s3_environ
from support.storage_contract import StorageContract
from workers.jobs.resize import run_resize_job
from workers.lifecycle.storage_retry import RetryingStore
from workers.runtime import WorkerRuntime

#: the time budget of the jobs that wait for the storage to come back (never spent: they finish or are canceled)
LONG_BUDGET_S = 60.0
#: the time budget of a job whose storage stays down (the test waits this long)
SHORT_BUDGET_S = 2.0


@pytest.fixture(scope="module")
def moto(atelier_env):
    server = MotoServer().start()
    try:
        with s3_environ(server.endpoint):
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def runtime(moto) -> WorkerRuntime:
    settings = Settings(storage_url=f"s3://{new_bucket(moto.endpoint)}/jobs", job_time_base_s=LONG_BUDGET_S)
    return WorkerRuntime.build(settings)


@pytest.fixture
def outage(moto):
    """The bucket's server stopped by the test; started again whatever happens."""
    yield moto
    moto.start()


@pytest.fixture
def worker_log(caplog):
    caplog.set_level(logging.INFO, logger="atelier.worker")
    return lambda text: [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8), "RGB")


def _resize(rt: WorkerRuntime, key: str):
    uid, _ = rt.store.create("pk-storage-retry", None, "ResizeImage", 0, 0)
    run_resize_job(rt, ResizeJobMessage(task_uid=uid, image=key, width=40, height=30).to_wire())
    return rt.store.get(uid)


def test_a_bucket_down_for_the_whole_budget_ends_the_job_in_error_508(runtime, outage, worker_log):
    key = stored(runtime, _photo())
    outage.stop()
    short = replace(runtime, settings=runtime.settings.model_copy(update={"job_time_base_s": SHORT_BUDGET_S}))
    rec = _resize(short, key)
    assert rec.status == "Error" and rec.error_code == ErrorCode.STORAGE == 508, (rec.status, rec.error_message)
    assert rec.error_message.startswith("storage unavailable: reading inputs failed"), rec.error_message
    assert "unreadable" not in rec.error_message  # not the client's input at fault
    assert len(worker_log("trying again in")) >= 2  # tried several times within the budget
    assert rec.images == []


def test_a_bucket_back_within_the_budget_the_job_finishes(runtime, outage, worker_log):
    source = _photo()
    key = stored(runtime, source)
    outage.stop()
    back = threading.Timer(1.0, outage.start)  # the bucket returns while the job is waiting for it
    back.start()
    try:
        rec = _resize(runtime, key)
    finally:
        back.join()
    assert rec.status == "Finished", rec.error_message
    assert worker_log("trying again in") and worker_log("the storage answered again after")
    got = Image.open(io.BytesIO(runtime.storage.read_result(rec.uid, rec.images[0])))
    assert np.array_equal(np.asarray(got), np.asarray(source.resize((40, 30), Image.Resampling.LANCZOS)))


def test_a_missing_input_is_error_230_at_once_never_retried(runtime, worker_log):
    rec = _resize(runtime, "0" * 64)  # a content hash nobody stored
    assert rec.status == "Error" and rec.error_code == ErrorCode.BAD_INPUT, rec.error_message
    assert rec.error_message == f"stored input image {'0' * 12} is unreadable (missing)"
    assert not worker_log("trying again")


def test_a_data_dir_whose_results_cannot_be_written_ends_in_error_508(atelier_env, tmp_path, worker_log):
    settings = Settings(storage_url="", data_dir=tmp_path / "data", job_time_base_s=SHORT_BUDGET_S)
    rt = WorkerRuntime.build(settings)
    key = stored(rt, _photo())
    (tmp_path / "data" / "results").write_bytes(b"")  # a file where the results' folder goes: ENOTDIR
    rec = _resize(rt, key)
    assert rec.status == "Error" and rec.error_code == ErrorCode.STORAGE, (rec.status, rec.error_message)
    assert rec.error_message.startswith("storage unavailable: writing results failed"), rec.error_message
    assert len(worker_log("trying again in")) >= 2


def test_canceling_a_job_that_waits_for_the_storage_ends_it_canceled(runtime, outage):
    key = stored(runtime, _photo())
    outage.stop()
    uid, _ = runtime.store.create("pk-storage-retry", None, "ResizeImage", 0, 0)
    job = threading.Thread(target=run_resize_job, args=(runtime, ResizeJobMessage(
        task_uid=uid, image=key, width=40, height=30).to_wire()))
    job.start()
    while runtime.store.get(uid).status != "Running":
        time.sleep(0.02)
    assert runtime.store.cancel(uid) == "Running"
    job.join(LONG_BUDGET_S / 2)  # well before its budget: the retrying noticed the cancellation
    assert not job.is_alive()
    assert runtime.store.get(uid).status == "Canceled"


def test_outside_a_job_a_failure_is_passed_on_once(tmp_path, worker_log):
    (tmp_path / "inputs").write_bytes(b"")
    store = RetryingStore(LocalStore(tmp_path))
    with pytest.raises(NotADirectoryError):
        store.put(INPUTS.key("a" * 64), b"x")
    assert not worker_log("trying again")


class TestRetryingStoreContract(StorageContract):
    """What the wrapper adds changes nothing a caller sees while the storage answers."""
    tick_s = 0.05

    @pytest.fixture
    def storage_factory(self, tmp_path):
        return lambda: RetryingStore(LocalStore(tmp_path / "data"))
