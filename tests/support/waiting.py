"""Waiting on real processes in the tests: for a condition (polled until it holds or the time is up), for a
gateway to answer, for a process to stop."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_until(what: str, cond: Callable[[], T], timeout: float, step: float = 0.05,
               on_fail: Callable[[], str] | None = None) -> T:
    """``cond()``'s first truthy value, polled every ``step`` seconds; AssertionError naming ``what`` (and what
    ``on_fail()`` says, e.g. a log's tail) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    detail = f"\n{on_fail()[-3000:]}" if on_fail is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def answers(url: str, timeout: float = 1) -> bool:
    """Whether ``url`` (a gateway's ``/healthz``) answers 200 now."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM ``proc`` (a worker's warm shutdown, a gateway's) and wait; SIGKILL it past ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
