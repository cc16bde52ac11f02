"""Step/TotalSteps of a running job, written to its task record (``ListTasksDetails`` shows them)."""
from __future__ import annotations

import logging
import time

import redis

from app.contract.taskstore import TaskStore
from workers.lifecycle.watch import JobWatch

log = logging.getLogger("atelier.worker")


class ProgressWriter:
    """Writes Step/TotalSteps to the task record at most every ``interval`` seconds, the first time ``interval``
    after it was made (a job shorter than that writes no progress: its Finished comes first, and a Redis round
    trip per step is a good share of a GPU step), and lets the :class:`JobWatch` stop the job at this step."""

    def __init__(self, store: TaskStore, uid: str, interval: float, watch: JobWatch | None = None):
        self.store, self.uid, self.interval, self.watch = store, uid, interval, watch
        self._last = time.monotonic()
        #: the latest (step, total) reported: the Finished mark writes it (the task's last step is not written)
        self.seen: tuple[int, int] | None = None

    def __call__(self, step: int, total: int) -> None:
        self.seen = (step, total)
        if self.watch is not None:
            self.watch.check()
            self.watch.stepping()
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            try:
                self.store.set_progress(self.uid, step, total)
            except redis.RedisError as e:  # Redis restarting: progress is not worth the job
                log.warning("task %s: could not write its progress: %s", self.uid, e)
