"""Recovery with real parts (docs/deployment.md "Recovery"): a private redis-server (AOF on), a uvicorn gateway and
Celery workers (solo pool) as subprocesses, killed with SIGKILL as an out-of-memory killer or a lost node would.

- a worker killed mid-job: its task runs again (attempt 2) and every task ends Finished with its images once;
- a worker killed while a job's results are stored in the background: the job runs again and is Finished once;
- a job longer than the lease, on a live worker: it is never started a second time;
- Redis restarted mid-run: gateway and workers reconnect by themselves and nothing is lost;
- a task whose run kills its worker: Error 502 after ATELIER_MAX_WORKER_DEATHS deaths, the other tasks finish.

The module's stack runs with a lease of 4 s and a reaper every 0.5 s, so a dead worker's task is sent again about
4.5 s after its last renewal. The timings of each test are printed (``pytest -s``).
"""
from __future__ import annotations

import os
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

from support.api import ROOT, example_inputs, free_port, generate_body, png_b64, signed
from support.redis_ha import wait_ping
from support.waiting import wait_until

pytestmark = pytest.mark.slow

LEASE_S = 4.0
REAP_INTERVAL_S = 0.5
MAX_DEATHS = 3
HOST = socket.gethostname()
SIZE = 256  # a 256x256 job of BatchSize 2 takes about 2 s on one CPU core: long enough to be killed mid-run
MAN, MASK = example_inputs(SIZE, SIZE)
IMAGES = [png_b64(MAN), png_b64(MASK)]


class RedisServer:
    """A redis-server of our own (AOF on), which the test stops and starts again on the same port and dir."""

    def __init__(self, base: Path):
        self.dir = base / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--dir", str(self.dir), "--save", "", "--logfile", str(self.dir / f"redis.{self.starts}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_ping(redis.Redis.from_url(self.url), f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis writes its AOF out and exits, as on a clean restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Worker:
    """One worker slot: a Celery worker process that can be killed and started again (a new log per start)."""

    def __init__(self, index: int, env: dict[str, str], log_dir: Path, queue: str):
        self.index, self.env, self.log_dir, self.queue = index, env, log_dir, queue
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log: Path | None = None

    def start(self) -> None:
        self.starts += 1
        self.log = self.log_dir / f"worker{self.index}.{self.starts}.log"
        argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "solo",
                "-Q", self.queue, "--loglevel", "INFO", "-n", f"w{self.index}-{uuid.uuid4().hex[:6]}@%h"]
        self.proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)

    @property
    def worker_id(self) -> str:
        """What the worker writes in a task's ``worker`` field (workers/runtime.py)."""
        return f"{HOST}:{self.proc.pid}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.alive() and " ready." in self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class Stack:
    def __init__(self, base: Path, env: dict[str, str], redis_server: RedisServer, n_workers: int):
        self.base, self.env, self.redis_server = base, env, redis_server
        self.url = f"http://127.0.0.1:{env['ATELIER_PORT']}"
        self.data_dir = Path(env["ATELIER_DATA_DIR"])
        self.r = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
        self.gateway_log = base / "gateway.log"
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", env["ATELIER_PORT"]],
            env=env, cwd=ROOT, stdout=self.gateway_log.open("wb"), stderr=subprocess.STDOUT)
        self.workers = [Worker(i, env, base, env["ATELIER_QUEUE"]) for i in range(n_workers)]
        for w in self.workers:
            w.start()

    # --- processes -------------------------------------------------------------------------------
    def wait_gateway(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("gateway did not come up: " + self.gateway_log.read_text()[-2000:])

    def ensure_workers(self, timeout: float = 120) -> None:
        """Every slot runs a worker that is ready (a supervisor's job: start the ones that died)."""
        for w in self.workers:
            if not w.alive():
                w.start()
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in self.workers):
            if time.monotonic() > deadline:
                pytest.fail("workers did not come up:\n" + "\n".join(w.log.read_text()[-1500:] for w in self.workers))
            time.sleep(0.2)

    def by_worker_id(self, worker_id: str) -> Worker | None:
        return next((w for w in self.workers if w.alive() and w.worker_id == worker_id), None)

    def worker_lines(self, text: str) -> list[str]:
        """Lines of every worker log (every start of every slot) containing ``text``."""
        return [line for log in sorted(self.base.glob("worker*.log"))
                for line in log.read_text(errors="replace").splitlines() if text in line]

    def close(self) -> None:
        for p in [self.gateway] + [w.proc for w in self.workers if w.proc]:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    # --- API and task records ----------------------------------------------------------------------
    def post(self, body: dict) -> dict:
        r = httpx.post(self.url + "/", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def submit(self, n: int = 1, **overrides) -> list[str]:
        uids = []
        for i in range(n):
            body = generate_body(Width=SIZE, Height=SIZE, BatchSize=2, ImageAndMaskList=IMAGES, Seed=1000 + i)
            body.update(overrides)
            out = self.post(signed(body))
            assert out["RetCode"] == 0, out
            uids.append(out["TaskUID"])
        return uids

    def record(self, uid: str) -> dict[str, str]:
        """The task's hash in Redis (``atelier:task:<uid>``); {} while Redis cannot be reached."""
        try:
            return self.r.hgetall(f"atelier:task:{uid}")
        except redis.RedisError:
            return {}

    def wait_all(self, uids: list[str], timeout: float) -> dict[str, dict]:
        """ListTasksDetails until every task ended; returns the details by TaskUID."""
        deadline = time.monotonic() + timeout
        ended: dict[str, dict] = {}
        while time.monotonic() < deadline:
            try:
                out = self.post(signed({"Action": "ListTasksDetails", "TaskUIDList": uids}))
            except httpx.HTTPError:
                out = {}
            for d in out.get("TaskDetailList", []):
                if d["Status"] in ("Finished", "Error", "Canceled"):
                    ended[d["TaskUID"]] = d
            if len(ended) == len(uids):
                return ended
            time.sleep(0.25)
        states = {u: self.record(u).get("status") for u in uids if u not in ended}
        raise AssertionError(f"{len(uids) - len(ended)} task(s) did not end in {timeout:.0f}s: {states}\n"
                             + self.gateway_log.read_text()[-2000:])

    def running_mid_job(self, uids: list[str]) -> tuple[str, Worker] | None:
        """One of ``uids`` that a worker of this stack is running between its first and last denoising step, and that
        worker; None when there is none now."""
        for uid in uids:
            h = self.record(uid)
            if h.get("status") == "Running" and 1 <= int(h.get("step", 0)) < int(h.get("total_steps", 0)):
                w = self.by_worker_id(h.get("worker", ""))
                if w is not None:
                    return uid, w
        return None

    def result_files(self, uid: str) -> list[str]:
        d = self.data_dir / "results" / uid
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture(scope="module")
def stack(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("recovery")
    server = RedisServer(base)
    server.start()
    env = {**os.environ, **atelier_env,
           "ATELIER_REDIS_URL": server.url, "ATELIER_QUEUE": f"atelier-recovery-{uuid.uuid4().hex[:8]}",
           "ATELIER_DATA_DIR": str(base / "data"), "ATELIER_PORT": str(free_port()),
           "ATELIER_LEASE_S": str(LEASE_S), "ATELIER_REAP_INTERVAL_S": str(REAP_INTERVAL_S),
           "ATELIER_MAX_WORKER_DEATHS": str(MAX_DEATHS), "ATELIER_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "ATELIER_PROGRESS_INTERVAL_S": "0", "PYTHONPATH": str(ROOT)}
    s = Stack(base, env, server, n_workers=2)
    try:
        s.wait_gateway()
        s.ensure_workers()
        yield s
    finally:
        s.close()
        server.stop()


def test_worker_killed_mid_job_its_task_runs_again_and_every_task_finishes_once(stack):
    stack.ensure_workers()
    uids = stack.submit(20)

    victim, worker = wait_until("a task running mid-job", lambda: stack.running_mid_job(uids), 60)
    worker.kill()
    killed, killed_at = time.monotonic(), time.time()
    worker.start()  # what a supervisor does; the other worker goes on meanwhile

    wait_until("the killed task sent again", lambda: stack.record(victim).get("deaths") == "1", LEASE_S + 10)
    requeued = time.monotonic() - killed
    details = stack.wait_all(uids, timeout=90 - (time.monotonic() - killed))
    all_done = time.monotonic() - killed
    rerun = float(stack.record(victim)["started_at"]) - killed_at  # it waited behind the tasks queued before
    print(f"\n[recovery] kill -> task sent again {requeued:.1f}s, running again {rerun:.1f}s;"
          f" kill -> all 20 Finished {all_done:.1f}s")

    assert requeued <= LEASE_S + REAP_INTERVAL_S + 2.5
    for uid in uids:
        d, h = details[uid], stack.record(uid)
        assert d["Status"] == "Finished", d
        assert len(d["ImgList"]) == 2 and stack.result_files(uid) == ["0.png", "1.png"], (d, stack.result_files(uid))
        if uid == victim:
            assert any("run again (attempt 2)" in n for n in d["Notes"]), d["Notes"]
            assert (h["attempt"], h["deaths"]) == ("2", "1")
        else:
            assert not any("run again" in n for n in d["Notes"]), d
            assert h["attempt"] == "1" and h.get("deaths", "0") == "0", (uid, h)
    assert len(stack.worker_lines(f"task {victim} finished")) == 1  # the killed run logged nothing


def test_worker_killed_while_a_job_is_stored_in_the_background_the_job_finishes_once(stack):
    """A worker stores a job's results in the background while it takes the next job (workers/lifecycle/overlap.py):
    the job's Celery message is acknowledged by then, so a worker that dies before the job is Finished leaves it to
    the lease recovery, which sends it again. Here the victim's results folder is a file while it runs, so that its
    store keeps failing (and retrying) in the background; its worker is killed once it runs another job beside."""
    stack.ensure_workers()
    uids = stack.submit(6)

    victim, worker = wait_until("a task running mid-job", lambda: stack.running_mid_job(uids), 60)
    block = stack.data_dir / "results" / victim
    block.parent.mkdir(parents=True, exist_ok=True)
    block.write_bytes(b"")  # where its results folder goes: every write of its results fails, and is retried

    def next_job_beside_it():
        h = stack.record(victim)
        assert h.get("status") == "Running", h  # its store cannot have succeeded
        return any(u != victim and stack.record(u).get("status") == "Running"
                   and stack.record(u).get("worker") == worker.worker_id for u in uids)

    wait_until("its worker running the next job while it is stored", next_job_beside_it, 60)
    assert stack.record(victim).get("worker") == worker.worker_id
    worker.kill()
    block.unlink()
    worker.start()

    details = stack.wait_all(uids, timeout=90)
    for uid in uids:
        d = details[uid]
        assert d["Status"] == "Finished", d
        assert len(d["ImgList"]) == 2 and stack.result_files(uid) == ["0.png", "1.png"], (d, stack.result_files(uid))
    h = stack.record(victim)
    assert (h["attempt"], h["deaths"]) == ("2", "1"), h
    assert len(stack.worker_lines(f"task {victim} finished")) == 1  # Finished once: by the run after the kill


def test_job_longer_than_the_lease_on_a_live_worker_runs_once(stack):
    """Two jobs of about three times the lease on two workers, both cores busy: the leases are renewed beside the jobs,
    so neither task is taken for a dead worker's and neither is ever started by a second worker."""
    stack.ensure_workers()
    # 768x768 x3: about 10 s a job on a 2-core machine, so the job outlives the lease twice even when fast
    uids = stack.submit(2, Width=768, Height=768, BatchSize=3)
    details = stack.wait_all(uids, timeout=120)
    for uid in uids:
        d, h = details[uid], stack.record(uid)
        ran = float(h["finished_at"]) - float(h["started_at"])
        print(f"\n[recovery] task {uid} ran {ran:.1f}s under a lease of {LEASE_S:.0f}s")
        assert d["Status"] == "Finished" and len(d["ImgList"]) == 3, d
        assert ran > 2 * LEASE_S  # the point: it outlived its lease twice over, and many reaper rounds
        assert (h["attempt"], h.get("deaths", "0")) == ("1", "0"), h
        assert not any("run again" in n for n in d["Notes"]), d["Notes"]
        lines = stack.worker_lines(f"task {uid}")
        assert len(lines) == 1 and f"task {uid} finished" in lines[0], lines
        assert uid not in stack.gateway_log.read_text()  # never reaped, never sent again


def test_redis_restarted_mid_run_everything_finishes(stack):
    stack.ensure_workers()
    uids = stack.submit(6)

    def running_mid_job():
        return any(stack.record(u).get("status") == "Running" and int(stack.record(u).get("step", 0)) >= 1
                   for u in uids)

    wait_until("a task running mid-job", running_mid_job, 60)
    stack.redis_server.stop()
    down = time.monotonic()
    time.sleep(1.0)
    stack.redis_server.start()
    print(f"\n[recovery] Redis down for {time.monotonic() - down:.1f}s")

    details = stack.wait_all(uids, timeout=90)
    for uid in uids:
        d = details[uid]
        assert d["Status"] == "Finished", d
        assert len(d["ImgList"]) == 2 and stack.result_files(uid) == ["0.png", "1.png"], d
    # gateway and workers took up their connections again: a new task goes through
    assert httpx.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    after = stack.submit(1)
    assert stack.wait_all(after, timeout=60)[after[0]]["Status"] == "Finished"
    assert all(w.alive() for w in stack.workers)
    reruns = {u: stack.record(u).get("attempt") for u in uids}
    print(f"[recovery] attempts after the Redis restart: {reruns}")


def test_a_task_that_kills_its_worker_ends_in_error_502_and_others_finish(stack):
    """The poison is simulated from outside: whenever the task runs, its worker is SIGKILLed (and started
    again, as a supervisor would)."""
    stack.ensure_workers()
    poison = stack.submit(1, Seed=7)[0]
    others = stack.submit(2)
    kills: list[float] = []
    killed_ids: set[str] = set()
    reruns: list[float] = []  # seconds from each kill to the task running again
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        h = stack.record(poison)
        if h.get("status") == "Error":
            break
        wid = h.get("worker", "")
        if h.get("status") == "Running" and wid not in killed_ids:
            w = stack.by_worker_id(wid)
            if w is not None:
                if kills:
                    reruns.append(time.monotonic() - kills[-1])
                w.kill()
                kills.append(time.monotonic())
                killed_ids.add(wid)
                w.start()
        time.sleep(0.02)
    ended = time.monotonic()
    h = stack.record(poison)
    print(f"\n[recovery] poison: killed {len(kills)} workers; kill -> running again "
          f"{', '.join(f'{s:.1f}s' for s in reruns)}; 3rd kill -> Error {ended - kills[-1]:.1f}s")
    assert h.get("status") == "Error", h
    # every run of it was killed; a death is counted when the reaper finds the lease expired (a copy of the job
    # message taking the task over between the expiry and the reaper's next look would run it once more)
    assert int(h["deaths"]) == MAX_DEATHS and len(kills) == int(h["attempt"]) >= MAX_DEATHS, (h, len(kills))
    assert ended - kills[-1] <= LEASE_S + REAP_INTERVAL_S + 2.5
    d = stack.wait_all([poison], timeout=5)[poison]
    assert d["ErrorCode"] == 502 and "died 3 times" in d["ErrorMessage"], d
    assert d["ImgList"] == [] and stack.result_files(poison) == []

    details = stack.wait_all(others, timeout=60)
    for uid in others:
        assert details[uid]["Status"] == "Finished" and len(details[uid]["ImgList"]) == 2, details[uid]
    # the workers go on (the poison's copies still queued when it ended are skipped, not run); the last test of
    # the module: no need to wait for every restarted worker
    later = stack.submit(1)
    assert stack.wait_all(later, timeout=60)[later[0]]["Status"] == "Finished"
    assert stack.record(poison).get("status") == "Error"
