"""The life of a task on a worker, whatever its action: the room every job kind (``workers/jobs/``) shares.

- :mod:`~workers.lifecycle.errors`: how a job ends early (:class:`JobError` with a code, canceled, lost);
- :mod:`~workers.lifecycle.watch`: the task's lease in Redis, renewed while the job runs, and what the job's
  step callback turns into exceptions (cancellation, a lost lease, the time budget);
- :mod:`~workers.lifecycle.progress`: Step/TotalSteps written to the task record;
- :mod:`~workers.lifecycle.task`: :func:`run_task` (take the task, watch it, hold its models, end it), the
  job message's version check, each job's timings;
- :mod:`~workers.lifecycle.stored`: a job's stored inputs read and its results encoded;
- :mod:`~workers.lifecycle.storage_retry`: a running job's storage calls tried again within its time budget while
  the storage fails, then Error 508 (the worker's runtime builds its storage on it).

Nothing here knows what a job computes; a job kind gives :func:`~workers.lifecycle.task.run_task` its ``work``.
"""
