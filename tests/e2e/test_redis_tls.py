"""Redis over TLS with real processes (docs/deployment.md "Redis high availability"): a redis-server listening on
a TLS port only (no plain port), with a CA and a server certificate made at test time; a uvicorn gateway and a
Celery worker as subprocesses with ``ATELIER_REDIS_URL=rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...``.
A task goes through end to end: the gateway's task store and its Celery producer, the worker's consumer, its
lease and its heartbeat (``/readyz``) all speak TLS, since nothing else is listening. And Sentinel over TLS: the
task store and Celery's broker connection through sentinels, a master and a replica that listen on TLS ports
only."""
from __future__ import annotations

import os
import ssl
import time
import uuid

import httpx
import pytest
import redis

from app.contract.queue import make_celery
from app.contract.redis_conn import connect
from app.contract.settings import get_settings
from support.api import ROOT, free_port, generate_body, signed
from support.redis_ha import Processes, RedisNode, SentinelSetup, make_tls_files, wait_ping

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    files = make_tls_files(base / "certs")
    node = RedisNode(base, "redis", [], tls=files)
    url = f"rediss://127.0.0.1:{node.port}/0?ssl_cert_reqs=required&ssl_ca_certs={files['ca']}"
    procs = None
    try:
        wait_ping(connect(url), "the TLS redis-server")
        env = {**os.environ, **atelier_env, "ATELIER_REDIS_URL": url,
               "ATELIER_QUEUE": f"atelier-tls-{uuid.uuid4().hex[:8]}", "ATELIER_DATA_DIR": str(base / "data"),
               "ATELIER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs = Processes(base, env, workers=1)
        procs.wait_ready()
        yield node, url, procs, files
    finally:
        if procs:
            procs.close()
        node.stop()


def test_a_task_goes_through_a_tls_only_redis(tls):
    node, url, procs, _ = tls
    out = procs.post(signed(generate_body()))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = procs.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
        if d["Status"] in ("Finished", "Error"):
            break
        time.sleep(0.2)
    assert d["Status"] == "Finished" and len(d["ImgList"]) == 1, (d, procs.logs())
    image = httpx.get(d["ImgList"][0], timeout=10)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    ready = httpx.get(f"{procs.url}/readyz", timeout=10)  # the worker's heartbeat, read by the gateway, over TLS
    assert ready.status_code == 200 and ready.json()["workers"] == 1, ready.text
    assert connect(url).hgetall(f"atelier:task:{uid}")["status"] == "Finished"


def test_the_certificate_is_verified_and_plain_text_is_refused(tls):
    node, url, _, _ = tls
    without_ca = url.split("&ssl_ca_certs=")[0]  # required, but no CA that signed the server's certificate
    with pytest.raises(redis.ConnectionError, match="(?i)certificate verify failed"):
        connect(without_ca).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2).ping()


def test_sentinel_over_tls_task_store_and_celery_broker_round_trip(tls, tmp_path, monkeypatch):
    """A master, a replica and a sentinel all on TLS ports only (replication and monitoring over TLS too), reached
    by ``sentinel://...?ssl_cert_reqs=required&ssl_ca_certs=...``: the task store's client and Celery's broker
    connection (make_celery's URL, transport options and broker_use_ssl) both find the master and use it."""
    *_, files = tls
    setup = SentinelSetup(tmp_path / "redis", replicas=1, tls=files)
    try:
        monkeypatch.setenv("ATELIER_REDIS_URL", setup.url)
        monkeypatch.setenv("ATELIER_REDIS_SENTINEL_MASTER", setup.master_name)
        get_settings.cache_clear()
        r = connect()
        r.set("atelier:tls-probe", "over tls")
        assert setup.master.client().get("atelier:tls-probe") == "over tls"  # it went to the master
        celery = make_celery("tls-probe")
        assert celery.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        queue = f"atelier-tls-probe-{uuid.uuid4().hex[:6]}"
        with celery.connection_for_write() as conn:
            q = conn.SimpleQueue(queue)
            q.put({"job": "probe"})
            msg = q.get(timeout=10)
            assert msg.payload == {"job": "probe"}
            msg.ack()
            q.close()
    finally:
        get_settings.cache_clear()
        setup.close()
