"""The task's lease in Redis while its job runs on this worker (``TaskStore.start`` took it): renewed by one
thread per process, and what the renewal learns (the owner canceled the task, another worker took it) turned
into exceptions at the job's next denoising step, with the job's time budget.

"Lease" in this room is always the task's lease in Redis; the models a job holds in the model cache are its
:class:`~workers.models.cache.Lease` there, named ``held`` here.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

import redis

from app.contract.codes import ErrorCode
from app.contract.taskstore import TaskStore
from workers.lifecycle.errors import JobCanceled, JobError, JobLost

log = logging.getLogger("atelier.worker")

#: the job running in this context (set while its :class:`JobWatch` is entered): what storage calls made deep in a
#: job's code retry against (:mod:`workers.lifecycle.storage_retry`), without the watch passed down to them.
_CURRENT: ContextVar[JobWatch | None] = ContextVar("atelier_job_watch", default=None)


def current_watch() -> JobWatch | None:
    """The :class:`JobWatch` of the job running here, or None outside a job."""
    return _CURRENT.get()


class JobWatch:
    """Beside a running job: its lease renewed twice a second (by the process's :class:`LeaseRenewal` thread),
    and a cancellation or a lost lease noticed; the job's step callback (:meth:`check`) turns those, and a run
    past the time budget, into exceptions at the next denoising step.

    A step that hangs (a stuck driver) cannot be interrupted from here: past twice the budget the watch stops
    renewing the lease, so the task is given to another worker (and counts a death) while this one is stuck.
    """

    RENEW_EVERY_S = 0.5

    def __init__(self, store: TaskStore, uid: str, worker: str, lease_s: float, budget_s: float):
        self.store, self.uid, self.worker, self.lease_s, self.budget_s = store, uid, worker, lease_s, budget_s
        self.started = time.monotonic()
        self.canceled = threading.Event()
        self.lost = threading.Event()
        self._token: Token | None = None
        #: run at the job's first denoising step (:meth:`stepping`); None: nothing
        self.at_first_step: Callable[[], None] | None = None

    def set_budget(self, budget_s: float) -> None:
        """The job's time budget once its work is known (a resize learns its upscaler's factor when it loads the
        model), counted from the job's start as the first one was."""
        self.budget_s = budget_s

    def __enter__(self) -> JobWatch:
        self.start()
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        self.stop()

    def start(self) -> None:
        """Renew the lease from now on (until :meth:`stop`): the job may move from thread to thread meanwhile (its
        results stored in the background, :mod:`workers.lifecycle.overlap`), each entering :meth:`here`."""
        RENEWAL.add(self)

    def stop(self) -> None:
        """No more renewals: when this returns, none is under way either."""
        RENEWAL.discard(self)

    @contextmanager
    def here(self) -> Iterator[JobWatch]:
        """This thread runs the job for the block: :func:`current_watch` gives this watch (the storage retries)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def stepping(self) -> None:
        """A denoising step begins (the progress callback): the first one runs :attr:`at_first_step` (the
        worker's look-ahead at the next job, :mod:`workers.lifecycle.overlap`), once."""
        hook, self.at_first_step = self.at_first_step, None
        if hook is not None:
            hook()

    def renew(self) -> bool:
        """Renew the lease once (the renewal thread calls this); False once it must no longer be renewed."""
        if time.monotonic() - self.started > 2 * self.budget_s:
            log.error("task %s: stuck past twice its time budget (%.0fs); no longer renewing its lease",
                      self.uid, self.budget_s)
            return False
        try:
            state = self.store.renew(self.uid, self.worker, self.lease_s)
        except redis.RedisError as e:  # Redis restarting: the lease holds for a while, try again
            log.warning("task %s: could not renew its lease: %s", self.uid, e)
            return True
        if state == "cancel":
            self.canceled.set()
        elif state == "lost":
            self.lost.set()
            return False
        return True

    def extend(self, seconds: float) -> None:
        """Grow the time budget by ``seconds``: work the job finds it has to do once it runs (the faces its detector
        found to redraw)."""
        self.budget_s += seconds

    def remaining(self) -> float:
        """Seconds left of the time budget (negative past it)."""
        return self.budget_s - (time.monotonic() - self.started)

    def check_interrupted(self) -> None:
        """Raise JobLost or JobCanceled if the renewal learnt either (whatever the time)."""
        if self.lost.is_set():
            raise JobLost(self.uid)
        if self.canceled.is_set():
            raise JobCanceled(self.uid)

    def check(self) -> None:
        """Raise at a denoising step: JobLost, JobCanceled, or JobError(TIMEOUT) past the time budget."""
        self.check_interrupted()
        if self.remaining() < 0:
            raise JobError(ErrorCode.TIMEOUT, f"ran longer than its time budget of {self.budget_s:.0f}s"
                                              " (ATELIER_JOB_TIME_BASE_S, ATELIER_JOB_TIME_PER_MEGAPIXEL_STEP_S)")


class LeaseRenewal:
    """The one thread of a process that renews the leases of its running jobs (their :class:`JobWatch`), each
    :attr:`JobWatch.RENEW_EVERY_S` after the last. One thread for the process's life rather than one per job:
    starting a thread, and waking it to join it, cost every job a fraction of a millisecond. Started on the
    first job of a process (a prefork child starts its own)."""

    def __init__(self) -> None:
        self._due: dict[JobWatch, float] = {}
        self._renewing: list[JobWatch] = []  # being renewed now, outside the lock
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, watch: JobWatch) -> None:
        with self._changed:
            self._due[watch] = time.monotonic() + watch.RENEW_EVERY_S
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="atelier-lease-renewal", daemon=True)
                self._thread.start()
            self._changed.notify()

    def discard(self, watch: JobWatch) -> None:
        """No more renewals of ``watch``: when this returns, none is under way either."""
        with self._changed:
            self._due.pop(watch, None)
            self._changed.wait_for(lambda: watch not in self._renewing)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                ready = [watch for watch, due in self._due.items() if due <= now]
                if not ready:
                    self._changed.wait(min(self._due.values()) - now if self._due else None)
                    continue
                for watch in ready:
                    self._due[watch] = now + watch.RENEW_EVERY_S
                self._renewing = ready
            done = [watch for watch in ready if not self._renew(watch)]  # Redis round trips, outside the lock
            with self._changed:
                for watch in done:
                    self._due.pop(watch, None)
                self._renewing = []
                self._changed.notify_all()

    @staticmethod
    def _renew(watch: JobWatch) -> bool:
        try:
            return watch.renew()
        except Exception:  # noqa: BLE001 - the thread renews every job's lease: it must outlive any one failure
            log.exception("task %s: lease renewal failed", watch.uid)
            return True


RENEWAL = LeaseRenewal()
