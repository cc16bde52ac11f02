"""A cluster with nothing shared but Redis and a bucket (docs/deployment.md "Object storage"), with real parts:
moto's S3 server on 127.0.0.1 (in this process, so that the test can stop it and start it again with its
objects), gateways (``python -m uvicorn app.main:app``) and one Celery worker (``--pool solo``) as subprocesses,
each with a data dir of its own, all on ``ATELIER_STORAGE_URL=s3://...`` and boto3's standard environment.

- a ResizeImage and a GenerateFromMannequin finish and download through the gateway's links, and through the
  bucket's presigned links of a second gateway (``ATELIER_RESULT_LINKS=presigned``); no data dir holds a file;
- a worker killed with SIGKILL mid-job: its task runs again on the restarted worker and finishes;
- the bucket's server stopped: a submission answers 150 naming the storage and a download 503; a job that
  reads its input meanwhile is tried again and finishes once the server is back, one whose budget runs out
  ends in Error 508; new tasks finish once it is back;
- retention: a gateway with a short ``ATELIER_RESULT_RETENTION_S`` deletes every input and result object.

One worker, shared by every test (its budget of a ResizeImage, ``ATELIER_JOB_TIME_BASE_S``, is short so that
the 508 case is quick). The figures for the docs' failure table are printed (``pytest -s``).
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from app.contract.codes import STORAGE_UNAVAILABLE_MESSAGE, ErrorCode, RetCode
from app.contract.queue import make_celery
from app.contract.storage_s3 import CLIENT_CONFIG
from support.api import ROOT, example_inputs, free_port, generate_body, png_b64, signed
from support.s3 import MotoServer, new_bucket, s3_env, s3_environ
from support.waiting import wait_until

pytestmark = pytest.mark.slow

PREFIX = "cluster"
LEASE_S = 4.0
REAP_INTERVAL_S = 0.5
#: a ResizeImage's time budget on the worker (the 508 case waits this long); a generation's adds
#: PER_MP_STEP_S per megapixel, step and image: plenty for the demo model on a busy CPU
JOB_BASE_S = 6.0
PER_MP_STEP_S = 200.0
TIMEOUT_S = 60.0


def _photo(seed: int = 7, size: tuple[int, int] = (80, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def _resize_body(seed: int) -> dict:
    return signed({"Action": "ResizeImage", "Image": png_b64(_photo(seed)), "Width": 64, "Height": 64})


class Proc:
    """A gateway or the worker: a subprocess started (and started again) with its own environment and log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path):
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log = logs / f"{name}.0.log"

    def start(self) -> Proc:
        self.starts += 1
        self.log = self.logs / f"{self.name}.{self.starts}.log"
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class Gateway(Proc):
    def __init__(self, name: str, env: dict[str, str], logs: Path):
        port = str(free_port())
        env = {**env, "ATELIER_PORT": port, "ATELIER_DATA_DIR": str(logs / f"data-{name}")}
        super().__init__(name, [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                "--port", port], env, logs)
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = Path(env["ATELIER_DATA_DIR"])

    def wait_up(self) -> None:
        wait_until(f"gateway {self.name} up", lambda: self._healthy(), TIMEOUT_S, on_fail=self.text)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, body: dict) -> dict:
        r = httpx.post(self.url + "/", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def submit(self, body: dict) -> str:
        out = self.post(body)
        assert out["RetCode"] == 0, out
        return out["TaskUID"]

    def details(self, uid: str) -> dict:
        return self.post(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]

    def wait_ended(self, uid: str, timeout: float = TIMEOUT_S, on_fail=lambda: "") -> dict:
        return wait_until(f"task {uid} ended", lambda: (d := self.details(uid))["Status"] in ("Finished", "Error",
                                                                                       "Canceled") and d,
                     timeout, on_fail=on_fail)


class Worker(Proc):
    def __init__(self, env: dict[str, str], logs: Path, queue: str):
        self.node = f"s3w-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        env = {**env, "ATELIER_DATA_DIR": str(logs / "data-worker")}
        super().__init__("worker", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                                    "--pool", "solo", "-Q", queue, "--loglevel", "INFO", "-n", self.node], env, logs)
        self.data_dir = Path(env["ATELIER_DATA_DIR"])

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{self.proc.pid}"

    def wait_ready(self) -> None:
        wait_until("the worker ready", lambda: " ready." in self.text(), 120, on_fail=self.text)


class Cluster:
    def __init__(self, base: Path, env: dict[str, str], s3: MotoServer, bucket: str):
        self.base, self.env, self.s3, self.bucket = base, env, s3, bucket
        self.queue = env["ATELIER_QUEUE"]
        self.gateway = Gateway("gateway", env, base)
        self.presigned = Gateway("presigned", {**env, "ATELIER_RESULT_LINKS": "presigned"}, base)
        self.worker = Worker(env, base, self.queue)
        self.procs: list[Proc] = [self.gateway, self.presigned, self.worker]
        self.s3_client = boto3.session.Session().client("s3", endpoint_url=s3.endpoint, config=CLIENT_CONFIG)
        self.celery = make_celery("atelier-test-control")
        self.redis = redis.Redis.from_url(env["ATELIER_REDIS_URL"], decode_responses=True)

    def keys(self, under: str) -> list[str]:
        """The keys of the bucket's objects under ``<prefix>/<under>``, without the prefix."""
        pages = self.s3_client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{PREFIX}/{under}")
        return sorted(obj["Key"][len(PREFIX) + 1:] for page in pages for obj in page.get("Contents", ()))

    def objects(self, under: str) -> dict[str, bytes]:
        """The bucket's objects under ``<prefix>/<under>``, by their key after the prefix."""
        return {key: self.s3_client.get_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}")["Body"].read()
                for key in self.keys(under)}

    def record(self, uid: str) -> dict[str, str]:
        """The task's hash in Redis."""
        return self.redis.hgetall(f"atelier:task:{uid}")

    def consuming(self, on: bool) -> None:
        """Make the worker stop (or start again) taking jobs from the queue (Celery's remote control): a job
        submitted meanwhile waits in the queue."""
        control = self.celery.control
        fn = control.add_consumer if on else control.cancel_consumer
        replies = fn(self.queue, destination=[self.worker.node], reply=True, timeout=20)
        assert replies and self.worker.node in replies[0], replies

    def worker_lines(self, text: str) -> list[str]:
        return [line for log in sorted(self.base.glob("worker.*.log"))
                for line in log.read_text(errors="replace").splitlines() if text in line]

    def close(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture(scope="module")
def cluster(atelier_env, tmp_path_factory):
    base = tmp_path_factory.mktemp("s3-cluster")
    s3 = MotoServer().start()
    with s3_environ(s3.endpoint):
        yield from _cluster(base, atelier_env, s3)


def _cluster(base: Path, atelier_env: dict[str, str], s3: MotoServer):
    bucket = new_bucket(s3.endpoint)
    env = {**os.environ, **atelier_env, **s3_env(s3.endpoint),
           "ATELIER_STORAGE_URL": f"s3://{bucket}/{PREFIX}", "ATELIER_QUEUE": f"atelier-s3-{uuid.uuid4().hex[:8]}",
           "ATELIER_LEASE_S": str(LEASE_S), "ATELIER_REAP_INTERVAL_S": str(REAP_INTERVAL_S),
           "ATELIER_JOB_TIME_BASE_S": str(JOB_BASE_S), "ATELIER_JOB_TIME_PER_MEGAPIXEL_STEP_S": str(PER_MP_STEP_S),
           "ATELIER_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "ATELIER_PROGRESS_INTERVAL_S": "0",
           "PYTHONPATH": str(ROOT)}
    env.pop("AWS_PROFILE", None)
    c = Cluster(base, env, s3, bucket)
    try:
        for p in c.procs:
            p.start()
        c.gateway.wait_up()
        c.presigned.wait_up()
        c.worker.wait_ready()
        yield c
    finally:
        c.close()
        s3.stop()


def test_tasks_finish_and_download_through_the_gateway_and_nothing_is_kept_on_disk(cluster):
    man, mask = example_inputs(128, 128)
    gen = cluster.gateway.submit(signed(generate_body(Width=128, Height=128, BatchSize=2,
                                                      ImageAndMaskList=[png_b64(man), png_b64(mask)])))
    resize = cluster.gateway.submit(_resize_body(1))
    for uid, count in ((gen, 2), (resize, 1)):
        d = cluster.gateway.wait_ended(uid, on_fail=cluster.worker.text)
        assert d["Status"] == "Finished" and len(d["ImgList"]) == count, d
        stored = cluster.objects(f"results/{uid}/")
        assert sorted(stored) == [f"results/{uid}/{i}.png" for i in range(count)]
        for i, url in enumerate(d["ImgList"]):
            assert url.startswith(cluster.gateway.url + f"/results/{uid}/")  # the gateway's signed link
            r = httpx.get(url, timeout=30)
            assert r.status_code == 200 and r.content == stored[f"results/{uid}/{i}.png"]
    got = Image.open(io.BytesIO(httpx.get(d["ImgList"][0], timeout=30).content))
    assert np.array_equal(np.asarray(got), np.asarray(_photo(1).resize((64, 64), Image.Resampling.LANCZOS)))
    assert len(cluster.keys("inputs/")) == 3  # the mannequin, its mask and the photo, each once
    # nothing but the bucket holds them: no data dir has an input or a result
    for p in (cluster.gateway, cluster.presigned, cluster.worker):
        assert not (p.data_dir / "inputs").exists() and not (p.data_dir / "results").exists(), p.name


def test_presigned_links_download_from_the_bucket(cluster):
    uid = cluster.presigned.submit(_resize_body(2))
    d = cluster.presigned.wait_ended(uid, on_fail=cluster.worker.text)
    assert d["Status"] == "Finished" and len(d["ImgList"]) == 1, d
    url = d["ImgList"][0]
    assert url.startswith(f"{cluster.s3.endpoint}/{cluster.bucket}/{PREFIX}/results/{uid}/0.png?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content == cluster.objects(f"results/{uid}/")[f"results/{uid}/0.png"]
    # the same task through the other gateway: its own signed link, same bytes
    other = cluster.gateway.details(uid)["ImgList"][0]
    assert other.startswith(cluster.gateway.url) and httpx.get(other, timeout=30).content == r.content


def test_a_worker_killed_mid_job_is_recovered_by_the_restarted_worker(cluster):
    man, mask = example_inputs(256, 256)
    uid = cluster.gateway.submit(signed(generate_body(Width=256, Height=256, BatchSize=2, Seed=99,
                                                      ImageAndMaskList=[png_b64(man), png_b64(mask)])))

    def mid_job():
        h = cluster.record(uid)
        return h.get("status") == "Running" and 1 <= int(h.get("step", 0)) < int(h.get("total_steps", 0))

    wait_until("the generation running mid-job", mid_job, TIMEOUT_S, step=0.02, on_fail=cluster.worker.text)
    cluster.worker.kill()
    killed, killed_at = time.monotonic(), time.time()
    cluster.worker.start()  # what a supervisor does
    wait_until("the killed task sent again", lambda: cluster.record(uid).get("deaths") == "1", LEASE_S + 10,
          on_fail=cluster.gateway.text)
    requeued = time.monotonic() - killed
    d = cluster.gateway.wait_ended(uid, timeout=120, on_fail=cluster.worker.text)
    recovered = time.monotonic() - killed
    rerun = float(cluster.record(uid)["started_at"]) - killed_at
    assert d["Status"] == "Finished" and len(d["ImgList"]) == 2, d
    assert any("run again (attempt 2)" in n for n in d["Notes"]), d["Notes"]
    assert sorted(cluster.objects(f"results/{uid}/")) == [f"results/{uid}/0.png", f"results/{uid}/1.png"]
    for url in d["ImgList"]:
        assert httpx.get(url, timeout=30).content.startswith(b"\x89PNG")
    cluster.worker.wait_ready()
    print(f"\n[s3-cluster] worker SIGKILLed mid-job -> task sent again {requeued:.1f}s (lease {LEASE_S:.0f}s, reaper"
          f" every {REAP_INTERVAL_S}s), running again on the restarted worker {rerun:.1f}s (its start included),"
          f" Finished {recovered:.1f}s")


def test_a_stopped_bucket_answers_150_retries_running_jobs_and_resumes(cluster):
    gw, s3 = cluster.gateway, cluster.s3
    done = gw.submit(_resize_body(3))
    assert gw.wait_ended(done, on_fail=cluster.worker.text)["Status"] == "Finished"
    link = gw.details(done)["ImgList"][0]

    # two tasks stored while the bucket is up, left queued (the worker stops taking jobs)
    cluster.consuming(False)
    queued = [gw.submit(_resize_body(4)), gw.submit(_resize_body(5))]
    s3.stop()
    stopped = time.monotonic()
    try:
        out = gw.post(_resize_body(6))
        assert out["RetCode"] == RetCode.UNAVAILABLE and out["Message"] == STORAGE_UNAVAILABLE_MESSAGE, out
        answered_150 = time.monotonic() - stopped
        r = httpx.get(link, timeout=60)
        assert r.status_code == 503 and STORAGE_UNAVAILABLE_MESSAGE in r.text, (r.status_code, r.text)

        # the worker takes one: it cannot read its input and tries again; the bucket comes back
        cluster.consuming(True)
        first = wait_until("the worker retrying", lambda: next((uid for uid in queued if cluster.worker_lines(
            f"task {uid}: the storage failed reading inputs")), None), TIMEOUT_S, on_fail=cluster.worker.text)
    finally:
        s3.start()
    back = time.monotonic()
    d = gw.wait_ended(first, on_fail=cluster.worker.text)
    resumed = time.monotonic() - back
    assert d["Status"] == "Finished", d
    assert cluster.worker_lines(f"task {first}: the storage answered again after")
    assert httpx.get(link, timeout=30).status_code == 200  # the link works again
    for uid in queued:
        assert gw.wait_ended(uid, on_fail=cluster.worker.text)["Status"] == "Finished"

    # the bucket down for a whole time budget: Error 508, naming the storage
    cluster.consuming(False)
    fails = gw.submit(_resize_body(7))
    s3.stop()
    try:
        cluster.consuming(True)
        d = gw.wait_ended(fails, timeout=JOB_BASE_S + TIMEOUT_S, on_fail=cluster.worker.text)
    finally:
        s3.start()
    back = time.monotonic()
    assert d["Status"] == "Error" and d["ErrorCode"] == ErrorCode.STORAGE, d
    assert d["ErrorMessage"].startswith("storage unavailable: reading inputs failed"), d
    assert len(cluster.worker_lines(f"task {fails}: the storage failed reading inputs")) >= 2

    # back: a new submission is stored and finishes
    after = gw.submit(_resize_body(8))
    assert gw.wait_ended(after, on_fail=cluster.worker.text)["Status"] == "Finished"
    new_task = time.monotonic() - back
    print(f"\n[s3-cluster] bucket stopped: 150 answered in {answered_150:.2f}s; a job waiting for its input finished"
          f" {resumed:.1f}s after the bucket came back; one whose {JOB_BASE_S:.0f}s budget ran out ended in 508;"
          f" bucket back -> a new task submitted and Finished in {new_task:.1f}s")


def test_retention_deletes_the_objects_from_the_bucket(cluster):
    assert cluster.keys("inputs/") and cluster.keys("results/")
    sweeper = Gateway("sweeper", {**cluster.env, "ATELIER_RESULT_RETENTION_S": "1",
                                  "ATELIER_CLEANUP_INTERVAL_S": "1"}, cluster.base)
    cluster.procs.append(sweeper)
    started = time.monotonic()
    sweeper.start()
    wait_until("the bucket swept", lambda: not cluster.keys("inputs/") and not cluster.keys("results/"), TIMEOUT_S,
          step=0.2, on_fail=sweeper.text)
    swept = time.monotonic() - started
    sweeper.kill()
    print(f"\n[s3-cluster] a gateway with a 1 s retention emptied the bucket's inputs/ and results/ {swept:.1f}s after"
          " it was started")
