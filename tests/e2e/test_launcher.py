"""`make run`'s launcher (app/cli/run.py) as a user runs it: embedded Redis (never 6379), gateway and
worker come up, a dev key is created and printed, Ctrl-C (SIGINT to the process group) stops all
of it and leaves nothing running; the embedded Redis keeps its data across a restart. (A launch
refused for its key file or models config: tests/e2e/test_keys_startup.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from support.api import ROOT, free_port

pytestmark = pytest.mark.slow


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(ATELIER_DATA_DIR=str(data_dir), ATELIER_PORT=str(port), ATELIER_DEVICE="cpu",
               PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "app.cli.run"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "[atelier] ready" in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError("launcher not ready:\n" + log.read_text())


def _descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _interrupt(proc: subprocess.Popen, children: list[psutil.Process]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(90) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def test_make_run_comes_up_and_ctrl_c_stops_everything(tmp_path):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "run.log"
    proc = _start(data, port, log)
    try:
        _wait_ready(proc, log)
        text = log.read_text()
        assert "PublicKey" in text and (data / "dev-keys.yaml").exists()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        children = _descendants(proc)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "uvicorn" in names and "celery" in names and "redis-server" in names
        sock = data / "redis" / "redis.sock"
        assert sock.exists(), "embedded Redis listens on its own unix socket"
        assert not any(c.laddr.port == 6379 for p in children for c in p.net_connections("tcp")
                       if c.status == psutil.CONN_LISTEN)
        redis.Redis(unix_socket_path=str(sock)).set("atelier:test:persist", "kept")
        _interrupt(proc, children)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    # a restart finds what the embedded Redis held (AOF under the data dir)
    proc = _start(data, port, log)
    try:
        _wait_ready(proc, log)
        assert redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock")).get("atelier:test:persist") == b"kept"
        _interrupt(proc, _descendants(proc))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
