"""Model-aware routing (docs/deployment.md "Scheduling"): a job goes to a worker that holds its model, so that a
cluster serving several Main models loads each on as few GPUs as it can.

Every worker consumes the shared queue (``ATELIER_QUEUE``) and a direct queue of its own
(:func:`direct_queue`), and says which models it holds (:func:`advertise`, with its heartbeat and after each job).
At submission the gateway picks, among the live workers of the shared queue, the one where the job costs least
(:func:`choose`): its backlog (the jobs waiting in its direct queue at the job's Priority or above), plus
``switch_jobs`` when it neither holds the job's model nor was sent a job of that model lately, twice that when other
jobs wait in its queue (it switches to the model and back). A model that no worker holds, routed to a worker, counts
as held there from then on (:func:`routed_key`), so that a burst of one model's jobs goes to one worker, not to all of
them; so does a model that spills from busier workers that hold it to a worker that holds none; a job that spills to
a worker that holds another model does not count: else the next jobs of the model would spread over both workers and
each would switch back and forth. The job goes to that worker's direct queue while its backlog is under
``backlog``; otherwise, for a job that needs no model, and for one above the default Priority whose model no worker
holds (an interactive job: a load wherever it runs), to the shared queue, where the next free worker takes it.

Gateways route one job at a time per queue (:func:`routing_lock`, a Redis lock held from the choice to the job's
send): two submissions that chose at once would both see a model held nowhere, and a burst's first jobs would go to
every worker, each taking up every model.

In a worker's queue the jobs are grouped by model (:func:`group`): a job routed there is moved, within its Priority,
to just behind the newest job of its model waiting there, so that a worker given several models switches once per
group rather than at each change of model in the order they came. It passes only jobs that have waited less than
``ATELIER_ROUTE_GROUP_S``: none waits longer than that for the grouping.

A worker that stops hands its direct queue back to the shared queue (:func:`hand_back`); the gateway's recovery loop
does it for one that died (:func:`reclaim`), so that no job waits for a worker that is gone. Priorities hold in
every queue: each is kombu's ten lists (:func:`app.contract.queue.queue_lists`), moved list to list.

The keys, with the task store's prefix:

- ``atelier:direct:<queue>``: a set of the worker ids that have a direct queue of ``queue`` (for :func:`reclaim`);
- ``atelier:warm:<worker id>``: the models the worker holds (a JSON list), expiring with its liveness;
- ``atelier:routed:<worker id>``: the models recently routed to it (a set, expiring ``ROUTED_TTL_S`` after the last);
- ``atelier:gone:<worker id>``: when :func:`reclaim` first found it gone;
- ``atelier:routelock:<queue>``: :func:`routing_lock`.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson
import redis

from app.contract.limits import DEFAULT_PRIORITY
from app.contract.queue import broker_priority, live_workers_key, queue_lists

log = logging.getLogger("atelier.routing")

P = "atelier:"
#: How long a model routed to a worker counts as held there without the worker saying so (its first job of it may
#: wait behind others, then load): longer than a backlog takes to drain.
ROUTED_TTL_S = 300


def direct_queue(queue: str, worker_id: str) -> str:
    """The direct queue of ``worker_id`` among the workers of ``queue``."""
    return f"{queue}.w.{worker_id}"


def direct_key(queue: str) -> str:
    return f"{P}direct:{queue}"


def warm_key(worker_id: str) -> str:
    return f"{P}warm:{worker_id}"


def routed_key(worker_id: str) -> str:
    return f"{P}routed:{worker_id}"


def gone_key(worker_id: str) -> str:
    return f"{P}gone:{worker_id}"


def lock_key(queue: str) -> str:
    return f"{P}routelock:{queue}"


#: The longest a gateway holds :func:`routing_lock` (one that dies holding it delays the others this long at most);
#: a choice and a send take a few milliseconds.
LOCK_HOLD_S = 2.0
#: How long a gateway waits for :func:`routing_lock` before it routes without it (a slow Redis must not stop
#: submissions), and how often it tries meanwhile.
LOCK_WAIT_S = 0.5
LOCK_RETRY_S = 0.002


@dataclass(frozen=True)
class WorkerView:
    """What the gateway knows of a live worker when it routes: the models it holds or was sent, its backlog (the
    jobs waiting in its direct queue) and, when known, that backlog by kombu priority step (0 first)."""

    worker_id: str
    models: frozenset[str]
    backlog: int
    by_step: tuple[int, ...] = ()

    def ahead(self, step: int) -> int:
        """The waiting jobs a job sent now at kombu priority ``step`` runs after: those of its step and above (a
        batch queued at a lower Priority does not delay it)."""
        return sum(self.by_step[:step + 1]) if self.by_step else self.backlog


def switch_cost(model: str, worker: WorkerView, switch_jobs: float) -> float:
    """What a job of ``model`` costs ``worker`` beyond its backlog, in jobs: nothing when it holds the model;
    ``switch_jobs`` (a load) when it does not and its queue is empty; twice that when jobs of the models it holds
    wait in its queue, as the job is run between them: a load, and another to go back."""
    if model in worker.models:
        return 0
    return switch_jobs * (2 if worker.backlog else 1)


def choose(model: str | None, workers: Sequence[WorkerView], *, backlog: int, switch_jobs: float,
           priority: int = DEFAULT_PRIORITY) -> str | None:
    """The worker a job of ``model`` at wire ``priority`` goes to, or None for the shared queue: the one of least
    ``ahead + switch_cost`` (the jobs it would wait behind there, :meth:`WorkerView.ahead`, and :func:`switch_cost`;
    ties: one that holds it, then the fewest models, then the id), when its backlog is under ``backlog``. A job that
    needs no model (None) goes to the shared queue; so does one of a Priority above the default that no worker
    holds the model of (an interactive job that needs a load wherever it runs: the first worker to free takes it,
    before the lower Priorities waiting in its own queue)."""
    if model is None or not workers or backlog <= 0:
        return None
    step = broker_priority(priority)
    best = min(workers, key=lambda w: (w.ahead(step) + switch_cost(model, w, switch_jobs), model not in w.models,
                                       len(w.models), w.worker_id))
    if best.backlog >= backlog or (priority > DEFAULT_PRIORITY and model not in best.models):
        return None
    return best.worker_id


# KEYS: the live-worker set of the queue. -> the ids of the workers alive now (Redis's clock).
_LIVE_IDS = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (tonumber(t[1]) + tonumber(t[2]) / 1000000), '+inf')
"""


def waiting_lists(queue: str, direct_ids: Iterable[bytes | str]) -> list[str]:
    """The Redis lists where ``queue``'s jobs wait: the shared queue's, then the direct queue's of each worker of
    ``direct_ids`` (the members of :func:`direct_key`, alive or not: a dead worker's jobs wait until reclaimed)."""
    names = queue_lists(queue)
    for w in sorted({_text(w) for w in direct_ids}):
        names += queue_lists(direct_queue(queue, w))
    return names


def live_worker_ids(r: redis.Redis, queue: str) -> list[str]:
    return [_text(w) for w in r.eval(_LIVE_IDS, 1, live_workers_key(queue))]


def worker_views(r: redis.Redis, queue: str) -> list[WorkerView]:
    """The live workers of ``queue`` that have a direct queue, as :func:`choose` sees them (two round trips)."""
    alive = live_worker_ids(r, queue)
    direct = {_text(w) for w in r.smembers(direct_key(queue))}
    ids = [w for w in alive if w in direct]
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for w in ids:
        pipe.get(warm_key(w))
        pipe.smembers(routed_key(w))
        for name in queue_lists(direct_queue(queue, w)):
            pipe.llen(name)
    got = pipe.execute()
    step = 2 + len(queue_lists(queue))
    views = []
    for i, w in enumerate(ids):
        warm, routed, *lengths = got[i * step:(i + 1) * step]
        models = set(orjson.loads(warm)) if warm else set()
        models |= {_text(m) for m in routed}
        views.append(WorkerView(w, frozenset(models), sum(lengths), tuple(lengths)))
    return views


def route(r: redis.Redis, queue: str, model: str | None, *, backlog: int, switch_jobs: float,
          priority: int = DEFAULT_PRIORITY) -> str:
    """The queue a job of ``model`` at wire ``priority`` is sent to now: a worker's direct queue (:func:`choose`), or
    ``queue``. The model then counts as routed there (:func:`routed_key`) when that worker holds it already, when no
    worker does, or when that worker holds no model (it takes the model up: one model's burst spreads over the
    workers); not when it spills there from busier workers that hold it, to a worker that holds another model (whose
    cache says so once the job has run: a worker that keeps the model then holds it)."""
    if model is None or backlog <= 0:
        return queue
    views = worker_views(r, queue)
    worker = choose(model, views, backlog=backlog, switch_jobs=switch_jobs, priority=priority)
    if worker is None:
        return queue
    held = {v.worker_id for v in views if model in v.models}
    if worker in held or not held or not next(v.models for v in views if v.worker_id == worker):
        pipe = r.pipeline(transaction=False)
        pipe.sadd(routed_key(worker), model)
        pipe.expire(routed_key(worker), ROUTED_TTL_S)
        pipe.execute()
    return direct_queue(queue, worker)


#: The headers the gateway adds to a routed job's message, which :func:`group` reads: its model, and when it was sent
#: (the gateway's clock, seconds since the epoch).
MODEL_HEADER = "atelier_model"
SENT_HEADER = "atelier_sent"


def routing_headers(model: str, now: float | None = None) -> dict[str, object]:
    return {MODEL_HEADER: model, SENT_HEADER: time.time() if now is None else now}


# KEYS: the priority list the job was just pushed to (kombu pushes left and pops right: index 0 is the newest).
# ARGV: the job's Celery task id, its model, the longest a job it passes may have waited (s), how many to look at.
# -> the jobs it passed (0: left where it was). Passes nothing that is not a routed job (no sent time) or that has
# waited too long, and never becomes the next job to run (it goes to the left of a job of its model).
_GROUP = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[4]))
local function headers(m)
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' and type(d['headers']) == 'table' then return d['headers'] end
  return {}
end
if #items < 3 or headers(items[1])['id'] ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 2, #items do
  local h = headers(items[i])
  if h['""" + MODEL_HEADER + """'] == ARGV[2] then
    if i == 2 then return 0 end
    redis.call('LREM', KEYS[1], 1, items[1])
    redis.call('LINSERT', KEYS[1], 'BEFORE', items[i], items[1])
    return i - 2
  end
  local sent = tonumber(h['""" + SENT_HEADER + """'])
  if sent == nil or now - sent > tonumber(ARGV[3]) then return 0 end
end
return 0
"""


def group(r: redis.Redis, priority_list: str, task_id: str, model: str, *, max_wait_s: float, look: int) -> int:
    """Move the job ``task_id`` of ``model``, just pushed to ``priority_list`` (a worker's direct queue, one
    Priority's list), to just behind the newest job of ``model`` among the ``look`` newest waiting there, passing
    only routed jobs that have waited under ``max_wait_s`` (Redis's clock against the gateway's: a few seconds of
    skew move that bound as much). The number of jobs it passed. Call it under :func:`routing_lock`, right after
    the send: it leaves the job where it is unless it is still the newest of the list."""
    if max_wait_s <= 0:
        return 0
    return int(r.eval(_GROUP, 1, priority_list, task_id, model, max_wait_s, max(2, look)))


@contextlib.contextmanager
def routing_lock(r: redis.Redis, queue: str, active: bool = True) -> Iterator[bool]:
    """Hold the routing of ``queue`` (across every gateway) from :func:`route` to the job's send, so that the next
    choice sees this one: its model routed (``routed_key``) and its job in the worker's backlog. Yields whether it is
    held: past :data:`LOCK_WAIT_S`, or when Redis fails here, the job is routed without it (a choice made on
    slightly older counts; the send then fails or not on its own). ``active`` False (a job that is not routed):
    nothing taken."""
    lock = r.lock(lock_key(queue), timeout=LOCK_HOLD_S, sleep=LOCK_RETRY_S, blocking_timeout=LOCK_WAIT_S)
    held = False
    if active:
        try:
            held = bool(lock.acquire())
        except redis.RedisError as e:
            log.debug("routing without the lock: %s", e)
        if not held:
            log.debug("routing %s without the lock (not had within %.1fs)", queue, LOCK_WAIT_S)
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(redis.RedisError):  # LockError (expired) is one; it expires on its own
                lock.release()


def advertise(r: redis.Redis, queue: str, worker_id: str, models: Iterable[str], ttl_s: float) -> None:
    """``worker_id`` consumes its direct queue of ``queue`` and holds ``models`` (for ``ttl_s`` seconds)."""
    pipe = r.pipeline(transaction=False)
    pipe.sadd(direct_key(queue), worker_id)
    pipe.delete(gone_key(worker_id))
    pipe.set(warm_key(worker_id), orjson.dumps(sorted(set(models))), ex=max(1, int(ttl_s)))
    pipe.execute()


# KEYS: the source lists then the destination lists, priority by priority. -> messages moved. Each goes to the end of
# its priority's list that workers pop first (kombu pushes left, pops right), newest first, so that the oldest is
# popped first and a job handed back does not queue again behind the ones sent since.
_MOVE = """
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  while true do
    local m = redis.call('LMOVE', KEYS[i], KEYS[n + i], 'LEFT', 'RIGHT')
    if not m then break end
    moved = moved + 1
  end
end
return moved
"""


def hand_back(r: redis.Redis, queue: str, worker_id: str) -> int:
    """Move every job waiting in ``worker_id``'s direct queue to the shared ``queue`` (same priorities, ahead of the
    jobs queued there since); the number moved. The worker stays listed (``direct_key``): a gateway that chose it
    just before it stopped may still send it a job, which the next :func:`reclaim` moves too."""
    source, dest = queue_lists(direct_queue(queue, worker_id)), queue_lists(queue)
    return int(r.eval(_MOVE, 2 * len(source), *source, *dest))


#: How long :func:`reclaim` keeps moving the jobs sent to a worker that is gone before it forgets the worker: longer
#: than a gateway takes from choosing a worker to sending it the job.
FORGET_AFTER_S = 60


def reclaim(r: redis.Redis, queue: str, now: float | None = None) -> dict[str, int]:
    """Hand back the direct queues of the workers of ``queue`` that are no longer alive (the gateway's recovery
    loop, every few seconds); the jobs moved, by worker. A worker gone for :data:`FORGET_AFTER_S` whose queue is
    empty is forgotten."""
    now = time.time() if now is None else now
    alive = set(live_worker_ids(r, queue))
    out = {}
    for w in sorted(_text(m) for m in r.smembers(direct_key(queue))):
        if w in alive:
            continue
        out[w] = moved = hand_back(r, queue, w)
        if moved:
            log.warning("worker %s is gone: %d job(s) of its queue handed back to %s", w, moved, queue)
        r.set(gone_key(w), now, nx=True, ex=24 * 3600)
        since = float(r.get(gone_key(w)) or now)
        if now - since >= FORGET_AFTER_S and not moved:
            pipe = r.pipeline(transaction=False)
            pipe.srem(direct_key(queue), w)
            pipe.delete(warm_key(w), routed_key(w), gone_key(w))
            pipe.execute()
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
