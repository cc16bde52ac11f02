"""The forms ATELIER_REDIS_URL takes (app/contract/redis_conn.py, docs/deployment.md "Redis high availability"):
what redis-py and Celery each get from one URL. The connections themselves are tested with real servers in
tests/e2e/test_redis_sentinel.py and tests/e2e/test_redis_tls.py."""
from __future__ import annotations

import ssl

import pytest
from redis.sentinel import SentinelConnectionPool

from app.contract.redis_conn import parse_redis_url


def test_a_plain_url_goes_to_both_unchanged():
    t = parse_redis_url("redis://:secret@10.0.0.5:6380/3")
    assert (t.scheme, t.db, t.password) == ("redis", 3, "secret")
    assert t.celery_broker() == ("redis://:secret@10.0.0.5:6380/3", {}, None)
    assert t.client().connection_pool.connection_kwargs["db"] == 3


def test_a_unix_socket_is_spelled_redis_socket_for_kombu():
    t = parse_redis_url("unix:///run/redis.sock?db=2")
    assert t.db == 2
    assert t.celery_broker()[0] == "redis+socket:///run/redis.sock?db=2"


def test_rediss_gives_kombu_broker_use_ssl_from_the_query_and_redis_py_the_same_options():
    t = parse_redis_url("rediss://:pw@redis.internal:6380/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
                        "&socket_keepalive=true")
    url, options, use_ssl = t.celery_broker()
    assert url == "rediss://:pw@redis.internal:6380/1?socket_keepalive=true"  # kombu would pass ssl_* on as kwargs
    assert options == {}
    assert use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    kw = t.client().connection_pool.connection_kwargs
    assert (kw["ssl_cert_reqs"], kw["ssl_ca_certs"]) == ("required", "/etc/ca.pem")


def test_rediss_without_options_verifies_the_certificate():
    """kombu alone would fall back to CERT_NONE with a warning; the parser says required, as redis-py does."""
    assert parse_redis_url("rediss://h:6380/0").celery_broker()[2] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_sentinel_celery_form_master_name_passwords_and_db():
    t = parse_redis_url("sentinel://:masterpw@s1:26379/4;sentinel://s2;sentinel://[::1]:26380",
                        sentinel_master="atelier", sentinel_password="sentinelpw")
    assert t.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    url, options, use_ssl = t.celery_broker()
    assert url == "sentinel://:masterpw@s1:26379/4;sentinel://s2:26379/4;sentinel://[::1]:26380/4"
    assert options["master_name"] == "atelier"
    assert options["sentinel_kwargs"]["password"] == "sentinelpw"
    assert use_ssl is None
    client = t.client()
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "atelier"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "masterpw")
    sentinel_conn = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_conn["password"] == "sentinelpw"  # the sentinels' own, not the master's


def test_sentinel_with_tls_puts_master_and_sentinels_behind_it():
    t = parse_redis_url("sentinel://s1:26379;sentinel://s2:26379?ssl_ca_certs=/ca.pem")
    _, options, use_ssl = t.celery_broker()
    assert use_ssl == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert options["sentinel_kwargs"]["ssl"] is True
    assert options["sentinel_kwargs"]["ssl_ca_certs"] == "/ca.pem"


@pytest.mark.parametrize("url, says", [
    ("http://h:6379", "must start with"),
    ("redis://h:6379/x", "database must be a number"),
    ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
    ("rediss://h:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
    ("sentinel://s1:26379;redis://h:6379", "every ';'-separated part"),
])
def test_a_wrong_url_is_refused_with_what_is_wrong_and_without_the_password(url, says):
    with pytest.raises(ValueError, match=says) as e:
        parse_redis_url(url.replace("://", "://:hunter2@", 1))
    assert "hunter2" not in str(e.value)


def test_passwords_are_not_in_the_repr():
    t = parse_redis_url("sentinel://:masterpw@s1:26379", sentinel_password="sentinelpw")
    assert "masterpw" not in repr(t) and "sentinelpw" not in repr(t)
