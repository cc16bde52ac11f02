"""How a job ends before it finishes: each exception is turned into the task's end by
:func:`workers.lifecycle.task.run_task`."""
from __future__ import annotations


class JobError(Exception):
    """A job that cannot finish: the task ends in Error with ``code`` and ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class JobCanceled(Exception):
    """The task's owner canceled it (CancelTask): it ends Canceled."""


class JobLost(Exception):
    """The task's lease was lost: the task was taken for a dead worker's and runs elsewhere; this run leaves no
    trace."""
