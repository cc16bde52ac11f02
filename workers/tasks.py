"""The Celery entry points of the worker: thin on purpose. :data:`RUNNERS` says which job runs each Celery task
(one module per job kind in ``workers/jobs/``; the task names are the contract's); one Celery task is
registered per entry.

The :class:`~workers.runtime.WorkerRuntime` (task store, storage, registry, model cache) is held by the
task's base class, as Celery's task guide suggests for per-process resources, and built when the worker
process starts (``worker_init`` for the solo pool a GPU worker runs, ``worker_process_init`` for a
prefork child), not on the first job. With it, a solo worker serves its metrics
(``ATELIER_WORKER_METRICS_PORT`` + ``ATELIER_WORKER_INDEX``, :func:`workers.metrics.serve_metrics`).

Once the runtime is built, the models whose ``speed:`` options ask for it are warmed up
(:meth:`~workers.runtime.WorkerRuntime.warm_up`: one short generation per configured size, bounded, failures
logged), *before* the first job, so that it does not pay a compile: in the solo worker synchronously in
``worker_init``, so the worker consumes (and announces itself ready) only once warm; in a prefork child in a
thread (Celery kills a child that does not report up within seconds), the child's tasks waiting for it to
finish. A deployment that configures no warm-up (the demo) does nothing there.

Once the worker consumes its queues (``worker_ready``) it announces itself alive on each of them (a
:class:`~workers.metrics.Heartbeat`, which the gateway's ``/readyz`` counts) until it shuts down.

Model-aware routing (:mod:`app.contract.routing`): the worker also consumes a direct queue of its own
(``celeryd_after_setup``), says which models it holds with each heartbeat and after each job, and hands the jobs
waiting in its direct queue back to the shared queue when it shuts down.

The solo worker overlaps its jobs' CPU work with their neighbours' denoising (:mod:`workers.lifecycle.overlap`,
``ATELIER_WORKER_OVERLAP``): a job's results are stored in the background while it takes the next one (drained
before it shuts down), and the job it will take next is prepared while one denoises.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from celery import Task
from celery.concurrency import get_implementation
from celery.signals import celeryd_after_setup, worker_init, worker_process_init, worker_ready, worker_shutdown

from app.contract.jobs import (
    BACKGROUNDS_TASK,
    DESCRIBE_TASK,
    GENERATE_TASK,
    IMAGES_TASK,
    JOB_TASK_NAMES,
    MASK_TASK,
    MODIFY_TASK,
    REMOVE_CONTENTS_TASK,
    RESIZE_TASK,
    RESTORE_FACES_TASK,
    SWITCH_FACE_TASK,
)
from app.contract.redis_conn import broker_url, connect
from app.contract.routing import advertise, direct_queue, hand_back
from app.contract.settings import get_settings
from workers.celery_app import celery
from workers.jobs.describe import run_describe_job
from workers.jobs.generate import prepare_ahead, run_job
from workers.jobs.images import run_images_job
from workers.jobs.masks import run_mask_job
from workers.jobs.remove_contents import run_remove_contents_job
from workers.jobs.resize import run_resize_job
from workers.jobs.restore_faces import run_restore_faces_job
from workers.jobs.scenes import run_backgrounds_job, run_modify_job
from workers.jobs.switch_face import run_switch_face_job
from workers.lifecycle.overlap import Finisher, LookAhead
from workers.metrics import ALIVE_TTL_S, Heartbeat, serve_metrics
from workers.runtime import WorkerRuntime, this_worker_id

log = logging.getLogger("atelier.worker")

#: The job that runs each Celery task: ``runner(runtime, job message)``, which ends the task whatever happens.
RUNNERS: dict[str, Callable[[WorkerRuntime, dict], None]] = {
    GENERATE_TASK.name: run_job,
    MASK_TASK.name: run_mask_job,
    RESIZE_TASK.name: run_resize_job,
    RESTORE_FACES_TASK.name: run_restore_faces_job,
    SWITCH_FACE_TASK.name: run_switch_face_job,
    BACKGROUNDS_TASK.name: run_backgrounds_job,
    MODIFY_TASK.name: run_modify_job,
    REMOVE_CONTENTS_TASK.name: run_remove_contents_job,
    DESCRIBE_TASK.name: run_describe_job,
    IMAGES_TASK.name: run_images_job,
}
if set(RUNNERS) != set(JOB_TASK_NAMES):  # the contract's action table names the tasks the gateway sends
    raise RuntimeError(f"workers/tasks.py RUNNERS and the Celery tasks of app/contract/jobs.py ACTION_SPECS disagree:"
                       f" no runner for {sorted(set(JOB_TASK_NAMES) - set(RUNNERS))}, a runner of no action for"
                       f" {sorted(set(RUNNERS) - set(JOB_TASK_NAMES))}")


class RuntimeTask(Task):
    """A task whose process owns one :class:`WorkerRuntime`."""

    _runtime: WorkerRuntime | None = None
    _heartbeat: Heartbeat | None = None
    #: set once a background warm-up (prefork child) has finished; None when none was started
    _warmed: threading.Event | None = None

    @property
    def runtime(self) -> WorkerRuntime:
        if RuntimeTask._runtime is None:
            RuntimeTask._runtime = WorkerRuntime.build(get_settings())
        return RuntimeTask._runtime


def _wait_for_warm_up() -> None:
    """A job must not run beside the warm-up (they would share the models); it waits for it to finish."""
    warmed = RuntimeTask._warmed
    if warmed is not None:
        warmed.wait()


def _register(name: str, runner: Callable[[WorkerRuntime, dict], None]) -> RuntimeTask:
    @celery.task(name=name, base=RuntimeTask, bind=True, acks_late=True)
    def run(self: RuntimeTask, message: dict) -> None:
        _wait_for_warm_up()
        try:
            runner(self.runtime, message)
        finally:
            heartbeat = RuntimeTask._heartbeat
            if heartbeat is not None:  # the solo worker: what it holds now, for the next job's routing
                finisher = self.runtime.finisher
                if finisher is not None:  # after the job's results, off the path between two denoising calls
                    finisher.submit(heartbeat.beat)
                else:
                    heartbeat.beat()

    return run


#: The Celery task of each entry of :data:`RUNNERS`, by its name.
TASKS: dict[str, RuntimeTask] = {name: _register(name, RUNNERS[name]) for name in JOB_TASK_NAMES}


def _runtime() -> WorkerRuntime:
    return next(iter(TASKS.values())).runtime


def warm_up_in_background(runtime: WorkerRuntime) -> threading.Thread:
    """Run ``runtime.warm_up()`` in a thread; jobs wait for it (:attr:`RuntimeTask._warmed`)."""
    warmed = RuntimeTask._warmed = threading.Event()

    def run() -> None:
        try:
            runtime.warm_up()
        finally:
            warmed.set()

    thread = threading.Thread(target=run, name="atelier-warm-up", daemon=True)
    thread.start()
    return thread


@worker_init.connect
def _build_in_solo_worker(sender=None, **_) -> None:
    if getattr(sender, "pool_cls", None) is get_implementation("solo"):
        runtime = _runtime()  # built here, before the worker consumes
        serve_metrics(get_settings(), runtime.cache, runtime.compositions)
        runtime.warm_up()  # before the worker consumes: the first job finds its models warm


@worker_process_init.connect
def _build_in_pool_child(**_) -> None:
    warm_up_in_background(_runtime())  # builds the runtime first


@celeryd_after_setup.connect
def _consume_direct_queue(sender=None, instance=None, **_) -> None:
    """Before the worker consumes: its own queue beside the shared one(s), for the jobs routed to it."""
    queue = get_settings().queue
    if queue in instance.app.amqp.queues.consume_from:
        instance.app.amqp.queues.select_add(direct_queue(queue, this_worker_id()))


def _holding() -> Callable[[], list[str]]:
    """What this process's model cache holds (the ModelCodes of its entries); nothing in a prefork parent, whose
    children hold the models."""
    runtime = RuntimeTask._runtime
    if runtime is None:
        return list
    return lambda: sorted({label for label, _ in runtime.cache.cached()})


def _overlap(runtime: WorkerRuntime, r: redis.Redis, queues: list[str]) -> None:
    """The solo worker overlaps its jobs' CPU work with their neighbours' denoising (``ATELIER_WORKER_OVERLAP``,
    :mod:`workers.lifecycle.overlap`): results stored in the background, the next job of ``queues`` (the ones it
    consumes, its direct queue first) prepared ahead."""
    runtime.finisher = Finisher()
    runtime.lookahead = LookAhead(r, queues, runtime.cache,
                                  {GENERATE_TASK.name: lambda message, held: prepare_ahead(runtime, message, held)})


@worker_ready.connect
def _announce_alive(**_) -> None:
    settings = get_settings()
    me, holding = this_worker_id(), _holding()
    mine = direct_queue(settings.queue, me)
    queues = sorted(q for q in celery.amqp.queues.consume_from if q != mine)
    r = connect(settings.redis_url or broker_url())
    runtime = RuntimeTask._runtime
    if runtime is not None and settings.worker_overlap:  # the solo worker (a prefork parent runs no job)
        mine_first = [mine] if mine in celery.amqp.queues.consume_from else []
        _overlap(runtime, r, mine_first + queues)

    def advertise_holding() -> None:
        if mine in celery.amqp.queues.consume_from:
            advertise(r, settings.queue, me, holding(), ALIVE_TTL_S)

    RuntimeTask._heartbeat = Heartbeat(r, me, queues, also=advertise_holding).start()


@worker_shutdown.connect
def _withdraw(**_) -> None:
    runtime = RuntimeTask._runtime
    if runtime is not None and runtime.finisher is not None:  # the last job's results, stored before it goes
        runtime.finisher.drain()
    if runtime is not None and runtime.lookahead is not None:
        runtime.lookahead.wait(60)
        runtime.lookahead.release()
    heartbeat, RuntimeTask._heartbeat = RuntimeTask._heartbeat, None
    if heartbeat is not None:
        heartbeat.stop()
        settings = get_settings()
        try:
            moved = hand_back(heartbeat.r, settings.queue, heartbeat.worker_id)
        except redis.RedisError as e:  # the gateway's recovery loop hands them back instead
            log.warning("could not hand back this worker's direct queue: %s", e)
        else:
            if moved:
                log.info("handed %d job(s) of this worker's queue back to %s", moved, settings.queue)
