"""The life of one task on this worker, whatever its action (:func:`run_task`): Queuing -> Running -> Finished, or
Canceled, or Error with a code and a one-line message (never a traceback; that goes to the worker's log). Safe to
run twice (acks_late re-delivery): a task that already ended is skipped, and results are written under the
TaskUID.

Each job logs one line with its timings (:class:`Timings`: queue wait, model loads, inference, store); the same
timings, its outcome and its images are counted in the worker's metrics (:func:`workers.metrics.record_job`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
import torch

from app.contract.codes import ErrorCode, worker_lost_message
from app.contract.jobs import JOB_VERSION
from app.contract.registry import UnknownModel
from workers.lifecycle.errors import JobCanceled, JobError, JobLost
from workers.lifecycle.watch import JobWatch
from workers.metrics import record_job
from workers.models.cache import Lease, is_oom

if TYPE_CHECKING:  # annotations only: the runtime builds its storage on this room's RetryingStore
    from workers.runtime import WorkerRuntime

log = logging.getLogger("atelier.worker")

#: How long a worker keeps trying a task-store write that Redis refuses (a Redis restarting, a Sentinel failover:
#: docs/deployment.md "Redis high availability") before it gives the task up to the lease recovery.
REDIS_RETRY_S = 60.0


def _through_redis_outage(what: str, uid: str, fn: Callable[[], object], within_s: float = REDIS_RETRY_S):
    """``fn()``, tried again every half second while Redis cannot be reached, for up to ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return fn()
        except redis.ConnectionError as e:  # includes TimeoutError; not a refused command (ResponseError)
            if time.monotonic() > deadline:
                raise
            log.warning("task %s: could not %s (Redis unreachable: %s); trying again", uid, what, e)
            time.sleep(0.5)


@dataclass
class Timings:
    """Seconds spent by one job in each phase (``load`` counts the model loads of the plan and the run)."""

    queue_wait: float = 0.0
    load: float = 0.0
    inference: float = 0.0
    store: float = 0.0
    #: ``pipeline_s``: the part of ``inference`` spent inside the pipeline's calls (``run_inpaint``'s ``stats``)
    pipeline: dict[str, float] = field(default_factory=dict)
    #: the last (Step, TotalSteps) of the run, written with the Finished mark
    steps: tuple[int, int] | None = None

    def line(self) -> str:
        return (f"queue wait {self.queue_wait:.2f}s, load {self.load:.2f}s, inference {self.inference:.2f}s,"
                f" store {self.store:.2f}s")


def version_ok(rt: WorkerRuntime, message: dict) -> bool:
    """Whether this worker reads the job message's version; a task of another version ends in Error."""
    if message.get("v") == JOB_VERSION:
        return True
    uid = str(message.get("task_uid", ""))
    log.error("task %s: job message version %r not supported (want %d)", uid, message.get("v"), JOB_VERSION)
    if uid and rt.store.get(uid):
        rt.store.mark_error(uid, ErrorCode.UNSUPPORTED_JOB, f"job message version {message.get('v')} not supported")
        record_job("?", "error", error_code=ErrorCode.UNSUPPORTED_JOB)
    return False


#: ``work(held, timings, watch) -> (images stored, what the log line says of them)``; ``held`` is the job's hold on
#: the model cache (every model it gets through it stays loaded until ``work`` returns). ``work`` stores its results
#: and ends with :func:`finish`, or returns a :class:`Deferred` that does; run_task ends the task in every other case.
Work = Callable[[Lease, Timings, JobWatch], "tuple[int, str] | Deferred"]


def finish(rt: WorkerRuntime, uid: str, watch: JobWatch, names: list[str], *, seed: int | None = None,
           pipeline_s: float = 0.0, steps: tuple[int, int] | None = None, texts: list[str] | None = None) -> None:
    """End a job's task Finished with its stored results ``names`` (what ``work`` does last, once every result is
    written): unless it was canceled or ran out of time meanwhile (the watch raises), and only while this worker
    still holds its lease (else :class:`JobLost`: another worker runs it). ``seed``: what ListTasksDetails reports
    (None: the Seed the task was created with); ``pipeline_s``, ``steps`` and ``texts`` (text results, TxtList): see
    ``TaskStore.mark_finished``."""
    watch.check()
    if not _through_redis_outage("mark it finished", uid, lambda: rt.store.mark_finished(
            uid, names, seed, worker=rt.worker_id, pipeline_s=pipeline_s, steps=steps, texts=texts)):
        raise JobLost(uid)


def run_task(rt: WorkerRuntime, uid: str, *, label: str, total_steps: int, budget_s: float, work: Work,
             oom_message: str) -> None:
    """The life of one task on this worker, whatever its action: take its lease in Redis (skipped when it
    already ended or runs elsewhere; ended 502 when its runs keep killing workers), watch it (lease renewal,
    cancellation, time budget), hold its models in the model cache for the run, and end it: Finished by
    ``work``, else Canceled or Error with a code and a one-line message. Returns normally whatever happened, so
    that the worker takes the next job. ``label`` names the task in the log and the metrics (its model, or its
    action when it uses none)."""
    store = rt.store
    state, attempt = _through_redis_outage("start it", uid, lambda: store.start(
        uid, rt.worker_id, rt.settings.lease_s, total_steps, max_deaths=rt.settings.max_worker_deaths))
    if state == "poison":  # a leftover copy of its message found it after the last of its workers died
        store.mark_error(uid, ErrorCode.WORKER_LOST, worker_lost_message(attempt))
        log.error("task %s: its run killed %d workers; ended in Error", uid, attempt)
        return
    if state != "started":
        log.info("task %s: %s; not run here", uid,
                 {"ended": "already ended", "busy": "running on another worker", "missing": "expired"}[state])
        return
    created = store.created_at(uid)
    timings = Timings(queue_wait=max(0.0, time.time() - created) if created is not None else 0.0)
    if attempt > 1:
        store.add_note(uid, f"run again (attempt {attempt}): the worker running it before stopped")
    watch = JobWatch(store, uid, rt.worker_id, rt.settings.lease_s, budget_s)
    if rt.lookahead is not None:  # the next job is prepared while this one denoises
        rt.lookahead.started(uid)
        watch.at_first_step = rt.lookahead.trigger
    held = rt.cache.lease()  # the job's hold on the model cache (not the task's lease, which the watch renews)
    watch.start()
    handed_off = False
    try:
        with watch.here(), held:
            ended = _ended(rt, uid, oom_message, lambda: work(held, timings, watch))
        if isinstance(ended, Deferred) and rt.finisher is not None:  # stored in the background, in order
            deferred = ended
            rt.finisher.submit(lambda: _store_later(rt, uid, label, watch, held, timings, oom_message, deferred))
            handed_off = True  # the lease is renewed until the background store is done
            return
        if isinstance(ended, Deferred):
            ended = _ended(rt, uid, oom_message, ended.store)
    finally:
        if not handed_off:
            watch.stop()
    _record(rt, uid, label, held, timings, ended)


@dataclass
class Deferred:
    """What a job's ``work`` returns when its results remain to be stored: ``store()`` encodes and stores them and
    ends the task (:func:`finish`), returning what ``work`` would have. A worker with a
    :class:`~workers.lifecycle.overlap.Finisher` runs it in the background while it takes the next job; otherwise it
    runs at once."""

    store: Callable[[], tuple[int, str]]


#: how a job ended: (outcome, images stored, ErrorCode or None, what the log line says of its images)
Ended = tuple[str, int, "ErrorCode | None", str]


def _store_later(rt: WorkerRuntime, uid: str, label: str, watch: JobWatch, held: Lease, timings: Timings,
                 oom_message: str, deferred: Deferred) -> None:
    """The background part of a job (:class:`~workers.lifecycle.overlap.Finisher`'s thread): its results stored
    and the task ended, its lease renewed until then."""
    try:
        with watch.here():
            ended = _ended(rt, uid, oom_message, deferred.store)
    finally:
        watch.stop()
    _record(rt, uid, label, held, timings, ended)


def _ended(rt: WorkerRuntime, uid: str, oom_message: str,
           fn: Callable[[], tuple[int, str] | Deferred]) -> Ended | Deferred:
    """Run ``fn`` (a job's work, or the storing of its results) and end the task as it went: Finished by ``fn``
    itself, else Canceled or Error with a code and a one-line message, or left to the lease recovery."""
    store, me = rt.store, rt.worker_id
    code = None
    try:
        out = fn()
        if isinstance(out, Deferred):
            return out
        count, what = out
    except JobLost:
        log.warning("task %s: its lease was lost (taken for a dead worker's); dropped here", uid)
        return "lost", 0, None, ""
    except redis.ConnectionError as e:  # not the job's fault: left Running, its lease expires, it runs again
        log.warning("task %s: Redis unreachable (%s); left to the lease recovery", uid, e)
        return "lost", 0, None, ""
    except JobCanceled:
        log.info("task %s canceled by its owner", uid)
        return ("canceled" if store.mark_canceled(uid, worker=me) else "lost"), 0, None, ""
    except (JobError, UnknownModel) as e:  # UnknownModel: Registry.require, a ModelCode the config no longer has
        code, msg = (e.code, e.message) if isinstance(e, JobError) else (ErrorCode.MODEL, str(e))
        log.warning("task %s failed: %s", uid, msg)
        return ("error" if store.mark_error(uid, code, msg, worker=me) else "lost"), 0, code, ""
    except Exception as e:  # noqa: BLE001 - the task must end in Error, whatever happened
        if is_oom(e):
            torch.cuda.empty_cache()
            msg = oom_message
            log.warning("task %s failed: %s (%s)", uid, msg, e)
            code = ErrorCode.OUT_OF_MEMORY
        else:
            log.exception("task %s: internal error", uid)
            code, msg = ErrorCode.INTERNAL, f"Internal error ({type(e).__name__})"
        return ("error" if store.mark_error(uid, code, msg, worker=me) else "lost"), 0, code, ""
    return "finished", count, None, what


def _record(rt: WorkerRuntime, uid: str, label: str, held: Lease, timings: Timings, ended: Ended) -> None:
    """The job's log line and metrics (:func:`workers.metrics.record_job`)."""
    outcome, count, code, what = ended
    if outcome == "finished":
        models = ", ".join(f"{name} ({how})" for name, how in held.used.items()) or "none"
        log.info("task %s finished: %s; models %s; %s", uid, what, models, timings.line())
    done = outcome == "finished"
    record_job(label, outcome, queue_wait=timings.queue_wait, load=held.load_seconds,
               inference=timings.inference if done else None, store=timings.store if done else None,
               images=count if done else 0, error_code=code if outcome == "error" else None)
