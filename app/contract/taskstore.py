"""Task records in Redis: creation (idempotent per key + request_uuid), status transitions, progress.

Keys (prefix ``atelier:``):
- ``task:{uid}``            hash: the task record (owner, status, seed, images, error, progress ...)
- ``idem:{owner}:{ruuid}``  string: the TaskUID a (PublicKey, request_uuid) pair already created
- ``active:{owner}``        set: the owner's Queuing/Running TaskUIDs (ListRunningTasks, limits)
- ``leases``                sorted set: TaskUID -> the time by which someone must act on it: the lease of the
                            worker running it (renewed while it runs), or, for a task put back in the queue
                            after its worker died, the time by which a worker must have started it
- ``webhooks``              sorted set: TaskUID -> when the next delivery attempt of its webhook is due; added
                            by the script that ends a task whose record has a ``callback_url``, in the same
                            atomic step (app/webhooks.py delivers, claims and reschedules)

Records expire ``result_retention_s`` after they finish (and, as a safety net, 7 retention periods
after creation if a task never ends).

**Leases** (how a task whose worker died runs again, and never twice at once): a worker starts a task with
:meth:`TaskStore.start`, which refuses it when another worker holds an unexpired lease on it, and renews the
lease while the job runs (:meth:`TaskStore.renew`, every fraction of a second from a thread beside the job).
:meth:`TaskStore.reap` (run by the gateway every few seconds) finds leases that expired, counts a death for
each, and puts the task back in the queue (the caller sends its job message again), or ends it in Error after
``max_deaths``. Only the worker holding the lease can end the task (:meth:`TaskStore.mark_finished` with
``worker=``): a run that was given up for dead cannot overwrite the run that replaced it.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from app.contract.codes import ErrorCode
from app.contract.jobs import ACTIVE_STATUSES, ENDED_STATUSES, TaskStatus
from app.contract.limits import DEFAULT_POINTS, DEFAULT_PRIORITY

P = "atelier:"
log = logging.getLogger("atelier.taskstore")
_B32 = "0123456789abcdefghijklmnopqrstuv"


def new_task_uid() -> str:
    """21 lower-case characters, like PICPIK's TaskUIDs (105 random bits)."""
    n = secrets.randbits(105)
    return "".join(_B32[(n >> (5 * i)) & 31] for i in range(21))


def task_key(uid: str) -> str:
    return f"{P}task:{uid}"


def active_key(owner: str) -> str:
    return f"{P}active:{owner}"


LEASES = f"{P}leases"
#: A new task whose job message was not sent within this many leases (its gateway died between creating the task
#: and sending it) is sent by the reaper (``TaskStore.create``'s ``send_within_s``; docs/deployment.md "Recovery").
SEND_GRACE_LEASES = 2
WEBHOOKS = f"{P}webhooks"
ENDED = tuple(s.value for s in ENDED_STATUSES)


# Atomically: return the TaskUID already created for (owner, request_uuid) (KEYS[4], when given);
# else refuse when the owner has too many active tasks; else create the record, the idempotency key,
# the active entry and (a send deadline > 0) the deadline by which its job message must have been sent, in the
# leases' set (the reaper sends a task still unsent then: its gateway died between the two).
# KEYS: task, active set, leases[, idempotency]. ARGV: uid, retention, limit, record TTL, send deadline, field,
# value, ...
_CREATE = """
if KEYS[4] then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {existing, 0} end
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[2]) >= limit then return {'', -1} end
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
if tonumber(ARGV[5]) > 0 then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1]) end
return {ARGV[1], 1}
"""

# KEYS: task, leases. ARGV: uid. A task whose job message was sent leaves the leases' set, unless a worker already
# started it (its lease is there now) or the reaper already acted on it.
_SENT = """
if redis.call('HGET', KEYS[1], 'status') == 'Queuing' and not redis.call('HGET', KEYS[1], 'lease_until') then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""


_ENDED_LUA = "{" + ", ".join(f"['{s}'] = true" for s in ENDED) + "}"

# KEYS: task, leases. ARGV: worker, now, lease deadline, total steps, uid, max deaths.
# -> {'started', attempt} | {'ended', 0} | {'busy', 0} | {'missing', 0} | {'poison', deaths}
# Taking over a Running task whose lease expired (a leftover copy of its message arrived before the recovery
# did) counts the previous worker's death, as the recovery would have.
_START = f"""
local ended = {_ENDED_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{'missing', 0}} end
if ended[status] then return {{'ended', 0}} end
if status == 'Running' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > tonumber(ARGV[2]) then return {{'busy', 0}} end
  local deaths = redis.call('HINCRBY', KEYS[1], 'deaths', 1)
  if deaths >= tonumber(ARGV[6]) then return {{'poison', deaths}} end
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'Running', 'worker', ARGV[1], 'lease_until', ARGV[3], 'started_at', ARGV[2],
           'step', 0, 'total_steps', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return {{'started', attempt}}
"""

# KEYS: task. ARGV: the note as a JSON string, as orjson writes it in the compact list the task's notes are.
# -> 1 when added; 0 when the task is gone or has that note already. One round trip, and no read of the whole
# record (which holds the job message) on a worker's path between two jobs.
_ADD_NOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local notes = redis.call('HGET', KEYS[1], 'notes') or '[]'
local n = ARGV[1]
for _, before in ipairs({'[', ','}) do
  for _, after in ipairs({',', ']'}) do
    if string.find(notes, before .. n .. after, 1, true) then return 0 end
  end
end
if notes == '[]' then notes = '[' .. n .. ']' else notes = string.sub(notes, 1, -2) .. ',' .. n .. ']' end
redis.call('HSET', KEYS[1], 'notes', notes)
return 1
"""

# KEYS: task, leases. ARGV: worker, lease deadline, uid. -> 'run' | 'cancel' | 'lost' (no longer ours)
_RENEW = """
if redis.call('HGET', KEYS[1], 'status') ~= 'Running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then
  return 'lost'
end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 'cancel' end
return 'run'
"""

# KEYS: task, leases, webhooks. ARGV: worker ('' = anyone), retention, active-set prefix, uid, expected status
# ('' = any active one), now, field, value, ... -> 1 when it ended the task, 0 when it had ended already, another
# worker holds it, or its status is not the expected one. A task with a callback_url gets its webhook delivery
# due now, in this same step: no crash can end the task and lose the delivery.
_FINISH = f"""
local ended = {_ENDED_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or ended[status] then return 0 end
if ARGV[5] ~= '' and status ~= ARGV[5] then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('SREM', ARGV[3] .. owner, ARGV[4]) end
redis.call('ZREM', KEYS[2], ARGV[4])
if (redis.call('HGET', KEYS[1], 'callback_url') or '') ~= '' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4]) end
return 1
"""

# KEYS: task, leases. ARGV: uid, now, max deaths, requeue grace.
# -> {'gone'} | {'alive'} | {'requeue', deaths} (a Running task's worker died) | {'poison', deaths} |
#    {'resend', deaths} (a task sent again was not started within the grace: its message may be lost)
_REAP = f"""
local ended = {_ENDED_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or ended[status] then redis.call('ZREM', KEYS[2], ARGV[1]) return {{'gone', 0}} end
local now = tonumber(ARGV[2])
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if lease > now then redis.call('ZADD', KEYS[2], lease, ARGV[1]) return {{'alive', 0}} end
local deaths = tonumber(redis.call('HGET', KEYS[1], 'deaths') or '0')
if status == 'Running' then
  deaths = redis.call('HINCRBY', KEYS[1], 'deaths', 1)
  if deaths >= tonumber(ARGV[3]) then redis.call('ZREM', KEYS[2], ARGV[1]) return {{'poison', deaths}} end
end
redis.call('HSET', KEYS[1], 'status', 'Queuing', 'worker', '', 'step', 0, 'lease_until', now + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
if status == 'Running' then return {{'requeue', deaths}} end
return {{'resend', deaths}}
"""

# KEYS: task. -> its status; a Running task is flagged for cancellation
_FLAG_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'Running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return status or ''
"""


class TooManyActiveTasks(Exception):
    pass


@dataclass
class TaskRecord:
    uid: str
    owner: str
    action: str
    status: TaskStatus
    seed: int = -1
    images: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # text results (DescribeImages: one per image), TxtList
    error_code: int = 0
    error_message: str = ""
    step: int = 0
    total_steps: int = 0
    notes: list[str] = field(default_factory=list)
    points: int = DEFAULT_POINTS
    attempt: int = 0
    deaths: int = 0
    worker: str = ""
    job: dict[str, Any] | None = None
    queue: str = ""
    priority: int = DEFAULT_PRIORITY  # the Priority it was queued at (the recovery sends it again at the same)
    clothes_mask: str = ""        # the result name of a clothes mask the worker made itself
    results_per_image: int = 1    # result files per image paid for (a cut-out and its mask: 2)
    created_at: float = 0.0
    started_at: float = 0.0  # when a worker took it (its latest attempt)
    finished_at: float = 0.0
    pipeline_s: float = 0.0  # a Finished generation: seconds inside the pipeline's calls (mark_finished)
    callback_url: str = ""  # where its TaskDetail is POSTed when it ends ("": nowhere; app/webhooks.py)

    @classmethod
    def from_hash(cls, uid: str, h: dict[str, str]) -> TaskRecord:
        return cls(
            uid=uid, owner=h["owner"], action=h.get("action", ""), status=TaskStatus(h["status"]),
            seed=int(h.get("seed", -1)), images=orjson.loads(h.get("images", "[]")),
            texts=orjson.loads(h.get("texts", "[]")),
            error_code=int(h.get("error_code", 0)), error_message=h.get("error_message", ""),
            step=int(h.get("step", 0)), total_steps=int(h.get("total_steps", 0)),
            notes=orjson.loads(h.get("notes", "[]")), points=int(h.get("points", DEFAULT_POINTS)),
            created_at=float(h.get("created_at", 0)), started_at=float(h.get("started_at", 0)),
            finished_at=float(h.get("finished_at", 0)), pipeline_s=float(h.get("pipeline_s", 0)),
            attempt=int(h.get("attempt", 0)), deaths=int(h.get("deaths", 0)), worker=h.get("worker", ""),
            job=orjson.loads(h["job"]) if h.get("job") else None, queue=h.get("queue", ""),
            priority=int(h.get("priority", DEFAULT_PRIORITY)),
            clothes_mask=h.get("clothes_mask", ""), results_per_image=int(h.get("results_per_image", 1)),
            callback_url=h.get("callback_url", ""),
        )

    @property
    def consumed_points(self) -> int:
        """ConsumeApiPoint: the images the task made (a mask task's cut-out and mask count as one) and the texts
        (one per described image) times its model's points."""
        return (len(self.images) // max(1, self.results_per_image) + len(self.texts)) * self.points

    @property
    def progress(self) -> int:
        if self.status == TaskStatus.FINISHED:
            return 100
        return int(100 * self.step / self.total_steps) if self.total_steps else 0


class TaskStore:
    def __init__(self, r: redis.Redis, retention_s: int, *, wait_replicas: int = 0, wait_timeout_ms: int = 1000):
        """``wait_replicas``: a task's start and its end return once that many replicas hold them (Redis WAIT,
        ``ATELIER_REDIS_WAIT_REPLICAS``; docs/deployment.md "Redis high availability"), or ``wait_timeout_ms``."""
        self.r = r
        self.retention_s = retention_s
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._create = r.register_script(_CREATE)
        self._sent = r.register_script(_SENT)
        self._start = r.register_script(_START)
        self._renew = r.register_script(_RENEW)
        self._add_note = r.register_script(_ADD_NOTE)
        self._finish_script = r.register_script(_FINISH)
        self._reap = r.register_script(_REAP)
        self._flag_cancel = r.register_script(_FLAG_CANCEL)

    # -- gateway side ---------------------------------------------------------------------------
    def create(self, owner: str, request_uuid: str | None, action: str, seed: int,
               max_active: int, *, notes: list[str] | tuple[str, ...] = (),
               points: int = DEFAULT_POINTS, uid: str | None = None,
               job: dict[str, Any] | None = None, callback_url: str | None = None,
               queue: str = "", results_per_image: int = 1, priority: int = DEFAULT_PRIORITY,
               send_within_s: float = 0.0) -> tuple[str, bool]:
        """Create a Queuing task; returns (TaskUID, created). A repeated (owner, request_uuid)
        returns the first TaskUID and created=False. Raises TooManyActiveTasks. ``notes`` start the
        task's Notes; ``points`` is what each image it makes costs (ConsumeApiPoint); ``job`` the job message,
        kept with the task so that the recovery can send it again (its ``task_uid`` must be ``uid``) to
        ``queue``, the Celery queue it was sent to, at ``priority`` (the request's Priority, as capped);
        ``callback_url`` where its webhook goes when it ends; ``results_per_image``: result files per image
        paid for. ``send_within_s`` > 0 (with ``job``): unless :meth:`sent` says its job message was sent within that
        many seconds, the reaper sends it (the gateway that created it died before it could)."""
        uid = uid or new_task_uid()
        idem = [f"{P}idem:{owner}:{request_uuid}"] if request_uuid else []
        keys = [task_key(uid), active_key(owner), LEASES, *idem]
        fields: dict[str, Any] = {"owner": owner, "action": action, "status": TaskStatus.QUEUING.value,
                                  "seed": seed, "created_at": time.time(), "request_uuid": request_uuid or "",
                                  "notes": orjson.dumps(list(notes)), "points": int(points)}
        if job is not None:
            fields["job"] = orjson.dumps(job)
            fields["queue"] = queue
            fields["priority"] = int(priority)
        if callback_url:
            fields["callback_url"] = callback_url
        if results_per_image != 1:
            fields["results_per_image"] = int(results_per_image)
        now = time.time()
        deadline = now + send_within_s if job is not None and send_within_s > 0 else 0
        argv = [uid, self.retention_s, max_active, 7 * self.retention_s, deadline]
        for k, v in fields.items():
            argv += [k, v]
        got, flag = self._create(keys=keys, args=argv)
        if int(flag) == -1:
            raise TooManyActiveTasks()
        return got, int(flag) == 1

    def sent(self, uid: str) -> None:
        """The task's job message was sent: the reaper need not send it (:meth:`create`'s ``send_within_s``)."""
        self._sent(keys=[task_key(uid), LEASES], args=[uid])

    def discard(self, uid: str, owner: str, request_uuid: str | None) -> None:
        """Undo a create whose job could not be enqueued, so that a retry starts afresh."""
        pipe = self.r.pipeline()
        pipe.delete(task_key(uid))
        pipe.srem(active_key(owner), uid)
        pipe.zrem(LEASES, uid)
        if request_uuid:
            pipe.delete(f"{P}idem:{owner}:{request_uuid}")
        pipe.execute()

    def wait_replicated(self, uid: str, replicas: int, timeout_ms: int) -> int:
        """Redis WAIT: how many replicas hold everything written so far, the task and its job message included
        (at most ``replicas``; fewer after ``timeout_ms``). WAIT covers the writes of the connection it is sent on,
        up to the replication offset of that connection's last write: the job message went on Celery's connection,
        so a small write made after it on this one (in a pipeline: the same connection) carries the offset past it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(f"{P}replicated-mark", uid, px=60_000)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return int(pipe.execute()[-1])

    def _replicated(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script``'s result; with ``wait_replicas``, returned once that many replicas hold its write (WAIT on the
        same connection, in one pipeline) or after ``wait_timeout_ms`` (logged). A master that dies before it
        answers raises ConnectionError, and the caller writes again on the new master: a start and an end are
        safe to repeat (a repeated start is the same worker's, a repeated end finds the task ended)."""
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        pipe = self.r.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        result, held = pipe.execute()
        if int(held) < self.wait_replicas:
            log.warning("task %s: %d of %d replicas hold its update after %d ms", keys[0].removeprefix(task_key("")),
                        int(held), self.wait_replicas, self.wait_timeout_ms)
        return result

    def get(self, uid: str) -> TaskRecord | None:
        h = self.r.hgetall(task_key(uid))
        return TaskRecord.from_hash(uid, h) if h else None

    def get_many(self, uids: list[str]) -> list[TaskRecord | None]:
        pipe = self.r.pipeline()
        for uid in uids:
            pipe.hgetall(task_key(uid))
        return [TaskRecord.from_hash(u, h) if h else None for u, h in zip(uids, pipe.execute())]

    def active(self, owner: str) -> list[str]:
        uids = sorted(self.r.smembers(active_key(owner)))
        recs = self.get_many(uids)
        stale = [u for u, rec in zip(uids, recs) if rec is None or rec.status not in ACTIVE_STATUSES]
        if stale:
            self.r.srem(active_key(owner), *stale)
        return [u for u in uids if u not in stale]

    # -- worker side ----------------------------------------------------------------------------
    def start(self, uid: str, worker: str, lease_s: float, total_steps: int,
              max_deaths: int = 1_000_000) -> tuple[str, int]:
        """Take the task for ``worker``: ``("started", attempt)``, or ``("ended", 0)`` (nothing to do),
        ``("busy", 0)`` (another worker holds an unexpired lease on it), ``("missing", 0)`` (expired), or
        ``("poison", deaths)`` (taking over an expired lease was its ``max_deaths``-th death: end it in Error)."""
        now = time.time()
        state, n = self._replicated(self._start, [task_key(uid), LEASES],
                                    [worker, now, now + lease_s, total_steps, uid, max_deaths])
        return str(state), int(n)

    def renew(self, uid: str, worker: str, lease_s: float) -> str:
        """Extend ``worker``'s lease: ``"run"``, ``"cancel"`` (its owner asked to cancel it) or ``"lost"``
        (the lease expired and the task was given to another run: stop without a trace)."""
        return str(self._renew(keys=[task_key(uid), LEASES], args=[worker, time.time() + lease_s, uid]))

    def set_clothes_mask(self, uid: str, name: str) -> None:
        """Record the result name of the clothes mask the worker made for the task (served with its images)."""
        self.r.hset(task_key(uid), "clothes_mask", name)

    def set_progress(self, uid: str, step: int, total_steps: int) -> None:
        self.r.hset(task_key(uid), mapping={"step": step, "total_steps": total_steps})

    def add_note(self, uid: str, note: str) -> None:
        """Add ``note`` to the task's notes (TaskDetail's), unless it has it already or is gone."""
        self._add_note(keys=[task_key(uid)], args=[orjson.dumps(note)])

    def created_at(self, uid: str) -> float | None:
        """When the task was created (its record's ``created_at``), or None when it is gone: one field, not the
        whole record."""
        value = self.r.hget(task_key(uid), "created_at")
        return float(value) if value is not None else None

    def _finish(self, uid: str, mapping: dict[str, Any], worker: str | None, expect: str = "") -> bool:
        now = time.time()
        argv: list[Any] = [worker or "", self.retention_s, f"{P}active:", uid, expect, now]
        for k, v in {**mapping, "finished_at": now}.items():
            argv += [k, v]
        return bool(self._replicated(self._finish_script, [task_key(uid), LEASES, WEBHOOKS], argv))

    def mark_finished(self, uid: str, images: list[str], seed: int | None, worker: str | None = None,
                      pipeline_s: float = 0.0, steps: tuple[int, int] | None = None,
                      texts: list[str] | None = None) -> bool:
        """End the task Finished; with ``worker``, only if that worker holds it. True if it ended it. ``seed``:
        the seed the images were drawn with (None: the task keeps the Seed it was created with).
        ``pipeline_s``: the seconds its worker spent inside the diffusion pipeline's calls (their step callbacks
        excepted), kept for ``make bench``: the task's time minus this is what the service added. ``steps``: its
        last (Step, TotalSteps), written with the mark (the worker does not write its last step's progress).
        ``texts``: its text results (TaskDetail ``TxtList``), kept like its images."""
        mapping = {"status": TaskStatus.FINISHED.value, "images": orjson.dumps(images),
                   "error_code": int(ErrorCode.NONE), "error_message": "", "pipeline_s": pipeline_s}
        if seed is not None:
            mapping["seed"] = seed
        if texts:
            mapping["texts"] = orjson.dumps(texts)
        if steps is not None:
            mapping["step"], mapping["total_steps"] = steps
        return self._finish(uid, mapping, worker)

    def mark_error(self, uid: str, code: int, message: str, worker: str | None = None) -> bool:
        return self._finish(uid, {"status": TaskStatus.ERROR.value, "error_code": int(code),
                                  "error_message": message}, worker)

    def mark_canceled(self, uid: str, worker: str | None = None, expect: str = "") -> bool:
        return self._finish(uid, {"status": TaskStatus.CANCELED.value, "error_code": int(ErrorCode.NONE),
                                  "error_message": ""}, worker, expect)

    # -- recovery and cancellation (gateway side) --------------------------------------------------
    def expired_leases(self, now: float | None = None, limit: int = 100) -> list[str]:
        """TaskUIDs whose lease (or requeue deadline) has passed."""
        return list(self.r.zrangebyscore(LEASES, "-inf", now or time.time(), start=0, num=limit))

    def reap(self, uid: str, max_deaths: int, requeue_grace_s: float) -> tuple[str, int]:
        """Act on one expired lease, atomically (several gateways may reap at once): ``("requeue", deaths)``
        (the task is Queuing again: the caller sends its job message), ``("poison", deaths)`` (its run killed
        ``max_deaths`` workers: the caller ends it in Error), ``("alive", 0)`` (renewed meanwhile) or
        ``("gone", 0)`` (ended)."""
        state, deaths = self._reap(keys=[task_key(uid), LEASES],
                                   args=[uid, time.time(), max_deaths, requeue_grace_s])
        return str(state), int(deaths)

    def cancel(self, uid: str) -> str:
        """Ask to cancel: a Queuing task ends Canceled now; a Running one is flagged (its worker ends it
        Canceled at its next step). Returns the status it had; an ended task is left as it is."""
        if self.mark_canceled(uid, expect=TaskStatus.QUEUING.value):  # atomically: only if still Queuing
            return TaskStatus.QUEUING.value
        return str(self._flag_cancel(keys=[task_key(uid)]))
