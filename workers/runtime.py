"""One object per worker process that owns everything jobs share, built once at worker start.

:class:`WorkerRuntime` holds the task store (Redis), the file storage, the model registry (re-read when
``models_config`` changes), the one model cache with the worker's models by kind, and the control-map
cache. ``workers/tasks.py`` builds it when the worker starts, warms up the models that ask for it
(:meth:`WorkerRuntime.warm_up`) and hands it to every job (its ``RUNNERS``, one per job kind of ``workers/jobs``);
tests build their own.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

from app.contract.redis_conn import broker_url, connect
from app.contract.registry import Registry, get_registry
from app.contract.settings import Settings
from app.contract.storage import Storage, open_storage
from app.contract.taskstore import TaskStore
from workers.adapters.encoder import ReferenceEmbeds, embeds_cache
from workers.inference.compose import Composition
from workers.inference.preprocess import MapCache
from workers.lifecycle.overlap import Finisher, LookAhead
from workers.lifecycle.storage_retry import RetryingStore
from workers.logs import quiet_libraries
from workers.lru import Lru
from workers.models.cache import ModelCache
from workers.models.device import pick_device, resolve_dtype
from workers.models.kinds import Loaders, WorkerModels
from workers.models.sizes import fmt_bytes
from workers.models.warmup import WarmupReport, warm_up

log = logging.getLogger("atelier.worker")


#: (mannequin's storage key, clothes mask's storage key, width, height, ResizeMode, InvertMask)
CompositionKey = tuple[str, str, int, int, str, bool]


def composition_cache(max_bytes: int) -> Lru[CompositionKey, Composition] | None:
    """The worker's cache of compositions (``ATELIER_COMPOSITION_CACHE_BYTES``; 0 = none). Its inputs are stored
    by content hash, so a key names the same pixels for as long as they are stored. A composition counts six
    bytes a pixel: its RGB image, its clothes mask, its figure and the seam that :func:`paste_back` adds to it.
    Nobody changes a composition (its arrays are read-only), so entries are shared, not copied."""
    if max_bytes <= 0:
        return None
    return Lru(max_entries=64, max_bytes=max_bytes, size=lambda comp: 6 * comp.width * comp.height)


def this_worker_id() -> str:
    """Who this process is, in task leases and among the live workers: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerRuntime:
    settings: Settings
    store: TaskStore
    storage: Storage
    cache: ModelCache
    models: WorkerModels
    maps: MapCache = field(default_factory=MapCache)
    #: IP-Adapter reference embeddings by (encoder, image content hash, kind) (:func:`embeds_cache`); None = none kept
    embeds: Lru[tuple, ReferenceEmbeds] | None = field(default_factory=embeds_cache)
    #: the compositions of recent jobs by their inputs and geometry (:func:`composition_cache`); None = none kept
    compositions: Lru[CompositionKey, Composition] | None = None
    #: who holds a task's lease: this process, on this host
    worker_id: str = field(default_factory=this_worker_id)
    #: the overlap of a job's CPU work with its neighbours' denoising (:mod:`workers.lifecycle.overlap`): set by
    #: the Celery worker (``workers/tasks.py``, ``ATELIER_WORKER_OVERLAP``); None here: each job stores its results
    #: itself and nothing is prepared ahead (the tests that run jobs in their own process)
    finisher: Finisher | None = None
    lookahead: LookAhead | None = None

    @classmethod
    def build(cls, settings: Settings, *, store: TaskStore | None = None,
              loaders: Loaders | None = None) -> WorkerRuntime:
        """Everything from ``settings``: the device and dtype (``ATELIER_DEVICE``, ``ATELIER_DTYPE``), the
        model cache's budgets, the task store at ``ATELIER_REDIS_URL``. Loads no model."""
        quiet_libraries()
        device, _ = pick_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        cache = ModelCache(device_bytes=settings.model_cache_bytes, host_bytes=settings.model_cache_ram_bytes,
                           device=device)
        models = WorkerModels(cache, device=device, dtype=dtype, models_dir=settings.models_dir, loaders=loaders)
        store = store or TaskStore(connect(settings.redis_url or broker_url()), settings.result_retention_s,
                                   wait_replicas=settings.redis_wait_replicas,
                                   wait_timeout_ms=settings.redis_wait_timeout_ms)
        log.info("worker runtime on %s (%s): model cache %s on the device, %s in host RAM", device,
                 str(dtype).removeprefix("torch."), fmt_bytes(settings.model_cache_bytes),
                 fmt_bytes(settings.model_cache_ram_bytes))
        storage = Storage(RetryingStore(open_storage(settings).objects))  # a running job's calls tried again
        return cls(settings, store, storage, cache, models,
                   compositions=composition_cache(settings.composition_cache_bytes))

    @property
    def registry(self) -> Registry:
        """The deployment's models, re-read when the models config file changes."""
        return get_registry(self.settings.models_config)

    def warm_up(self) -> WarmupReport:
        """Generate once at each size the Main models' ``speed:`` options ask to warm up
        (:func:`workers.models.warmup.warm_up`), so that the first job does not pay a compile. Never raises: a
        models config that cannot be read, or anything else going wrong, is logged and the worker starts cold
        (the jobs will report a config error themselves)."""
        try:
            return warm_up(self.models, self.registry)
        except Exception as e:  # noqa: BLE001 - the worker must start whatever happens here
            log.error("warm-up skipped (%s: %s); the worker starts without it", type(e).__name__, e)
            return WarmupReport()
