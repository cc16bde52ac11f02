"""Persona records in Redis: a key's saved reference images (docs/API.md "Personas"), shared by the gateway (the
persona actions, the check of a unit's PersonaCode) and the workers (a persona unit's images).

Keys (prefix ``atelier:``), none with a TTL (a persona lives until DeletePersona):
- ``persona:{code}``     hash: ``owner`` (the PublicKey), ``name``, ``images`` (JSON list of content hashes, in
                         CreatePersona's order), ``created_at`` (Unix seconds)
- ``personas:{owner}``   sorted set: the owner's PersonaCodes by creation time (ListPersonas' order, the limit)

The images themselves are in storage (``app/contract/storage.py`` ``PERSONAS``, grouped by PersonaCode), with the
embeddings the workers computed of them. :meth:`PersonaStore.owned` is the one owner check: another key's
PersonaCode is as absent as an unknown one.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import orjson
import redis

P = "atelier:"
_B32 = "0123456789abcdefghijklmnopqrstuv"

# KEYS[1] persona:{code}, KEYS[2] personas:{owner}; ARGV: code, owner, name, images JSON, created_at, max, order
# (the creation time to the microsecond: ListPersonas' order, also within one second).
# Returns 1 when created, 0 when the owner already has ``max`` personas.
_CREATE = """
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'name', ARGV[3], 'images', ARGV[4], 'created_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return 1
"""


def new_persona_code() -> str:
    """``p`` and 21 lower-case base-32 characters (105 random bits): limits.PERSONA_CODE_PATTERN."""
    n = secrets.randbits(105)
    return "p" + "".join(_B32[(n >> (5 * i)) & 31] for i in range(21))


def persona_key(code: str) -> str:
    return f"{P}persona:{code}"


def owner_key(owner: str) -> str:
    return f"{P}personas:{owner}"


class TooManyPersonas(Exception):
    """The owner already keeps as many personas as the deployment allows."""


@dataclass(frozen=True)
class PersonaRecord:
    code: str
    owner: str
    name: str
    images: list[str]      # content hashes, the persona's objects in storage
    created_at: int

    def to_wire(self) -> dict:
        """ListPersonas' entry: ``{PersonaCode, Name, ImageCount, CreatedAt}`` (CreatedAt: Unix seconds)."""
        return {"PersonaCode": self.code, "Name": self.name, "ImageCount": len(self.images),
                "CreatedAt": self.created_at}


class PersonaStore:
    def __init__(self, r: redis.Redis):
        self.r = r
        self._create = r.register_script(_CREATE)

    def create(self, owner: str, name: str, images: list[str], max_personas: int, code: str | None = None,
               now: float | None = None) -> PersonaRecord:
        """Record a persona whose images are stored; :class:`TooManyPersonas` when ``owner`` keeps ``max_personas``
        already (checked and added in one atomic step)."""
        code = code or new_persona_code()
        at = time.time() if now is None else now
        created = int(at)
        ok = self._create(keys=[persona_key(code), owner_key(owner)],
                          args=[code, owner, name, orjson.dumps(images), created, max_personas, repr(at)])
        if not ok:
            raise TooManyPersonas(owner)
        return PersonaRecord(code, owner, name, list(images), created)

    def get(self, code: str) -> PersonaRecord | None:
        """The persona ``code`` whoever owns it (a worker's read: the gateway checked the owner), or None."""
        h = self.r.hgetall(persona_key(code)) if isinstance(code, str) and code else {}
        if not h:
            return None
        h = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
             for k, v in h.items()}
        return PersonaRecord(code, h["owner"], h["name"], orjson.loads(h["images"]), int(h["created_at"]))

    def owned(self, owner: str, code: str) -> PersonaRecord | None:
        """The persona ``code`` if ``owner`` owns it; None for an unknown code and for another key's."""
        rec = self.get(code)
        return rec if rec is not None and rec.owner == owner else None

    def list(self, owner: str) -> list[PersonaRecord]:
        """The owner's personas, oldest first."""
        codes = [c.decode() if isinstance(c, bytes) else c for c in self.r.zrange(owner_key(owner), 0, -1)]
        return [rec for rec in map(self.get, codes) if rec is not None]

    def count(self, owner: str) -> int:
        return int(self.r.zcard(owner_key(owner)))

    def delete(self, owner: str, code: str) -> bool:
        """Remove the record of ``owner``'s persona ``code``; False when it is not theirs (or unknown)."""
        if self.owned(owner, code) is None:
            return False
        pipe = self.r.pipeline()
        pipe.delete(persona_key(code))
        pipe.zrem(owner_key(owner), code)
        pipe.execute()
        return True
