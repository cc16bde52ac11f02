"""Helpers of the webhook tests: a real HTTP receiver on 127.0.0.1, webhook secrets, and a Redis of their own.

The webhook tests run on a redis-server of their own (:func:`private_redis`): every gateway delivers the due
webhooks of the Redis it uses, and the session's live stack (tests/conftest.py) runs a gateway on the shared test
Redis all the session long (as may another session's); on this one, only the gateways the webhook tests start
deliver.
"""
from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from support.api import free_port


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A redis-server of the caller's own on a free port of 127.0.0.1 (no persistence): its URL while it runs."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=(folder / "redis.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("redis-server did not start: " + (folder / "redis.log").read_text()) from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)


def make_secret(n: int = 32) -> str:
    """A Standard Webhooks secret (``whsec_`` + base64 of ``n`` random bytes), made here, not by app/keys.py."""
    return "whsec_" + base64.b64encode(os.urandom(n)).decode()


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float                # time.time() when it arrived


class Receiver:
    """A real HTTP server on 127.0.0.1, in a thread: records every POST and answers each with the next of
    ``statuses`` (then 200); a 3xx answer carries a Location on this same server."""

    def __init__(self, statuses: tuple[int, ...] | list[int] = ()):
        self.statuses = list(statuses)
        self.received: list[Received] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, time.time()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver._lock.notify_all()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"{receiver.base}/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="webhook-receiver",
                                        daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return self.base + path

    def wait(self, n: int, timeout: float) -> list[Received]:
        """The first ``n`` requests, waiting up to ``timeout`` seconds for them; AssertionError if they do not come."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.received) >= n, timeout):
                raise AssertionError(f"the receiver got {len(self.received)} request(s) in {timeout} s, expected {n}")
            return list(self.received[:n])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
