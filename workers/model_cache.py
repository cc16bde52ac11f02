"""Pipelines (and external VAEs) loaded once per worker process and kept warm under a memory budget.

* :meth:`PipelineCache.get` returns the warm pipeline of a Main model, loading it on first use with
  :func:`workers.loading.load_main_pipeline`. Entries are keyed by ModelCode and reloaded when the models
  config changes what that code points at (source, family or scheduler).
* Memory: every cached pipeline and VAE counts its parameters + buffers (in bytes, as loaded on the device
  in the dtype of ``settings.dtype``) against ``settings.model_cache_bytes``. Before a load, least recently
  used items are evicted to make room for the model's size estimated from its safetensors headers; after
  it, again until the measured total fits. A model larger than the whole budget still loads, alone. The
  item being used by the current job is never evicted to make room for its own VAE. Loads and evictions are
  logged with sizes. A CUDA out-of-memory error while loading evicts everything else and retries once.
* External VAEs (the models config's ``vaes:`` section) are cached by family; :meth:`PipelineCache.vae_for`
  swaps one into the pipeline for the duration of a job and always puts the checkpoint's own VAE back.

Light to import: torch and diffusers are imported when the cache is built, not when this module is.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from app.core.registry import ModelEntry, ModelSource, Registry
from app.core.settings import Settings
from workers.loading import ModelLoadError

__all__ = ["ModelLoadError", "PipelineCache"]

log = logging.getLogger("atelier.worker.cache")


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


@dataclass
class _Item:
    label: str
    obj: Any
    size: int
    fingerprint: Any


class PipelineCache:
    """Warm pipelines and VAEs of one worker process, least recently used evicted beyond the budget.

    ``load_main`` / ``load_vae`` replace :func:`workers.loading.load_main_pipeline` /
    :func:`workers.loading.load_vae` (tests count loads with them).
    """

    def __init__(self, settings: Settings, *, load_main: Callable[..., Any] | None = None,
                 load_vae: Callable[..., Any] | None = None):
        from workers import loading
        from workers.pipeline import pick_device

        self.settings = settings
        self.device, _ = pick_device(settings.device)
        self.dtype = loading.resolve_dtype(settings.dtype, self.device)
        self.budget = int(settings.model_cache_bytes)
        self._load_main = load_main or loading.load_main_pipeline
        self._load_vae = load_vae or loading.load_vae
        self._items: OrderedDict[tuple[str, Any], _Item] = OrderedDict()
        self._lock = threading.RLock()
        self._registry: Registry | None = None
        self._pipe_keys: dict[str, tuple] = {}  # ModelCode -> key of its pipeline in _items
        self.loads = 0
        self.evictions = 0

    # --- inspection -------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(item.size for item in self._items.values())

    def cached(self) -> list[tuple[str, int]]:
        """(label, bytes) of what is warm, least recently used first; labels are ModelCodes and ``vae:<family>``."""
        with self._lock:
            return [(item.label, item.size) for item in self._items.values()]

    # --- main pipelines -----------------------------------------------------------------------------

    def get(self, entry: ModelEntry, registry: Registry):
        """The warm pipeline of the Main model ``entry``; loads it (making room) on first use.

        Raises :class:`ModelLoadError`.
        """
        # Models with the same weights, family and scheduler (e.g. one checkpoint listed twice with
        # different default control) share one warm pipeline.
        fingerprint = (entry.source, entry.family, entry.defaults.scheduler)
        key = ("pipe", fingerprint)
        with self._lock:
            self._registry = registry
            previous = self._pipe_keys.get(entry.model_code)
            self._pipe_keys[entry.model_code] = key
            if previous is not None and previous != key and previous in self._items \
                    and previous not in self._pipe_keys.values():
                self._evict(previous, f"the models config entry of {entry.model_code} changed")
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item.obj

            from workers.loading import estimate_bytes

            estimate = estimate_bytes(entry.source, self.dtype)
            self._make_room(estimate or 0, entry.model_code, protect=())
            log.info("loading pipeline %s from %s on %s (%s, estimated %s)", entry.model_code,
                     entry.source.describe(), self.device, str(self.dtype).removeprefix("torch."),
                     fmt_bytes(estimate))
            pipe = self._load(entry.model_code, protect=(),
                              load=lambda: self._load_main(entry, registry, self.device, self.dtype,
                                                           self.settings.models_dir))
            return self._store(key, entry.model_code, pipe, fingerprint)

    # --- external VAEs --------------------------------------------------------------------------------

    def get_vae(self, family: str, source: ModelSource, protect: tuple[tuple[str, Any], ...] = ()):
        """The warm external VAE of ``family`` loaded from ``source``. Raises :class:`ModelLoadError`."""
        key = ("vae", family)
        label = f"vae:{family}"
        with self._lock:
            item = self._items.get(key)
            if item is not None and item.fingerprint == source:
                self._items.move_to_end(key)
                return item.obj
            if item is not None:
                self._evict(key, "the models config's vaes entry changed")

            from workers.loading import estimate_bytes

            estimate = estimate_bytes(source, self.dtype)
            self._make_room(estimate or 0, label, protect=protect)
            log.info("loading VAE %s from %s (estimated %s)", label, source.describe(), fmt_bytes(estimate))
            vae = self._load(label, protect=protect,
                             load=lambda: self._load_vae(source, self.device, self.dtype, family=family,
                                                         demo_dir=self.settings.models_dir, label=label))
            return self._store(key, label, vae, source, protect=protect)

    @contextmanager
    def vae_for(self, entry: ModelEntry, use_main_model_vae: bool, registry: Registry | None = None) -> Iterator[Any]:
        """``with cache.vae_for(entry, use_main_model_vae) as pipe:`` -> the warm pipeline of ``entry``,
        with ``pipe.vae`` replaced by the deployment's external VAE of ``entry.family`` when
        ``use_main_model_vae`` is False and the models config's ``vaes:`` section has one. The checkpoint's
        own VAE object is put back when the block ends, whatever happens in it, so the next job sees the
        base pipeline. ``registry`` defaults to the one of the last :meth:`get`.
        """
        registry = registry or self._registry
        if registry is None:
            raise RuntimeError("vae_for needs a registry (pass one, or call get() first)")
        pipe = self.get(entry, registry)
        source = None if use_main_model_vae else registry.vae_source(entry.family)
        if source is None:
            yield pipe
            return
        vae = self.get_vae(entry.family, source, protect=(self._pipe_keys[entry.model_code],))
        original = pipe.vae
        own = getattr(getattr(original, "config", None), "latent_channels", None)
        theirs = getattr(getattr(vae, "config", None), "latent_channels", None)
        if own is not None and theirs is not None and own != theirs:
            raise ModelLoadError(f"vae:{entry.family}", f"it has {theirs} latent channels, model"
                                                        f" {entry.model_code} {own}")
        pipe.vae = vae
        try:
            yield pipe
        finally:
            pipe.vae = original

    # --- internals ------------------------------------------------------------------------------------

    def _load(self, label: str, protect: tuple, load: Callable[[], Any]):
        from workers.loading import is_oom

        try:
            obj = load()
        except Exception as e:
            if not is_oom(e):
                raise
            others = [k for k in self._items if k not in protect]
            if not others:
                raise ModelLoadError(label, f"out of GPU memory while loading ({_oom_hint(self)})") from e
            log.warning("out of memory loading %s; evicting everything else and retrying", label)
            for k in others:
                self._evict(k, f"out of memory loading {label}")
            try:
                obj = load()
            except Exception as e2:
                if is_oom(e2):
                    raise ModelLoadError(label, f"out of GPU memory while loading ({_oom_hint(self)})") from e2
                raise
        self.loads += 1
        return obj

    def _store(self, key: tuple[str, Any], label: str, obj: Any, fingerprint: Any, protect: tuple = ()):
        from workers.loading import module_bytes

        size = module_bytes(obj)
        self._items[key] = _Item(label, obj, size, fingerprint)
        log.info("loaded %s: %s; cache holds %s of %s", label, fmt_bytes(size), fmt_bytes(self.used_bytes),
                 fmt_bytes(self.budget))
        if size > self.budget:
            log.warning("%s (%s) is larger than the whole cache budget (%s); it is kept alone", label,
                        fmt_bytes(size), fmt_bytes(self.budget))
        self._make_room(0, label, protect=(*protect, key))
        return obj

    def _make_room(self, needed: int, for_label: str, protect: tuple) -> None:
        while self.used_bytes + needed > self.budget:
            victim = next((k for k in self._items if k not in protect), None)
            if victim is None:
                return
            self._evict(victim, f"to make room for {for_label} (needs {fmt_bytes(needed) if needed else 'its size'},"
                                f" budget {fmt_bytes(self.budget)})")

    def _evict(self, key: tuple[str, Any], reason: str) -> None:
        item = self._items.pop(key)
        self.evictions += 1
        log.info("evicting %s (%s) %s; cache holds %s of %s", item.label, fmt_bytes(item.size), reason,
                 fmt_bytes(self.used_bytes), fmt_bytes(self.budget))
        del item
        gc.collect()
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _oom_hint(cache: PipelineCache) -> str:
    dtype = str(cache.dtype).removeprefix("torch.")
    return f"device {cache.device}, dtype {dtype}; try a smaller dtype or a bigger GPU"
