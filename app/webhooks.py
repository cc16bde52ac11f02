"""Webhooks (docs/API.md "Webhooks"): when a task with a CallbackUrl ends (Finished, Error, Canceled), its
TaskDetail (what ListTasksDetails answers for it, result links signed with the owner's PrivateKey) is POSTed
there, signed per Standard Webhooks with the owner key's WebhookSecret (the ``standardwebhooks`` library).

Delivery runs in the gateway (a loop of app/background.py), never in a worker. Its state is all in Redis, so a
restart of any process loses nothing:

- the task record's ``callback_url`` (set when the task is created);
- ``atelier:webhooks`` (:data:`~app.contract.taskstore.WEBHOOKS`), TaskUID -> when the next attempt is due: the
  script that ends a task adds it in the same atomic step (``_FINISH`` in app/contract/taskstore.py);
- the record's ``webhook_attempts``, ``webhook_first_at`` (the first attempt's time) and ``webhook_claim``.

A gateway takes one due delivery at a time (:meth:`Deliverer.claim`, atomic): its due time moves
:func:`claim_lease_s` ahead, so no other gateway takes it meanwhile, and one whose gateway died mid-attempt is
tried again after that. Then it POSTs (no redirects followed, ``ATELIER_WEBHOOK_TIMEOUT_S``) to the address it
just checked (a name is resolved once per attempt and the connection pinned to the checked address, so DNS
cannot swap in a private one between the check and the connection). A 2xx answer ends the delivery; anything
else (another status, no answer, a refused address, an unknown key) schedules the next attempt after
:func:`backoff_s` (5 s, 10 s, 20 s ... at most 30 min), and at the latest ``ATELIER_WEBHOOK_RETRY_FOR_S`` after
the first attempt, which is the last. Every attempt of a delivery carries the same ``webhook-id``
(:func:`webhook_id`); the ``webhook-timestamp`` and signature are those of the attempt.
"""
from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from prometheus_client import Counter
from standardwebhooks import Webhook

from app.actions.base import SignedCall
from app.actions.tasks import task_detail
from app.contract.taskstore import WEBHOOKS, TaskRecord, task_key
from app.services import Services
from app.validation.generate import host_addresses, private_address

log = logging.getLogger("atelier.gateway.webhooks")

FIRST_RETRY_S = 5.0      # the wait after the first failed attempt; doubled after each further one ...
MAX_RETRY_S = 1800.0     # ... up to this
OUTCOMES = ("delivered", "failed", "given_up")  # failed: this attempt failed, another is scheduled
DELIVERIES = Counter("atelier_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"])
for _outcome in OUTCOMES:
    DELIVERIES.labels(_outcome)

# KEYS: webhooks. ARGV: now, lease until, task key prefix, claim token.
# -> nil (nothing due) | {uid, 0, 0} (its record expired: dropped) | {uid, attempt number, first attempt's time}
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
local uid = due[1]
local task = ARGV[3] .. uid
if redis.call('EXISTS', task) == 0 then redis.call('ZREM', KEYS[1], uid) return {uid, 0, '0'} end
redis.call('ZADD', KEYS[1], ARGV[2], uid)
redis.call('HSETNX', task, 'webhook_first_at', ARGV[1])
local attempt = redis.call('HINCRBY', task, 'webhook_attempts', 1)
redis.call('HSET', task, 'webhook_claim', ARGV[4])
return {uid, attempt, redis.call('HGET', task, 'webhook_first_at')}
"""

# KEYS: webhooks, task. ARGV: uid, claim token, next attempt's time ('' = no further attempt).
# -> 1, or 0 when the claim is no longer this one (its lease ran out and another gateway took it)
_SETTLE = """
if redis.call('HGET', KEYS[2], 'webhook_claim') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], 'webhook_claim')
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""


def webhook_id(rec: TaskRecord) -> str:
    """The ``webhook-id`` of a task's delivery: the same on every attempt (a task ends once)."""
    return f"{rec.uid}-{rec.status.value}"


def backoff_s(attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1, 2, ...): 5 s, 10 s, 20 s ... at most 30 min."""
    return min(FIRST_RETRY_S * 2 ** min(attempt - 1, 30), MAX_RETRY_S)


def claim_lease_s(timeout_s: float) -> float:
    """How long a claimed attempt is left to its gateway: past it, the attempt is taken as lost and made again."""
    return 60.0 + 4 * timeout_s


class Undeliverable(Exception):
    """An attempt that could not be made (the message says why); it counts as a failed attempt."""


@dataclass(frozen=True)
class Claim:
    uid: str
    attempt: int        # 1 for the first attempt; 0: the task record expired, the delivery was dropped
    first_at: float     # when the first attempt was made
    token: str          # this claim's, so that only it settles the attempt


@dataclass(frozen=True)
class Attempt:
    """What one attempt did (for the log, the metrics and the tests)."""

    uid: str
    attempt: int
    outcome: str                # one of OUTCOMES
    next_at: float | None       # when the next attempt is due (outcome "failed")
    status_code: int | None     # the receiver's answer, if any
    reason: str = ""            # why it failed


class Deliverer:
    """Delivers due webhooks; several may run at once, in one gateway or several. ``clock`` gives the time
    that schedules the attempts (the tests move it); the ``webhook-timestamp`` header is always the real time."""

    def __init__(self, svc: Services, clock: Callable[[], float] = time.time):
        self.svc, self.clock = svc, clock
        r = svc.tasks.r
        self._claim, self._settle = r.register_script(_CLAIM), r.register_script(_SETTLE)
        # No connection is kept: each attempt connects to the address it checked (trust_env=False: no proxy).
        self.http = httpx.Client(follow_redirects=False, trust_env=False,
                                 limits=httpx.Limits(max_keepalive_connections=0))

    def run_once(self, limit: int = 100) -> list[Attempt]:
        """Make every due attempt (at most ``limit``), one claim at a time."""
        done = []
        for _ in range(limit):
            claim = self.claim()
            if claim is None:
                break
            done.append(self.attempt(claim))
        return done

    def claim(self) -> Claim | None:
        """Take the earliest due delivery, if any, for :func:`claim_lease_s`."""
        now, token = self.clock(), secrets.token_hex(8)
        lease_until = now + claim_lease_s(self.svc.settings.webhook_timeout_s)
        got = self._claim(keys=[WEBHOOKS], args=[now, lease_until, task_key(""), token])
        if got is None:
            return None
        uid, attempt, first_at = got
        return Claim(str(uid), int(attempt), float(first_at), token)

    def attempt(self, claim: Claim) -> Attempt:
        """Make one attempt of a claimed delivery and settle it: done, or the next attempt scheduled, or given up."""
        if claim.attempt == 0:
            log.error("webhook of task %s given up: the task record expired before it was delivered", claim.uid)
            return self._count(Attempt(claim.uid, 0, "given_up", None, None, "the task record expired"))
        status_code, reason = None, ""
        try:
            status_code = self._post(claim.uid)
            if not 200 <= status_code < 300:
                reason = f"the receiver answered HTTP {status_code}"
        except Undeliverable as e:
            reason = str(e)
        except Exception as e:  # httpx.HTTPError mostly; whatever it is, the attempt failed and is settled as such
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        now = self.clock()
        if not reason:
            self._settle_claim(claim, None)
            log.info("webhook of task %s delivered (attempt %d, HTTP %d)", claim.uid, claim.attempt, status_code)
            return self._count(Attempt(claim.uid, claim.attempt, "delivered", None, status_code))
        deadline = claim.first_at + self.svc.settings.webhook_retry_for_s
        if now >= deadline:
            self._settle_claim(claim, None)
            log.error("webhook of task %s given up after %d attempts over %.0f s: %s", claim.uid, claim.attempt,
                      now - claim.first_at, reason)
            return self._count(Attempt(claim.uid, claim.attempt, "given_up", None, status_code, reason))
        next_at = min(now + backoff_s(claim.attempt), deadline)
        self._settle_claim(claim, next_at)
        log.warning("webhook of task %s: attempt %d failed (%s); next in %.0f s", claim.uid, claim.attempt, reason,
                    next_at - now)
        return self._count(Attempt(claim.uid, claim.attempt, "failed", next_at, status_code, reason))

    def _post(self, uid: str) -> int:
        """POST the task's signed TaskDetail to its CallbackUrl; the receiver's status code."""
        svc = self.svc
        rec = svc.tasks.get(uid)
        if rec is None or not rec.callback_url:
            raise Undeliverable("the task record has no CallbackUrl")
        pair = svc.keys.pair(rec.owner)
        if pair is None or not pair.webhook_secret:
            raise Undeliverable(f"the key {rec.owner} is not in the key file or has no WebhookSecret")
        detail = task_detail(rec, SignedCall(rec.action, rec.owner, pair.private_key, {}), svc)
        body = orjson.dumps(detail)
        msg_id, sent_at = webhook_id(rec), datetime.now(UTC)
        headers = {"content-type": "application/json", "user-agent": "Atelier-Webhooks",
                   "webhook-id": msg_id, "webhook-timestamp": str(int(sent_at.timestamp())),
                   "webhook-signature": Webhook(pair.webhook_secret).sign(msg_id, sent_at, body.decode())}
        parts = urlsplit(rec.callback_url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = host_addresses(host, port)
        except (OSError, UnicodeError) as e:
            raise Undeliverable(f"{host} does not resolve ({e})") from None
        bad = private_address(addresses)
        if bad and not svc.settings.webhook_allow_private:
            raise Undeliverable(f"{bad} (the address of {host}) is private, loopback or link-local"
                                " (ATELIER_WEBHOOK_ALLOW_PRIVATE is not set)")
        for i, ip in enumerate(addresses):  # the first that accepts a connection
            pinned = urlunsplit(parts._replace(netloc=f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"))
            try:
                return self.http.post(pinned, content=body, headers={**headers, "host": parts.netloc},
                                      extensions={"sni_hostname": host},
                                      timeout=svc.settings.webhook_timeout_s).status_code
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
        raise Undeliverable(f"{host} has no address")

    def _settle_claim(self, claim: Claim, next_at: float | None) -> None:
        """End the delivery (``next_at`` None) or schedule its next attempt, if the claim is still this one."""
        next_arg = "" if next_at is None else next_at
        self._settle(keys=[WEBHOOKS, task_key(claim.uid)], args=[claim.uid, claim.token, next_arg])

    @staticmethod
    def _count(attempt: Attempt) -> Attempt:
        DELIVERIES.labels(attempt.outcome).inc()
        return attempt
