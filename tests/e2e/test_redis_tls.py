"""Redis over TLS with real processes (docs/deployment.md "Redis high availability"): a redis-server listening on
a TLS port only (no plain port), with a CA and a server certificate made at test time; a uvicorn gateway and a
Celery worker as subprocesses with ``ATELIER_REDIS_URL=rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...``.
A task goes through end to end: the gateway's task store and its Celery producer, the worker's consumer, its
lease and its heartbeat (``/readyz``) all speak TLS, since nothing else is listening."""
from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
import redis

from app.contract.redis_conn import connect
from support.api import ROOT, free_port, generate_body, signed
from support.redis_ha import Processes, RedisNode, make_tls_files, wait_ping

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    files = make_tls_files(base / "certs")
    node = RedisNode(base, "redis", ["--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
                                     "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no"],
                     tls_port=True)
    url = f"rediss://127.0.0.1:{node.port}/0?ssl_cert_reqs=required&ssl_ca_certs={files['ca']}"
    procs = None
    try:
        wait_ping(connect(url), "the TLS redis-server")
        env = {**os.environ, **atelier_env, "ATELIER_REDIS_URL": url,
               "ATELIER_QUEUE": f"atelier-tls-{uuid.uuid4().hex[:8]}", "ATELIER_DATA_DIR": str(base / "data"),
               "ATELIER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs = Processes(base, env, workers=1)
        procs.wait_ready()
        yield node, url, procs
    finally:
        if procs:
            procs.close()
        node.stop()


def test_a_task_goes_through_a_tls_only_redis(tls):
    node, url, procs = tls
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
    node, url, _ = tls
    without_ca = url.split("&ssl_ca_certs=")[0]  # required, but no CA that signed the server's certificate
    with pytest.raises(redis.ConnectionError, match="(?i)certificate verify failed"):
        connect(without_ca).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2).ping()
