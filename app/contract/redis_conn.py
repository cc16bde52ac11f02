"""The one Redis connection of a process (task store, leases, webhooks, metrics) and Celery's broker settings,
both from ``ATELIER_REDIS_URL`` through one parser, :func:`parse_redis_url` (docs/deployment.md "Redis high
availability"). The forms it takes:

- ``redis://[[user]:password@]host:port[/db]``: one Redis server;
- ``rediss://[[user]:password@]host:port[/db]?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem``: the same over TLS
  (``ssl_cert_reqs``: required | optional | none; ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
  ``ssl_check_hostname``: as redis-py and kombu name them);
- ``unix:///path/redis.sock[?db=N]``: a local socket (the embedded Redis of ``make run``);
- ``sentinel://[[user]:password@]host:26379[/db];sentinel://host2:26379;...``: Redis Sentinel, Celery's own form;
  the password (and user) of the first part are the master's, the master's name is
  ``ATELIER_REDIS_SENTINEL_MASTER`` and the sentinels' own password ``ATELIER_REDIS_SENTINEL_PASSWORD``; ``ssl_*``
  query parameters (on any part) put the master, replicas and sentinels behind TLS alike.

redis-py gets a client (``Sentinel(...).master_for(...)`` for Sentinel, which asks the sentinels where the master
is on every new connection); Celery gets kombu's URL, transport options and ``broker_use_ssl``.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from app.contract.settings import get_settings

SENTINEL_DEFAULT_PORT = 26379
#: the query parameters of a TLS connection, as redis-py and kombu both spell them
SSL_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
#: the client options of every process's connection: fail fast (a submission gets 150), check idle connections
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2, "health_check_interval": 30}


@dataclass(frozen=True)
class RedisTarget:
    """Where the Redis of the deployment is, parsed from ``ATELIER_REDIS_URL`` by :func:`parse_redis_url`."""

    url: str = field(repr=False)  # as given (it may hold a password: never log it)
    scheme: str  # redis | rediss | unix | sentinel
    sentinels: tuple[tuple[str, int], ...] = ()  # sentinel only
    master_name: str = ""  # sentinel only
    db: int = 0
    username: str | None = None  # of the master (data nodes)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: dict[str, Any] = field(default_factory=dict)  # the ssl_* query parameters, parsed; {} = no TLS

    @property
    def is_sentinel(self) -> bool:
        return self.scheme == "sentinel"

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client of the (current) master; ``options`` override :data:`CLIENT_OPTIONS`."""
        opts = {**CLIENT_OPTIONS, "decode_responses": True, **options}
        if not self.is_sentinel:
            return redis.Redis.from_url(self.url, **opts)
        tls = {"ssl": True, **self.ssl} if self.ssl else {}
        sentinel_kwargs = {k: v for k, v in opts.items() if k.startswith("socket_")} | tls
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        manager = Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kwargs)
        return manager.master_for(self.master_name, db=self.db, username=self.username, password=self.password,
                                  **tls, **opts)

    def celery_broker(self) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """Celery's ``(broker_url, broker_transport_options, broker_use_ssl)`` for this Redis."""
        if self.scheme == "unix":  # kombu spells a unix socket redis+socket://
            return "redis+socket://" + self.url[len("unix://"):], {}, None
        use_ssl = {k: _CERT_REQS[v] if k == "ssl_cert_reqs" else v for k, v in self.ssl.items()} or None
        if not self.is_sentinel:
            return _without_query(self.url, SSL_PARAMS), {}, use_ssl
        auth = ""
        if self.username or self.password:
            auth = f"{_q(self.username or '')}:{_q(self.password or '')}@"
        url = ";".join(f"sentinel://{auth if i == 0 else ''}{_host(h)}:{p}/{self.db}"
                       for i, (h, p) in enumerate(self.sentinels))
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": CLIENT_OPTIONS["socket_timeout"],
                                           "socket_connect_timeout": CLIENT_OPTIONS["socket_connect_timeout"]}
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        if use_ssl:
            sentinel_kwargs |= {"ssl": True, **use_ssl}
        return url, {"master_name": self.master_name, "sentinel_kwargs": sentinel_kwargs}, use_ssl


def _q(s: str) -> str:
    return quote(s, safe="")


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


def _without_query(url: str, names: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _ssl_options(query: dict[str, str], url_for_errors: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for k in SSL_PARAMS:
        if k not in query:
            continue
        v = query[k]
        if k == "ssl_cert_reqs":
            if v.lower() not in _CERT_REQS:
                raise ValueError(f"{url_for_errors}: ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {v!r}")
            v = v.lower()
        elif k == "ssl_check_hostname":
            v = v.lower() not in ("false", "0", "no")
        opts[k] = v
    return opts


def parse_redis_url(url: str, *, sentinel_master: str = "mymaster", sentinel_password: str | None = None
                    ) -> RedisTarget:
    """The :class:`RedisTarget` of ``url`` (the forms in this module's docstring); ValueError names what is wrong
    (without the password)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    shown = f"ATELIER_REDIS_URL ({scheme}://...)"
    if scheme in ("redis", "rediss", "unix"):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        tls = _ssl_options(query, shown)
        if tls and scheme != "rediss":
            raise ValueError(f"{shown}: ssl_* parameters need a rediss:// URL")
        if scheme == "rediss" and "ssl_cert_reqs" not in tls:
            tls["ssl_cert_reqs"] = "required"  # redis-py's default; said here so that kombu does the same
        db_text = query.get("db") or (parts.path.lstrip("/") if scheme != "unix" else "") or "0"
        if not db_text.isdigit():
            raise ValueError(f"{shown}: the database must be a number, not {db_text!r}")
        return RedisTarget(url=url, scheme=scheme, db=int(db_text), username=unquote(parts.username or "") or None,
                           password=unquote(parts.password or "") or None, ssl=tls)
    if scheme != "sentinel":
        raise ValueError("ATELIER_REDIS_URL must start with redis://, rediss://, unix:// or sentinel://,"
                         f" not {scheme!r}")
    if not sentinel_master:
        raise ValueError("a sentinel:// ATELIER_REDIS_URL needs ATELIER_REDIS_SENTINEL_MASTER (the master's name)")
    sentinels, query, db, user, password = [], {}, 0, None, None
    for i, part in enumerate(p for p in url.split(";") if p.strip()):
        p = urlsplit(part.strip())
        if p.scheme.lower() != "sentinel" or not p.hostname:
            raise ValueError(f"{shown}: every ';'-separated part must be sentinel://host[:port]")
        sentinels.append((p.hostname, p.port or SENTINEL_DEFAULT_PORT))
        query |= dict(parse_qsl(p.query))
        if i == 0:
            path = p.path.lstrip("/") or "0"
            if not path.isdigit():
                raise ValueError(f"{shown}: the database must be a number, not {path!r}")
            db = int(path)
            user, password = unquote(p.username or "") or None, unquote(p.password or "") or None
    tls = _ssl_options(query, shown)
    if tls and "ssl_cert_reqs" not in tls:
        tls["ssl_cert_reqs"] = "required"
    return RedisTarget(url=url, scheme="sentinel", sentinels=tuple(sentinels), master_name=sentinel_master, db=db,
                       username=user, password=password, sentinel_password=sentinel_password or None, ssl=tls)


def redis_target() -> RedisTarget:
    """The deployment's Redis, from the settings (parsed on every call: tests change the settings)."""
    s = get_settings()
    if not s.redis_url:
        raise RuntimeError("ATELIER_REDIS_URL is not set (make run sets it for the embedded Redis)")
    return parse_redis_url(s.redis_url, sentinel_master=s.redis_sentinel_master,
                           sentinel_password=s.redis_sentinel_password)


def broker_url() -> str:
    """``ATELIER_REDIS_URL`` itself (RuntimeError when unset)."""
    return redis_target().url


def connect(url: str | None = None) -> redis.Redis:
    """A client of the task store at ``url`` (default ``ATELIER_REDIS_URL``; any form :func:`parse_redis_url`
    takes), as every process uses it."""
    if url is None:
        return redis_target().client()
    s = get_settings()
    return parse_redis_url(url, sentinel_master=s.redis_sentinel_master,
                           sentinel_password=s.redis_sentinel_password).client()


@lru_cache
def get_redis() -> redis.Redis:
    """The gateway's connection, from the settings."""
    return connect()
