"""The Celery entry points of the worker: thin on purpose. The job itself is :mod:`workers.job`.

The :class:`~workers.runtime.WorkerRuntime` (task store, storage, registry, model cache) is held by the
task's base class, as Celery's task guide suggests for per-process resources, and built when the worker
process starts (``worker_init`` for the solo pool a GPU worker runs, ``worker_process_init`` for a
prefork child), not on the first job.
"""
from __future__ import annotations

from celery import Task
from celery.concurrency import get_implementation
from celery.signals import worker_init, worker_process_init

from app.contract.jobs import GENERATE_TASK_NAME
from app.contract.settings import get_settings
from workers.celery_app import celery
from workers.job import run_job
from workers.runtime import WorkerRuntime


class RuntimeTask(Task):
    """A task whose process owns one :class:`WorkerRuntime`."""

    _runtime: WorkerRuntime | None = None

    @property
    def runtime(self) -> WorkerRuntime:
        if RuntimeTask._runtime is None:
            RuntimeTask._runtime = WorkerRuntime.build(get_settings())
        return RuntimeTask._runtime


@celery.task(name=GENERATE_TASK_NAME, base=RuntimeTask, bind=True, acks_late=True)
def generate(self: RuntimeTask, message: dict) -> None:
    run_job(self.runtime, message)


@worker_init.connect
def _build_in_solo_worker(sender=None, **_) -> None:
    if getattr(sender, "pool_cls", None) is get_implementation("solo"):
        generate.runtime  # noqa: B018 - builds it


@worker_process_init.connect
def _build_in_pool_child(**_) -> None:
    generate.runtime  # noqa: B018 - builds it
