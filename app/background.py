"""The gateway's background loops, each in a thread of its own: the retention sweep, the recovery of tasks
whose worker died and the webhook deliveries (app/webhooks.py). Several gateways may run them at once: every
step is atomic in Redis.

Recovery (docs/deployment.md "Recovery"): a worker holds a lease on the task it runs and renews it twice a
second (workers/lifecycle/watch.py ``JobWatch``). Every ``ATELIER_REAP_INTERVAL_S`` the gateway looks for leases that
expired (``ATELIER_LEASE_S`` without a renewal: the worker was killed, ran out of memory, lost its node) and
sends the task's job message again, counting a death; after ``ATELIER_MAX_WORKER_DEATHS`` the task ends in
Error (502) instead: a job that kills its worker must not kill the fleet. A task is sent again to the queue it
was first sent to, as the Celery task the action table gives its action (``ACTION_SPECS``, app/contract/jobs.py),
and must be started within ``REQUEUE_GRACE_LEASES`` leases, or it is sent again (the message may have been lost
with the gateway).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.contract.codes import ErrorCode, worker_lost_message
from app.contract.jobs import NoTaskAction, task_name_for
from app.contract.queue import broker_priority
from app.contract.routing import reclaim
from app.services import Services
from app.webhooks import Deliverer

log = logging.getLogger("atelier.gateway")

#: A task sent again must be started within this many leases, or it is sent again (its message may have been
#: lost, e.g. with a gateway that crashed); a long queue makes duplicates, which the workers skip.
REQUEUE_GRACE_LEASES = 10


def sweep_once(svc: Services) -> None:
    n = svc.storage.sweep(svc.settings.result_retention_s)
    if n:
        log.info("retention sweep removed %d expired files/folders", n)


def recover_once(svc: Services) -> list[tuple[str, str]]:
    """Act on every expired lease; returns ``(TaskUID, what was done)`` for the log and the tests: the state
    ``TaskStore.reap`` gave (``requeue``, ``resend``, ``poison``, ...), or ``error`` for a task that needed sending
    again but could not be (no job message kept, or an action no Celery task runs)."""
    s, done = svc.settings, []
    for uid in svc.tasks.expired_leases():
        state, deaths = svc.tasks.reap(uid, s.max_worker_deaths, requeue_grace_s=REQUEUE_GRACE_LEASES * s.lease_s)
        if state in ("requeue", "resend"):
            if not _send_again(svc, uid):
                state = "error"
            elif state == "requeue":
                log.warning("task %s: its worker stopped renewing its lease (death %d; %d allowed); sent again",
                            uid, deaths, s.max_worker_deaths - 1)
            else:
                log.warning("task %s: sent again, not started within %.0fs (its message may be lost)", uid,
                            REQUEUE_GRACE_LEASES * s.lease_s)
        elif state == "poison":
            svc.tasks.mark_error(uid, ErrorCode.WORKER_LOST, worker_lost_message(deaths))
            log.error("task %s: its run killed %d workers; ended in Error", uid, deaths)
        done.append((uid, state))
    return done


def _send_again(svc: Services, uid: str) -> bool:
    """Send the task's kept job message again, as the Celery task the action table gives its action, to the queue
    it was first sent to; False (the task ended in Error 500) when it cannot be."""
    rec = svc.tasks.get(uid)
    if rec is None or rec.job is None:
        log.error("task %s lost its worker but has no job message to send again", uid)
        svc.tasks.mark_error(uid, ErrorCode.INTERNAL, "Internal error (the task's job message is missing)")
        return False
    try:
        task_name = task_name_for(rec.action)
    except NoTaskAction as e:  # e.g. a task of an action this gateway's version does not know
        log.error("task %s lost its worker but cannot be sent again: %s", uid, e)
        svc.tasks.mark_error(uid, ErrorCode.INTERNAL, f"Internal error (no Celery task runs {rec.action})")
        return False
    svc.celery.send_task(task_name, args=[rec.job], queue=rec.queue or svc.settings.queue,
                         priority=broker_priority(rec.priority))
    return True


class Loop:
    """``fn()`` every ``interval_s`` seconds in a daemon thread until :meth:`stop`; errors are logged, the
    loop goes on (Redis may be restarting)."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]):
        self.name, self.interval_s, self.fn = name, interval_s, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Loop:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:
                log.exception("%s failed; trying again in %.0fs", self.name, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start_loops(svc: Services) -> list[Loop]:
    s = svc.settings
    return [Loop("retention-sweep", s.cleanup_interval_s, lambda: sweep_once(svc)).start(),
            Loop("recovery", s.reap_interval_s, lambda: recover_once(svc)).start(),
            # the direct queues of workers that died go back to the shared queue (docs/deployment.md "Scheduling")
            Loop("reclaim", s.reap_interval_s, lambda: reclaim(svc.tasks.r, s.queue)).start(),
            Loop("webhooks", s.webhook_interval_s, Deliverer(svc).run_once).start()]
