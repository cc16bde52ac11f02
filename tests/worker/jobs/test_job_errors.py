"""run_job's failure handling, in-process against the real Redis task store: whatever goes wrong
inside a job ends that task in Error with a code and a one-line message, and run_job returns
normally so that the worker takes the next job."""
from __future__ import annotations

import pytest
import torch

import workers.jobs.generate as job_module
from app.contract.jobs import JobMessage
from app.contract.settings import get_settings
from workers.jobs.generate import run_job
from workers.runtime import WorkerRuntime


@pytest.fixture()
def runtime(atelier_env) -> WorkerRuntime:
    return WorkerRuntime.build(get_settings())


@pytest.fixture()
def job(runtime):
    uid, _ = runtime.store.create("pk-errors", None, "GenerateFromMannequin", 5, 0)
    return JobMessage(task_uid=uid, main_model="demo-inpaint", seed=5, width=512, height=768, batch_size=4,
                      mannequin_image="0" * 64, clothes_mask="0" * 64).to_wire()


@pytest.mark.parametrize("exc, code, words", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 507,
     ["out of GPU memory", "lower BatchSize or Width/Height", "512x768 x4"]),
    (RuntimeError("something deep in torch\nwith a second line"), 500, ["Internal error (RuntimeError)"]),
])
def test_failures_end_the_task_with_a_clear_message(runtime, job, monkeypatch, exc, code, words):
    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(job_module, "_generate", boom)
    run_job(runtime, job)  # returns: the worker goes on
    rec = runtime.store.get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == code
    for w in words:
        assert w in rec.error_message
    assert "\n" not in rec.error_message and "Traceback" not in rec.error_message
    assert runtime.cache.held() == []  # the job's models were released


def test_a_missing_input_is_a_bad_input_error(runtime, job):
    run_job(runtime, job)  # the stored inputs named by the job do not exist
    rec = runtime.store.get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == 230 and "unreadable" in rec.error_message


def test_an_unknown_main_model_is_a_model_error_with_the_wire_message(runtime, job):
    run_job(runtime, {**job, "main_model": "gone"})  # removed from models_config after it was queued
    rec = runtime.store.get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == 240 and rec.error_message == "Model [gone] not exists"


def test_a_job_message_of_another_version_is_refused(runtime, job):
    run_job(runtime, {**job, "v": 99})
    rec = runtime.store.get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == 505 and "version 99" in rec.error_message


def test_a_redelivered_finished_task_is_not_run_again(runtime, job, monkeypatch):
    runtime.store.mark_finished(job["task_uid"], ["0.png"], 5)
    monkeypatch.setattr(job_module, "_generate", lambda *a: pytest.fail("ran a finished task again"))
    run_job(runtime, job)
    assert runtime.store.get(job["task_uid"]).status == "Finished"
