"""run_job's failure handling, in-process against the real Redis task store: whatever goes wrong
inside a job ends that task in Error with a code and a one-line message, and run_job returns
normally so that the worker takes the next job."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def job(atelier_env):
    from app.core.contract import JobMessage
    from workers.tasks import _store

    _store.cache_clear()
    uid, _ = _store().create("pk-errors", None, "GenerateFromMannequin", 5, 0)
    return JobMessage(task_uid=uid, main_model="demo-inpaint", seed=5, width=512, height=768, batch_size=4,
                      mannequin_image="0" * 64, clothes_mask="0" * 64).to_wire()


@pytest.mark.parametrize("exc, code, words", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 507,
     ["out of GPU memory", "lower BatchSize or Width/Height", "512x768 x4"]),
    (RuntimeError("something deep in torch\nwith a second line"), 500, ["Internal error (RuntimeError)"]),
])
def test_failures_end_the_task_with_a_clear_message(job, monkeypatch, exc, code, words):
    import workers.tasks as tasks

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(tasks, "_generate", boom)
    tasks.run_job(job)  # returns: the worker goes on
    rec = tasks._store().get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == code
    for w in words:
        assert w in rec.error_message
    assert "\n" not in rec.error_message and "Traceback" not in rec.error_message


def test_a_missing_input_is_a_bad_input_error(job):
    import workers.tasks as tasks

    tasks.run_job(job)  # the stored inputs named by the job do not exist
    rec = tasks._store().get(job["task_uid"])
    assert rec.status == "Error" and rec.error_code == 230 and "unreadable" in rec.error_message


def test_a_redelivered_finished_task_is_not_run_again(job, monkeypatch):
    import workers.tasks as tasks

    tasks._store().mark_finished(job["task_uid"], ["0.png"], 5)
    monkeypatch.setattr(tasks, "_generate", lambda *a: pytest.fail("ran a finished task again"))
    tasks.run_job(job)
    assert tasks._store().get(job["task_uid"]).status == "Finished"
