"""What a worker tells the outside about itself: its Prometheus metrics and that it is alive.

**Metrics** (docs/deployment.md "Metrics"), in the process's default Prometheus registry, served by
:func:`serve_metrics` on ``ATELIER_WORKER_METRICS_PORT + ATELIER_WORKER_INDEX`` when that port is set:

- per job, by its Main ModelCode: the histograms ``atelier_job_queue_wait_seconds``, ``_load_seconds``,
  ``_inference_seconds`` and ``_store_seconds``; ``atelier_jobs_total{model,outcome}``,
  ``atelier_job_errors_total{model,code}`` and ``atelier_images_total{model}`` (:func:`record_job`, called once
  at the end of each task by :func:`workers.lifecycle.task.run_task`);
- read at scrape time (:class:`RuntimeCollector`): the model cache's hits, misses (loads), evictions and load
  time by kind, the bytes it holds and its budget by place, the composition cache's hits, misses and bytes,
  and the GPU memory torch has allocated and reserved.

**Liveness**: a worker consuming a queue keeps its id in the sorted set ``atelier:workers:<queue>``, scored
with the Redis server's time until which it counts as alive (:data:`ALIVE_TTL_S` ahead), renewed every
:data:`ALIVE_EVERY_S` by a :class:`Heartbeat` thread and removed on a clean shutdown. The gateway's
``GET /readyz`` counts the members not expired (``app/metrics.py`` ``live_workers``, which reads this key:
keep the two in step). Redis's own clock is used on both sides, so hosts whose clocks differ agree.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable

import redis
from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.contract.queue import live_workers_key
from app.contract.settings import Settings
from workers.lru import Lru
from workers.models.cache import PLACES, ModelCache

log = logging.getLogger("atelier.worker")
disable_created_metrics()  # no *_created series: they double the series and say nothing here

# --- per job ---------------------------------------------------------------------------------------------

_PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
JOB_QUEUE_WAIT = Histogram("atelier_job_queue_wait_seconds", "From the task's creation to its start on a worker",
                           ["model"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
JOB_LOAD = Histogram("atelier_job_load_seconds", "Time a job spent loading models (0 when all were cached)",
                     ["model"], buckets=(0.001, *_PHASE_BUCKETS))
JOB_INFERENCE = Histogram("atelier_job_inference_seconds", "Denoising and decoding time of a finished job",
                          ["model"], buckets=_PHASE_BUCKETS)
JOB_STORE = Histogram("atelier_job_store_seconds", "Time a finished job spent writing its PNGs and ending the task",
                      ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOBS = Counter("atelier_jobs_total", "Jobs this worker ran, by how they ended: finished, error, canceled, or"
               " lost (taken over for a dead worker's; the other run ends it)", ["model", "outcome"])
JOB_ERRORS = Counter("atelier_job_errors_total", "Jobs that ended in Error, by ErrorCode", ["model", "code"])
IMAGES = Counter("atelier_images_total", "Images made (and stored) by finished jobs", ["model"])

OUTCOMES = ("finished", "error", "canceled", "lost")


def record_job(model: str, outcome: str, *, queue_wait: float | None = None, load: float | None = None,
               inference: float | None = None, store: float | None = None, images: int = 0,
               error_code: int | None = None) -> None:
    """Count one job that ended here (``outcome`` in :data:`OUTCOMES`) and observe the phases it went through
    (``None``: a phase it did not reach)."""
    JOBS.labels(model, outcome).inc()
    if error_code is not None:
        JOB_ERRORS.labels(model, str(int(error_code))).inc()
    if images:
        IMAGES.labels(model).inc(images)
    for histogram, seconds in ((JOB_QUEUE_WAIT, queue_wait), (JOB_LOAD, load), (JOB_INFERENCE, inference),
                               (JOB_STORE, store)):
        if seconds is not None:
            histogram.labels(model).observe(seconds)


# --- read at scrape time ------------------------------------------------------------------------------------

class RuntimeCollector(Collector):
    """The model cache's counters and sizes, the composition cache's (when the worker keeps one), and the GPU
    memory of the worker's device, read when scraped (nothing here takes the model cache's lock: a scrape
    never waits for a model that is loading)."""

    def __init__(self, cache: ModelCache, compositions: Lru | None = None):
        self.cache = cache
        self.compositions = compositions

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        stats = self.cache.stats
        by_kind = sorted(dict(stats.kinds).items())
        for kind, k in by_kind:
            families["hits"].add_metric([kind], k.hits)
            families["misses"].add_metric([kind], k.loads)
            families["evictions"].add_metric([kind], k.evictions)
            families["load_seconds"].add_metric([kind], k.load_seconds)
        for place in PLACES:
            families["bytes"].add_metric([place], stats.held_bytes[place])
            families["budget"].add_metric([place], self.cache.budgets[place])
        yield from families.values()
        if self.compositions is not None:
            compositions = self.compositions
            yield CounterMetricFamily("atelier_composition_cache_hits", "Jobs that found their composition (photo"
                                      " and mask at the output size) in the worker's cache",
                                      value=compositions.hits)
            yield CounterMetricFamily("atelier_composition_cache_misses", "Jobs with a clothes mask that composed"
                                      " their photo and mask (and kept the result)", value=compositions.misses)
            yield GaugeMetricFamily("atelier_composition_cache_bytes", "Bytes of the compositions the worker keeps"
                                    " (ATELIER_COMPOSITION_CACHE_BYTES)", value=compositions.nbytes)
        yield from _gpu_memory(self.cache.device)

    @staticmethod
    def _families() -> dict[str, Metric]:
        return {
            "hits": CounterMetricFamily("atelier_model_cache_hits", "Models a job found in the cache",
                                        labels=["kind"]),
            "misses": CounterMetricFamily("atelier_model_cache_misses", "Models loaded because they were not"
                                          " cached (loads)", labels=["kind"]),
            "evictions": CounterMetricFamily("atelier_model_cache_evictions", "Models evicted from the cache",
                                             labels=["kind"]),
            "load_seconds": CounterMetricFamily("atelier_model_cache_load_seconds", "Time spent loading models",
                                                labels=["kind"]),
            "bytes": GaugeMetricFamily("atelier_model_cache_bytes", "Bytes of the models the cache holds (device:"
                                       " ATELIER_MODEL_CACHE_BYTES, host: ATELIER_MODEL_CACHE_RAM_BYTES)",
                                       labels=["place"]),
            "budget": GaugeMetricFamily("atelier_model_cache_budget_bytes", "The cache's budget of each place",
                                        labels=["place"]),
        }


def _gpu_memory(device: str) -> list[Metric]:
    """torch's allocated and reserved bytes on a CUDA device, and its total; nothing on a CPU worker or
    before CUDA is initialized (reading them must not initialize it)."""
    if not device.startswith("cuda"):
        return []
    import torch

    if not torch.cuda.is_initialized():
        return []
    allocated = GaugeMetricFamily("atelier_gpu_memory_allocated_bytes", "GPU memory held by tensors (torch)",
                                  labels=["device"])
    reserved = GaugeMetricFamily("atelier_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching"
                                 " allocator (what the process holds of the GPU)", labels=["device"])
    total = GaugeMetricFamily("atelier_gpu_memory_total_bytes", "The GPU's memory", labels=["device"])
    allocated.add_metric([device], torch.cuda.memory_allocated(device))
    reserved.add_metric([device], torch.cuda.memory_reserved(device))
    total.add_metric([device], torch.cuda.get_device_properties(device).total_memory)
    return [allocated, reserved, total]


def metrics_port(settings: Settings) -> int | None:
    """Where this worker serves its metrics: ``ATELIER_WORKER_METRICS_PORT`` plus ``ATELIER_WORKER_INDEX``
    (0 when unset); None when the port is 0 (not served)."""
    if settings.worker_metrics_port <= 0:
        return None
    index = os.environ.get("ATELIER_WORKER_INDEX", "").strip() or "0"
    if not index.isdigit():
        raise ValueError(f"ATELIER_WORKER_INDEX must be a number >= 0, not {index!r}")
    return settings.worker_metrics_port + int(index)


def serve_metrics(settings: Settings, cache: ModelCache, compositions: Lru | None = None) -> int | None:
    """Add ``cache``, ``compositions`` (and the GPU) to the process's metrics and serve them over HTTP
    (``/metrics``, on every interface) at :func:`metrics_port`. Returns the port, or None when not served; a port
    that cannot be taken is logged, and the worker goes on without metrics."""
    REGISTRY.register(RuntimeCollector(cache, compositions))
    try:
        port = metrics_port(settings)
    except ValueError as e:
        log.error("metrics not served: %s", e)
        return None
    if port is None:
        return None
    try:
        start_http_server(port)
    except OSError as e:
        log.error("metrics not served: port %d: %s", port, e.strerror or e)
        return None
    log.info("metrics on port %d (/metrics)", port)
    return port


# --- liveness ----------------------------------------------------------------------------------------------

ALIVE_TTL_S = 15.0
ALIVE_EVERY_S = 5.0


# KEYS: the live-worker set of each queue. ARGV: worker id, seconds it counts as alive. Redis's clock.
_ALIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[2])))
end
return #KEYS
"""


def announce_alive(r: redis.Redis, worker_id: str, queues: Iterable[str], ttl_s: float = ALIVE_TTL_S) -> None:
    """Count ``worker_id`` alive on ``queues`` for the next ``ttl_s`` seconds."""
    keys = [live_workers_key(q) for q in queues]
    if keys:
        r.eval(_ALIVE, len(keys), *keys, worker_id, ttl_s)


def withdraw(r: redis.Redis, worker_id: str, queues: Iterable[str]) -> None:
    """``worker_id`` no longer counts as alive on ``queues``."""
    pipe = r.pipeline()
    for q in queues:
        pipe.zrem(live_workers_key(q), worker_id)
    pipe.execute()


class Heartbeat:
    """Keeps ``worker_id`` alive on ``queues`` from a daemon thread: announced at :meth:`start`, renewed every
    ``every_s`` (a failed renewal is logged and tried again), withdrawn at :meth:`stop`."""

    def __init__(self, r: redis.Redis, worker_id: str, queues: Iterable[str], *, every_s: float = ALIVE_EVERY_S,
                 ttl_s: float = ALIVE_TTL_S, also: Callable[[], None] | None = None):
        self.r, self.worker_id, self.queues = r, worker_id, sorted(queues)
        self.every_s, self.ttl_s, self.also = every_s, ttl_s, also
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        log.info("alive on queue(s) %s as %s", ", ".join(self.queues), self.worker_id)
        return self

    def beat(self) -> None:
        """Announce the worker alive now (and run ``also``, what the worker says with each beat)."""
        try:
            announce_alive(self.r, self.worker_id, self.queues, self.ttl_s)
            if self.also is not None:
                self.also()
        except redis.RedisError as e:
            log.warning("could not announce this worker alive: %s", e)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            withdraw(self.r, self.worker_id, self.queues)
        except redis.RedisError as e:  # it expires by itself within ttl_s
            log.warning("could not withdraw this worker: %s", e)
