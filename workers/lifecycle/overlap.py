"""The device never waits for the CPU (docs/deployment.md "Scheduling", "Overlap"): a solo GPU worker overlaps the
CPU work around a job's denoising with the denoising of its neighbours.

- :class:`Finisher`: job k's results (PNG encoding, storage, the Finished mark) are written by one background
  thread while the worker goes back to Celery and runs job k+1. Job k's lease keeps being renewed until its
  results are stored and it is Finished (its :class:`~workers.lifecycle.watch.JobWatch` stays started), its
  cancel and time budget apply as before (``finish`` checks them; the storage retries see the watch), and one
  thread writing in the order the jobs ran keeps the results' order. The Celery message of job k is acknowledged
  when the task returns, before its results are stored: the task store is the source of truth, and a worker that
  dies before job k is Finished leaves its lease to expire, so the gateway's lease recovery sends it again.
- :class:`LookAhead`: at job k's first denoising step, a thread *peeks* (``LRANGE``, taking nothing) at the job
  message the worker would take next, its direct queue's and the shared queue's lists in priority order, and
  prepares it: its inputs decoded and composed into the worker's composition cache, its models loaded and held
  in the model cache (a :class:`~workers.models.cache.Lease` of its own) until that job runs. Nothing is taken
  early, so priorities and the other workers' share of the queue are unchanged; a peeked job that another worker
  takes (or that a higher one passes) cost only CPU time, and its hold on the models is dropped as soon as the
  worker starts another job.
"""
from __future__ import annotations

import base64
import logging
import queue
import threading
from collections.abc import Callable, Sequence

import orjson
import redis

from app.contract.queue import queue_lists
from workers.models.cache import Lease, ModelCache

log = logging.getLogger("atelier.worker")


class Finisher:
    """One thread that runs the jobs' last parts (:meth:`submit`) in the order they come; at most ``depth`` wait
    (a job's store and the heartbeat after it), so a worker whose stores fall behind its denoising waits for them
    rather than hoarding results."""

    def __init__(self, depth: int = 2):
        self._todo: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="atelier-finisher", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._todo.put(fn)

    def drain(self) -> None:
        """Wait until every submitted part has run (a worker shutting down: its last job's results)."""
        self._todo.join()

    def _run(self) -> None:
        while True:
            fn = self._todo.get()
            try:
                if fn is not None:
                    fn()
            except Exception:  # noqa: BLE001 - the thread ends every job's task: it must outlive any one failure
                log.exception("a job's background store failed")
            finally:
                self._todo.task_done()


#: ``prepare(message, held)``: what the look-ahead does with a peeked job message of a task (decode and compose
#: its inputs, get its models through ``held``); it may raise, which only means nothing was prepared
Prepare = Callable[[dict, Lease], None]


def peek_lists(queues: Sequence[str]) -> list[str]:
    """The Redis lists a worker consuming ``queues`` takes its next message from, in the order kombu's ``BRPOP``
    names them: priority step first, then queue (``app.contract.queue.queue_lists``)."""
    by_queue = [queue_lists(q) for q in queues]
    return [lists[step] for step in range(len(by_queue[0])) for lists in by_queue]


def decode_message(raw: bytes) -> tuple[str, dict] | None:
    """(task name, job message) of a kombu message on Redis (Celery's protocol 2, JSON); None for anything else."""
    try:
        envelope = orjson.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = orjson.loads(body)[0]
        name = envelope["headers"]["task"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not args or not isinstance(args[0], dict):
        return None
    return name, args[0]


class LookAhead:
    """Prepares the job the worker will most likely take next while the current one denoises (see the module)."""

    def __init__(self, r: redis.Redis, queues: Sequence[str], cache: ModelCache, preparers: dict[str, Prepare]):
        self.r, self.lists, self.cache, self.preparers = r, peek_lists(queues), cache, preparers
        self._lock = threading.Lock()
        self._held: Lease | None = None      # the models of the peeked job
        self._uid: str | None = None         # the peeked job's TaskUID
        self._idle = threading.Event()       # no look-ahead is under way
        self._idle.set()
        self._wake = threading.Event()       # a look-ahead is asked for (:meth:`trigger`)
        self._thread: threading.Thread | None = None
        self.prepared = 0                    # how many jobs were prepared (the tests read it)

    def trigger(self) -> None:
        """Start a look-ahead in the background (job k's first denoising step); one at a time."""
        if not self._idle.is_set():
            return
        self._idle.clear()
        if self._thread is None:  # one thread for the worker's life: starting one per job made the denoising
            # thread wait for the new thread to run (Thread.start), 0.6 ms of each job's first step
            self._thread = threading.Thread(target=self._serve, name="atelier-look-ahead", daemon=True)
            self._thread.start()
        self._wake.set()

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._look()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a look-ahead under way to end (a worker shutting down, the tests; a job does not wait)."""
        return self._idle.wait(timeout)

    def started(self, uid: str) -> None:
        """A job starts on this worker: unless it is the one peeked, the peeked job's hold on the models goes now
        (it must not keep out what this job needs); the peeked one's goes once the job holds its models itself
        (:meth:`release`, at its first denoising step or end)."""
        with self._lock:
            if uid != self._uid:
                self._release_locked()

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        held, self._held, self._uid = self._held, None, None
        if held is not None:
            held.close()

    def _look(self) -> None:
        try:
            self.release()  # the job running now holds its own models
            found = self._peek()
            if found is None:
                return
            name, message = found
            prepare = self.preparers.get(name)
            uid = str(message.get("task_uid", ""))
            if prepare is None or not uid:
                return
            held = self.cache.lease()
            try:
                prepare(message, held)
            except Exception as e:  # noqa: BLE001 - only a guess: the job, when it runs, reports its own errors
                held.close()
                log.debug("look-ahead at task %s: nothing prepared (%s: %s)", uid, type(e).__name__, e)
                return
            with self._lock:
                self._release_locked()
                self._held, self._uid = held, uid
            self.prepared += 1
            log.debug("look-ahead: task %s prepared (models %s)", uid, ", ".join(held.used) or "none")
        except redis.RedisError as e:
            log.debug("look-ahead: could not peek at the queue: %s", e)
        except Exception:  # noqa: BLE001 - a background guess must never take the worker down
            log.exception("look-ahead failed")
        finally:
            self._idle.set()

    def _peek(self) -> tuple[str, dict] | None:
        """The message the worker would take next (kombu pushes on the left and pops on the right)."""
        pipe = self.r.pipeline(transaction=False)
        for key in self.lists:
            pipe.lindex(key, -1)
        for raw in pipe.execute():
            if raw is not None:
                return decode_message(raw)
        return None
