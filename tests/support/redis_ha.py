"""Real Redis topologies on 127.0.0.1 for the high-availability tests (docs/deployment.md "Redis high
availability"): redis-server processes (a master, replicas, a TLS-only server), a sentinel (the same binary with
``--sentinel``), a self-signed CA and server certificate made at test time, and a gateway and Celery workers
started as subprocesses against them.

Ports: ``ATELIER_TEST_PORTS=LOW-HIGH`` confines the servers to a range (a shared machine); unset, any free port.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.api import ROOT, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_taken: set[int] = set()


def port() -> int:
    """A free TCP port on 127.0.0.1, from ``ATELIER_TEST_PORTS`` when set."""
    spec = os.environ.get("ATELIER_TEST_PORTS", "")
    if not spec:
        return free_port()
    low, high = (int(x) for x in spec.split("-"))
    for p in range(low, high + 1):
        if p in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        _taken.add(p)
        return p
    raise RuntimeError(f"no free port in ATELIER_TEST_PORTS={spec}")


def wait_ping(client: redis.Redis, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not answer in {timeout:.0f}s") from None
            time.sleep(0.05)


class RedisNode:
    """One redis-server (or sentinel) process with its own folder and log."""

    def __init__(self, base: Path, name: str, args: list[str], *, tls: dict[str, Path] | None = None,
                 sentinel_conf: str = ""):
        """``tls``: the files of :func:`make_tls_files`: the node listens on a TLS port only, and replicates (or,
        a sentinel, talks to the nodes it watches) over TLS too."""
        self.name, self.dir, self.tls = name, base / name, tls
        self.dir.mkdir(parents=True)
        self.port = port()
        self.log = self.dir / "log"
        options = [("port", "0" if tls else str(self.port)), ("bind", "127.0.0.1"), ("dir", str(self.dir))]
        if tls:
            options += [("tls-port", str(self.port)), ("tls-cert-file", str(tls["cert"])),
                        ("tls-key-file", str(tls["key"])), ("tls-ca-cert-file", str(tls["ca"])),
                        ("tls-auth-clients", "no"), ("tls-replication", "yes")]
        argv = [REDIS_SERVER]
        if sentinel_conf:  # sentinel rewrites its configuration file: it must be a file of its own
            conf = self.dir / "sentinel.conf"
            conf.write_text("".join(f"{k} {v}\n" for k, v in options) + sentinel_conf)
            argv += [str(conf), "--sentinel"]
        else:
            argv += [a for k, v in options + [("save", ""), ("appendonly", "no")] for a in (f"--{k}", v)]
        self.proc = subprocess.Popen(argv + args + ["--logfile", str(self.log)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)

    def client(self, **kw) -> redis.Redis:
        if self.tls:
            kw = {"ssl": True, "ssl_ca_certs": str(self.tls["ca"]), **kw}
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5, **kw)

    def kill(self) -> None:
        """SIGKILL: the machine or the process is gone, nothing written out."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelSetup:
    """A master, ``replicas`` replicas and one sentinel (quorum 1) watching them as ``master_name``, with a short
    down-after-milliseconds and failover-timeout so that a failover takes seconds."""

    def __init__(self, base: Path, replicas: int = 2, master_name: str = "mymaster", down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000, tls: dict[str, Path] | None = None):
        self.master_name = master_name
        self.nodes: list[RedisNode] = []
        # every data node as a deployment should run it: writes refused while no replica is connected and recent
        guard = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"] if replicas else []
        self.tls = tls
        self.master = self._node(RedisNode(base, "master", guard, tls=tls))
        wait_ping(self.master.client(), "the master")
        self.replicas = [self._node(RedisNode(base, f"replica{i}", guard + ["--replicaof", "127.0.0.1",
                                                                            str(self.master.port)], tls=tls))
                         for i in range(replicas)]
        for r in self.replicas:
            wait_ping(r.client(), r.name)
        self.sentinel = self._node(RedisNode(base, "sentinel", [], sentinel_conf=(
            f"sentinel monitor {master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"), tls=tls))
        wait_ping(self.sentinel.client(), "the sentinel")
        self.wait_synced()

    def _node(self, n: RedisNode) -> RedisNode:
        self.nodes.append(n)
        return n

    @property
    def url(self) -> str:
        """``ATELIER_REDIS_URL`` of this setup (with the CA to verify its certificates when it uses TLS)."""
        url = f"sentinel://127.0.0.1:{self.sentinel.port}/0"
        return url + f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls['ca']}" if self.tls else url

    def master_port(self) -> int:
        """The master's port as the sentinel says now."""
        return int(self.sentinel.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)[1])

    def wait_synced(self, timeout: float = 30) -> None:
        """Every live replica has finished its sync with the master and the sentinel knows it as a good one
        (a failover before that finds no replica to promote, or promotes an empty one)."""
        deadline = time.monotonic() + timeout
        live = [r for r in self.replicas if r.proc.poll() is None]
        while time.monotonic() < deadline:
            links = [r.client().info("replication").get("master_link_status") for r in live]
            known = self.sentinel.client().execute_command("SENTINEL", "REPLICAS", self.master_name)
            good = [k for k in known if _pairs(k).get("master-link-status") == "ok"
                    and "s_down" not in _pairs(k).get("flags", "")]
            if all(s == "up" for s in links) and len(good) >= len(live):
                return
            time.sleep(0.1)
        raise AssertionError("the replicas did not sync with the master in time")

    def close(self) -> None:
        for n in self.nodes:
            n.stop()


def _pairs(reply) -> dict[str, str]:
    """A SENTINEL REPLICAS entry (a flat list, or a dict in newer redis-py) as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


# --- TLS --------------------------------------------------------------------------------------------------

def make_tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 and localhost it signed, valid for a day:
    ``{"ca": ..., "cert": ..., "key": ...}`` (PEM files)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atelier test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


# --- gateway and workers as subprocesses ------------------------------------------------------------------

class Processes:
    """A uvicorn gateway and Celery workers (solo pool) started with ``env``, each with a log under ``base``."""

    def __init__(self, base: Path, env: dict[str, str], workers: int = 1):
        self.base, self.env = base, env
        self.url = f"http://127.0.0.1:{env['ATELIER_PORT']}"
        self.gateway_log = base / "gateway.log"
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", env["ATELIER_PORT"]],
            env=env, cwd=ROOT, stdout=self.gateway_log.open("wb"), stderr=subprocess.STDOUT)]
        self.worker_logs = []
        for i in range(workers):
            log = base / f"worker{i}.log"
            self.worker_logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo", "-Q",
                 env["ATELIER_QUEUE"], "--loglevel", "INFO", "-n", f"w{i}-{uuid.uuid4().hex[:6]}@%h"],
                env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in [self.gateway_log, *self.worker_logs])

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                pytest.fail("a process exited:\n" + self.logs())
            try:
                up = httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and all(" ready." in log.read_text(errors="replace") for log in self.worker_logs):
                return
            time.sleep(0.2)
        pytest.fail("gateway or workers did not come up:\n" + self.logs())

    def post(self, body: dict, timeout: float = 30) -> dict:
        r = httpx.post(self.url + "/", json=body, timeout=timeout)
        assert r.status_code == 200, r.text
        return r.json()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
