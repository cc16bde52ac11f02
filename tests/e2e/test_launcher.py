"""`make run`'s launcher (app/cli/run.py) as a user runs it: embedded Redis (never 6379), gateway and
worker(s) come up, a dev key is created and printed, Ctrl-C (SIGINT to the process group) stops all
of it and leaves nothing running; the embedded Redis keeps its data across a restart. With
ATELIER_WORKERS=N it supervises N workers: one that dies is started again with growing delays while
the gateway keeps serving, never once Ctrl-C was pressed; a gateway that dies stops everything. (A
launch refused for its key file or models config: tests/e2e/test_keys_startup.py.)"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from app.cli.run import HEALTHY_RUN_S, RESTART_DELAY_MAX_S, Child
from support.api import ROOT, free_port

pytestmark = pytest.mark.slow


def _start(data_dir: Path, port: int, log: Path, **settings: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(ATELIER_DATA_DIR=str(data_dir), ATELIER_PORT=str(port), ATELIER_DEVICE="cpu",
               PYTHONPATH=str(ROOT), **{f"ATELIER_{k.upper()}": v for k, v in settings.items()})
    return subprocess.Popen([sys.executable, "-m", "app.cli.run"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    _wait_for(proc, log, "[atelier] ready", timeout)


def _wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float = 90) -> None:
    """Until ``text`` is in the launcher's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the launcher's log:\n" + log.read_text())


def _ready_count(log: Path, node: str) -> int:
    """How often Celery said a worker of node name ``node`` (minus the host) was ready."""
    return len(re.findall(re.escape(node) + r"\S* ready\.", log.read_text(errors="replace")))


def _wait_worker_ready(proc: subprocess.Popen, log: Path, node: str, times: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _ready_count(log, node) < times:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _workers(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """The launcher's live Celery workers by their ATELIER_WORKER_INDEX."""
    found = {}
    for p in _descendants(proc):
        try:
            if "celery" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                found[int(p.environ()["ATELIER_WORKER_INDEX"])] = p
        except psutil.NoSuchProcess:
            pass
    return found


def _leftovers(launcher_pid: int, port: int, data_dir: Path) -> list[str]:
    """Any process of that launch still running anywhere (also one started after its children were listed)."""
    marks = (f"atelier-{launcher_pid}-", f"--port {port}", str(data_dir))
    left = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if any(m in line for m in marks) and "pytest" not in line:
            left.append(line)
    return left


def _interrupt(proc: subprocess.Popen, children: list[psutil.Process]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(90) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


def _healthz(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code


def test_make_run_comes_up_and_ctrl_c_stops_everything(tmp_path):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "run.log"
    proc = _start(data, port, log)
    try:
        _wait_ready(proc, log)
        text = log.read_text()
        assert "PublicKey" in text and (data / "dev-keys.yaml").exists()
        assert _healthz(port) == 200
        children = _descendants(proc)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "uvicorn" in names and "celery" in names and "redis-server" in names
        assert list(_workers(proc)) == [0], "one worker by default, ATELIER_WORKER_INDEX=0"
        sock = data / "redis" / "redis.sock"
        assert sock.exists(), "embedded Redis listens on its own unix socket"
        assert not any(c.laddr.port == 6379 for p in children for c in p.net_connections("tcp")
                       if c.status == psutil.CONN_LISTEN)
        redis.Redis(unix_socket_path=str(sock)).set("atelier:test:persist", "kept")
        _interrupt(proc, children)
        assert not _leftovers(proc.pid, port, data)
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


def _replaced(proc: subprocess.Popen, index: int, old_pid: int, port: int, timeout: float = 10) -> psutil.Process:
    """Wait for worker ``index`` to run again under another pid; the gateway answers all along."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert _healthz(port) == 200, "the gateway keeps serving while a worker restarts"
        new = _workers(proc).get(index)
        if new is not None and new.pid != old_pid:
            return new
        time.sleep(0.1)
    raise AssertionError(f"worker {index} not replaced in {timeout:.0f}s: {_workers(proc)}")


def test_workers_are_restarted_with_growing_delays(tmp_path):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "run.log"
    demo_models = os.environ.get("ATELIER_DEMO_MODELS_DIR", str(Path.home() / ".cache" / "atelier" / "test-models"))
    proc = _start(data, port, log, workers="2", demo_models_dir=demo_models)
    node = f"atelier-{proc.pid}-1@"
    try:
        _wait_ready(proc, log)
        workers = _workers(proc)
        assert sorted(workers) == [0, 1], [p.cmdline() for p in _descendants(proc)]
        assert node in " ".join(workers[1].cmdline())
        _wait_worker_ready(proc, log, node, 1)  # it consumes, not just imports

        first = workers[1]
        first.kill()  # SIGKILL, as the OOM killer does
        second = _replaced(proc, 1, first.pid, port)
        assert _workers(proc)[0].pid == workers[0].pid, "the other worker runs on"
        second.kill()  # dies again at once: the delay doubles
        readies = _ready_count(log, node)
        third = _replaced(proc, 1, second.pid, port)
        delays = [int(d) for d in re.findall(r"\[atelier\] worker 1 exited with -9; restarting in (\d+) s",
                                             log.read_text())]
        assert delays == [1, 2], log.read_text()

        # the restarted worker takes jobs: it comes up, and a job submitted now finishes
        _wait_worker_ready(proc, log, node, readies + 1)
        out = subprocess.run([sys.executable, "-m", "app.cli.client", "--url", f"http://127.0.0.1:{port}", "generate",
                              "--mannequin", "examples/mannequin.png", "--clothes-mask", "examples/clothes_mask.png",
                              "--prompt", "a woman", "--width", "64", "--height", "64", "--timeout", "240",
                              "-o", str(tmp_path / "out")],
                             cwd=ROOT, env={**os.environ, "ATELIER_DATA_DIR": str(data)},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr + log.read_text()[-3000:]
        assert len(out.stdout.split()) == 1

        # Ctrl-C while worker 1 waits for its restart (4 s now): it is never started again, all stops
        third.kill()
        _wait_for(proc, log, "[atelier] worker 1 exited with -9; restarting in 4 s", timeout=10)
        children = _descendants(proc)
        os.killpg(proc.pid, signal.SIGINT)
        while proc.poll() is None:
            assert 1 not in _workers(proc), "no worker restarts during shutdown"
            time.sleep(0.05)
        assert proc.returncode == 0, log.read_text()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        assert not _leftovers(proc.pid, port, data)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_gateway_exit_stops_everything(tmp_path):
    data, port, log = tmp_path / "data", free_port(), tmp_path / "run.log"
    proc = _start(data, port, log)
    try:
        _wait_ready(proc, log)
        children = _descendants(proc)
        gateway = next(p for p in children if "uvicorn" in p.cmdline())
        gateway.kill()
        assert proc.wait(90) == 1, log.read_text()
        assert "[atelier] gateway exited with -9; stopping" in log.read_text()
        assert "restarting" not in log.read_text()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        assert not _leftovers(proc.pid, port, data)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_restart_delays_double_up_to_a_cap_and_reset_after_a_healthy_run():
    child = Child("worker 0", ["true"], {})
    child.started_at = 1000.0
    delays = [child.schedule_restart(1000.0 + i) for i in range(8)]  # each exit soon after its start
    assert delays == [1, 2, 4, 8, 16, RESTART_DELAY_MAX_S, RESTART_DELAY_MAX_S, RESTART_DELAY_MAX_S]
    child.started_at = 2000.0
    assert child.schedule_restart(2000.0 + HEALTHY_RUN_S) == 1, "a worker that ran a while starts from 1 s"
    child.started_at = 3000.0
    assert child.schedule_restart(3001.0) == 2


def test_workers_must_be_at_least_one(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.cli.run"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")},
                              "ATELIER_DATA_DIR": str(tmp_path / "data"), "ATELIER_WORKERS": "0"})
    assert out.returncode == 2
    assert "[atelier] cannot start: ATELIER_WORKERS" in out.stderr
