"""Task records in Redis: creation (idempotent per key + request_uuid), status transitions, progress.

Keys (prefix ``atelier:``):
- ``task:{uid}``            hash: the task record (owner, status, seed, images, error, progress ...)
- ``idem:{owner}:{ruuid}``  string: the TaskUID a (PublicKey, request_uuid) pair already created
- ``active:{owner}``        set: the owner's Queuing/Running TaskUIDs (ListRunningTasks, limits)

Records expire ``result_retention_s`` after they finish (and, as a safety net, 7 retention periods
after creation if a task never ends).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from app.contract.codes import ErrorCode
from app.contract.jobs import ACTIVE_STATUSES, TaskStatus
from app.contract.limits import DEFAULT_POINTS

P = "atelier:"
_B32 = "0123456789abcdefghijklmnopqrstuv"


def new_task_uid() -> str:
    """21 lower-case characters, like PICPIK's TaskUIDs (105 random bits)."""
    n = secrets.randbits(105)
    return "".join(_B32[(n >> (5 * i)) & 31] for i in range(21))


def task_key(uid: str) -> str:
    return f"{P}task:{uid}"


def active_key(owner: str) -> str:
    return f"{P}active:{owner}"


# Atomically: return the TaskUID already created for (owner, request_uuid) (KEYS[3], when given);
# else refuse when the owner has too many active tasks; else create the record, the idempotency key
# and the active entry. KEYS: task, active set[, idempotency]. ARGV: uid, retention, limit,
# record TTL, field, value, ...
_CREATE = """
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {existing, 0} end
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[2]) >= limit then return {'', -1} end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return {ARGV[1], 1}
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
    error_code: int = 0
    error_message: str = ""
    step: int = 0
    total_steps: int = 0
    notes: list[str] = field(default_factory=list)
    points: int = DEFAULT_POINTS
    created_at: float = 0.0
    finished_at: float = 0.0

    @classmethod
    def from_hash(cls, uid: str, h: dict[str, str]) -> TaskRecord:
        return cls(
            uid=uid, owner=h["owner"], action=h.get("action", ""), status=TaskStatus(h["status"]),
            seed=int(h.get("seed", -1)), images=orjson.loads(h.get("images", "[]")),
            error_code=int(h.get("error_code", 0)), error_message=h.get("error_message", ""),
            step=int(h.get("step", 0)), total_steps=int(h.get("total_steps", 0)),
            notes=orjson.loads(h.get("notes", "[]")), points=int(h.get("points", DEFAULT_POINTS)),
            created_at=float(h.get("created_at", 0)), finished_at=float(h.get("finished_at", 0)),
        )

    @property
    def consumed_points(self) -> int:
        """ConsumeApiPoint: the images the task made times its model's points."""
        return len(self.images) * self.points

    @property
    def progress(self) -> int:
        if self.status == TaskStatus.FINISHED:
            return 100
        return int(100 * self.step / self.total_steps) if self.total_steps else 0


class TaskStore:
    def __init__(self, r: redis.Redis, retention_s: int):
        self.r = r
        self.retention_s = retention_s
        self._create = r.register_script(_CREATE)

    # -- gateway side ---------------------------------------------------------------------------
    def create(self, owner: str, request_uuid: str | None, action: str, seed: int,
               max_active: int, *, notes: list[str] | tuple[str, ...] = (),
               points: int = DEFAULT_POINTS) -> tuple[str, bool]:
        """Create a Queuing task; returns (TaskUID, created). A repeated (owner, request_uuid)
        returns the first TaskUID and created=False. Raises TooManyActiveTasks. ``notes`` start the
        task's Notes; ``points`` is what each image it makes costs (ConsumeApiPoint)."""
        uid = new_task_uid()
        keys = [task_key(uid), active_key(owner)] + ([f"{P}idem:{owner}:{request_uuid}"] if request_uuid else [])
        fields: dict[str, Any] = {"owner": owner, "action": action, "status": TaskStatus.QUEUING.value,
                                  "seed": seed, "created_at": time.time(), "request_uuid": request_uuid or "",
                                  "notes": orjson.dumps(list(notes)), "points": int(points)}
        argv = [uid, self.retention_s, max_active, 7 * self.retention_s]
        for k, v in fields.items():
            argv += [k, v]
        got, flag = self._create(keys=keys, args=argv)
        if int(flag) == -1:
            raise TooManyActiveTasks()
        return got, int(flag) == 1

    def discard(self, uid: str, owner: str, request_uuid: str | None) -> None:
        """Undo a create whose job could not be enqueued, so that a retry starts afresh."""
        pipe = self.r.pipeline()
        pipe.delete(task_key(uid))
        pipe.srem(active_key(owner), uid)
        if request_uuid:
            pipe.delete(f"{P}idem:{owner}:{request_uuid}")
        pipe.execute()

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
    def mark_running(self, uid: str, total_steps: int) -> None:
        self.r.hset(task_key(uid), mapping={"status": TaskStatus.RUNNING.value, "step": 0,
                                            "total_steps": total_steps, "started_at": time.time()})

    def set_progress(self, uid: str, step: int, total_steps: int) -> None:
        self.r.hset(task_key(uid), mapping={"step": step, "total_steps": total_steps})

    def add_note(self, uid: str, note: str) -> None:
        rec = self.get(uid)
        if rec is not None and note not in rec.notes:
            self.r.hset(task_key(uid), "notes", orjson.dumps(rec.notes + [note]))

    def _finish(self, uid: str, mapping: dict[str, Any]) -> None:
        owner = self.r.hget(task_key(uid), "owner")
        pipe = self.r.pipeline()
        pipe.hset(task_key(uid), mapping={**mapping, "finished_at": time.time()})
        pipe.expire(task_key(uid), self.retention_s)
        if owner:
            pipe.srem(active_key(owner), uid)
        pipe.execute()

    def mark_finished(self, uid: str, images: list[str], seed: int) -> None:
        self._finish(uid, {"status": TaskStatus.FINISHED.value, "images": orjson.dumps(images),
                           "seed": seed, "error_code": int(ErrorCode.NONE), "error_message": ""})

    def mark_error(self, uid: str, code: int, message: str) -> None:
        self._finish(uid, {"status": TaskStatus.ERROR.value, "error_code": int(code), "error_message": message})
