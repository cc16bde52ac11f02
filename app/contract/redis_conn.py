"""The one Redis connection of a process (task store + idempotency); Celery has its own."""
from __future__ import annotations

from functools import lru_cache

import redis

from app.contract.settings import get_settings


def broker_url() -> str:
    url = get_settings().redis_url
    if not url:
        raise RuntimeError("ATELIER_REDIS_URL is not set (make run sets it for the embedded Redis)")
    return url


def celery_url(url: str | None = None) -> str:
    """kombu spells a unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    url = url or broker_url()
    return "redis+socket://" + url[len("unix://"):] if url.startswith("unix://") else url


def connect(url: str) -> redis.Redis:
    """A client of the task store at ``url`` (``redis://`` or ``unix://``), as every process uses it."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                                health_check_interval=30)


@lru_cache
def get_redis() -> redis.Redis:
    """The gateway's connection, from the settings."""
    return connect(broker_url())
