"""A running job's storage calls tried again while the storage fails (docs/deployment.md "Object storage"):
the worker's :class:`~app.contract.storage.Storage` is built on a :class:`RetryingStore` around the deployment's
backend (:meth:`workers.runtime.WorkerRuntime.build`), so every read and write a job makes (its inputs, its
results, a server-made clothes mask, a persona's images and embeddings) goes through it.

- The storage failing (a bucket unreachable, refusing or erroring, a data dir that cannot be read or written:
  an ``OSError`` other than ``FileNotFoundError``) is tried again with backoff (:data:`FIRST_DELAY_S`, doubling
  up to :data:`MAX_DELAY_S`) for as long as the job's time budget (its :class:`~workers.lifecycle.watch.JobWatch`)
  lasts; then the task ends in Error 508 (:func:`~app.contract.codes.storage_error_message`), not 230: the
  client's input is not at fault. A cancellation or a lost lease stops the retrying.
- An object that is not there (``FileNotFoundError``, None, False) is an answer, not a failure: never retried
  (an input swept by the retention is Error 230 ``missing``).
- Outside a job (no watch) a failure is passed on as it is, once.

Why Error and not a re-delivery of the job: with ``acks_late`` a job not acknowledged comes back at once and
fails again for as long as the storage is down, a loop that also starves the queue; ended in Error 508 the task
tells its owner what happened and that submitting again helps once the storage is back. Nothing is half
written meanwhile: every backend replaces an object atomically (``ObjectStore.put``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from app.contract.codes import ErrorCode, storage_error_message
from app.contract.storage_base import Namespace, ObjectKey, ObjectStore
from workers.lifecycle.errors import JobError
from workers.lifecycle.watch import current_watch

log = logging.getLogger("atelier.worker")

#: the first pause before trying a failed storage call again; each next one doubles, up to MAX_DELAY_S
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 4.0

T = TypeVar("T")


class RetryingStore:
    """:class:`~app.contract.storage_base.ObjectStore` around another (``inner``): each call that fails with the
    storage failing is tried again within the running job's time budget, then ends the job in Error 508."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def put(self, key: ObjectKey, data: bytes) -> None:
        self._retry("writing", key.namespace, lambda: self.inner.put(key, data))

    def touch(self, key: ObjectKey) -> bool:
        return self._retry("writing", key.namespace, lambda: self.inner.touch(key))

    def get(self, key: ObjectKey) -> bytes | None:
        return self._retry("reading", key.namespace, lambda: self.inner.get(key))

    def open(self, key: ObjectKey) -> BinaryIO:
        return self._retry("reading", key.namespace, lambda: self.inner.open(key))

    def exists(self, key: ObjectKey) -> bool:
        return self._retry("looking up", key.namespace, lambda: self.inner.exists(key))

    def delete(self, key: ObjectKey) -> bool:
        return self._retry("deleting", key.namespace, lambda: self.inner.delete(key))

    def delete_group(self, namespace: Namespace, group: str) -> int:
        return self._retry("deleting", namespace, lambda: self.inner.delete_group(namespace, group))

    def expired(self, namespace: Namespace, before: float) -> list[str]:
        return self._retry("listing", namespace, lambda: self.inner.expired(namespace, before))

    def link(self, key: ObjectKey, expires_at: int) -> str | None:
        return self._retry("signing a link to", key.namespace, lambda: self.inner.link(key, expires_at))

    def _retry(self, verb: str, namespace: Namespace, fn: Callable[[], T]) -> T:
        watch = current_watch()
        delay, tries, first_failure = FIRST_DELAY_S, 0, 0.0
        while True:
            try:
                result = fn()
            except FileNotFoundError:
                raise  # no such object: an answer, not the storage failing
            except OSError as e:
                if watch is None:
                    raise
                tries += 1
                now = time.monotonic()
                first_failure = first_failure or now
                what = f"{verb} {namespace.name}"
                if watch.remaining() < delay:
                    log.error("task %s: the storage failed %s %d time(s) over %.1fs, and the job's time budget is"
                              " spent; ending it in Error %d: %s", watch.uid, what, tries, now - first_failure,
                              ErrorCode.STORAGE, e)
                    raise JobError(ErrorCode.STORAGE, storage_error_message(what, now - first_failure)) from e
                log.warning("task %s: the storage failed %s (%s); trying again in %.2fs (%.0fs of the job's time"
                            " budget left)", watch.uid, what, e, delay, watch.remaining())
                time.sleep(delay)
                watch.check_interrupted()  # canceled or taken over meanwhile: stop here
                delay = min(2 * delay, MAX_DELAY_S)
            else:
                if tries and watch is not None:
                    log.warning("task %s: the storage answered again after %d failure(s) over %.1fs", watch.uid,
                                tries, time.monotonic() - first_failure)
                return result
