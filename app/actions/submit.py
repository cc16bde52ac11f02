"""What every task-creating action does once its request is valid: store the inputs (each once, by content
hash), create the task (idempotent on PublicKey + request_uuid, with its job kept for the recovery), and
send the job to the workers' queue, as the Celery task the action table gives the action (``ACTION_SPECS``,
``app/contract/jobs.py``). Also the webhook destination of a task (``CallbackUrl``)."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import redis

from app.actions.base import SignedCall
from app.contract.codes import STORAGE_UNAVAILABLE_MESSAGE, RetCode
from app.contract.jobs import BaseJob, task_for
from app.contract.limits import DEFAULT_PRIORITY, MAX_PRIORITY_FIELD, PRIORITY_FIELD
from app.contract.queue import broker_priority, queue_lists
from app.contract.routing import group, route, routing_headers, routing_lock
from app.contract.taskstore import SEND_GRACE_LEASES, TooManyActiveTasks
from app.errors import ApiError
from app.keys import WEBHOOK_SECRET_FIELD
from app.services import Services
from app.validation.generate import CALLBACK_URL_FIELD
from app.validation.images import DecodedImage

log = logging.getLogger("atelier.gateway")


def store_input(svc: Services, img: DecodedImage) -> str:
    """Store one input image under its content hash; its storage key. 150 when storage is unavailable."""
    try:
        return svc.storage.put_input(img.sha256, img.data)
    except OSError as e:
        log.error("storage unavailable: %s", e)
        raise ApiError(RetCode.UNAVAILABLE, STORAGE_UNAVAILABLE_MESSAGE) from None


def known_inputs(svc: Services) -> Callable[[str], bool]:
    """Whether an input of a content hash is stored (the validation does not decode it again): the storage's
    ``has_input``, 150 when the storage is unavailable (a fault of the deployment, never of the client's image)."""
    def known(sha: str) -> bool:
        try:
            return svc.storage.has_input(sha)
        except OSError as e:
            log.error("storage unavailable: %s", e)
            raise ApiError(RetCode.UNAVAILABLE, STORAGE_UNAVAILABLE_MESSAGE) from None
    return known


def callback_url(requested: str | None, call: SignedCall, svc: Services) -> str | None:
    """Where the task's webhook goes: the request's CallbackUrl, else its key's default (docs/API.md "Webhooks").
    A CallbackUrl needs the key's webhook secret to sign with (the key file refuses a default without one)."""
    pair = svc.keys.pair(call.public_key)
    if requested is not None and (pair is None or not pair.webhook_secret):
        raise ApiError.param(CALLBACK_URL_FIELD, f"needs a webhook secret for this PublicKey ({WEBHOOK_SECRET_FIELD}"
                                                 " in the deployment's key file): ask the operator for one")
    return requested or (pair.callback_url if pair else None)


def priority_capped_note(asked: int, cap: int) -> str:
    """The Note of a task whose Priority was lowered to its key's cap."""
    return f"{PRIORITY_FIELD} {asked} lowered to {cap}, the most this PublicKey may ask for ({MAX_PRIORITY_FIELD})"


def request_uuid(call: SignedCall) -> str | None:
    value = call.body.get("request_uuid")
    return value if isinstance(value, str) and value else None


def priority_cap(svc: Services, public_key: str) -> int:
    """The highest Priority the key's tasks run at: its key entry's MaxPriority, else ATELIER_MAX_PRIORITY."""
    pair = svc.keys.pair(public_key)
    return pair.max_priority if pair is not None and pair.max_priority is not None else svc.settings.max_priority


def submit(call: SignedCall, svc: Services, *, job: BaseJob, seed: int, notes: list[str], points: int,
           callback: str | None, priority: int = DEFAULT_PRIORITY, results_per_image: int = 1,
           model: str | None = None) -> str:
    """Create task ``job.task_uid`` of ``call.action`` and enqueue ``job`` as the action's Celery task; its
    TaskUID (the first one's, for a repeated request_uuid, which is not enqueued again). 153 over the key's
    active tasks, 150 when the queue is unavailable (the task is then discarded, so that a retry starts afresh).

    The job is queued at the request's ``priority`` (its Priority), lowered to the key's cap (:func:`priority_cap`)
    with a Note saying so; the recovery sends it again at the same. It goes to the queue of a worker that holds
    ``model`` (the ModelCode the job needs most: its Main model, mask engine or upscaler; None: none) when one is not
    too busy, else to the shared queue (:func:`app.contract.routing.route`).

    ``job`` must be of the action's message class; an action that creates no task cannot submit (both are
    programming errors: TypeError, ``NoTaskAction``)."""
    task = task_for(call.action)
    if type(job) is not task.job:
        raise TypeError(f"{call.action} sends {task.job.__name__} jobs, not {type(job).__name__}")
    s, uid, wire = svc.settings, job.task_uid, job.to_wire()
    req_uuid = request_uuid(call)
    cap = priority_cap(svc, call.public_key)
    if priority > cap:
        notes = [*notes, priority_capped_note(priority, cap)]
        priority = cap
    try:  # the task keeps its job message: the recovery sends it again if its worker dies
        got, created = svc.tasks.create(call.public_key, req_uuid, call.action, seed, s.max_active_tasks_per_key,
                                        notes=notes, points=points, uid=uid, job=wire, callback_url=callback,
                                        queue=s.queue, results_per_image=results_per_image,
                                        priority=priority, send_within_s=SEND_GRACE_LEASES * s.lease_s)
    except TooManyActiveTasks:
        raise ApiError(RetCode.RATE_LIMIT, "Rate limit exceeded: too many queued or running tasks") from None
    if not created:
        return got
    try:
        # argsrepr: what Celery's logs show of the arguments; its default, a safe repr of the whole job message,
        # costs a few milliseconds per submission and repeats what the task record holds
        r = svc.tasks.r
        with routing_lock(r, s.queue, active=model is not None and s.route_backlog > 0):
            target = route(r, s.queue, model, backlog=s.route_backlog, switch_jobs=s.route_switch_jobs,
                           priority=priority)
            routed = model is not None and target != s.queue
            sent = svc.celery.send_task(task.name, args=[wire], queue=target, priority=broker_priority(priority),
                                        argsrepr=f"[job of task {got}]", kwargsrepr="{}",
                                        headers=routing_headers(model) if routed else None)
            if routed:
                try:  # an optimisation: a job left where it came stays a job in its worker's queue
                    group(r, queue_lists(target)[broker_priority(priority)], sent.id, model,
                          max_wait_s=s.route_group_s, look=s.route_backlog)
                except redis.RedisError as e:
                    log.warning("task %s: not grouped with its model's jobs (%s)", got, e)
    except Exception:
        log.exception("enqueue failed for task %s", got)
        svc.tasks.discard(got, call.public_key, req_uuid)
        raise ApiError(RetCode.UNAVAILABLE) from None
    try:  # not done: the reaper sends it again after the grace, a copy the workers skip
        svc.tasks.sent(got)
    except Exception as e:
        log.warning("task %s: could not record its job message as sent (%s); the reaper will send a copy", got, e)
    if s.redis_wait_replicas:  # docs/deployment.md "Redis high availability": acknowledged = on the replicas too
        try:
            held = svc.tasks.wait_replicated(got, s.redis_wait_replicas, s.redis_wait_timeout_ms)
        except Exception:
            log.exception("WAIT for the replicas failed for task %s", got)
            held = -1
        if held < s.redis_wait_replicas:
            if held >= 0:
                log.error("task %s: %d of %d replicas hold it after %d ms; not acknowledged", got, held,
                          s.redis_wait_replicas, s.redis_wait_timeout_ms)
            # its job message may still run: the worker finds no task record and skips it
            with contextlib.suppress(Exception):
                svc.tasks.discard(got, call.public_key, req_uuid)
            raise ApiError(RetCode.UNAVAILABLE) from None
    return got
