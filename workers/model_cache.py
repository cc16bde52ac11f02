"""Pipelines loaded once per worker process and kept warm; least recently used evicted first."""
from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from pathlib import Path

from app.core.registry import ModelEntry, Registry
from app.core.settings import Settings

log = logging.getLogger("atelier.worker.cache")


class ModelLoadError(Exception):
    """The model's files could not be found or loaded."""


class PipelineCache:
    def __init__(self, settings: Settings, max_loaded: int = 1):
        from workers.pipeline import pick_device

        self.settings = settings
        self.max_loaded = max_loaded
        self.device, self.dtype = pick_device(settings.device)
        self._pipes: OrderedDict[str, object] = OrderedDict()

    def source_dir(self, entry: ModelEntry, registry: Registry) -> Path:
        if entry.source.demo is not None:
            from workers.demo_model import ensure_demo_model, ensure_demo_model_sd15

            build = ensure_demo_model if entry.source.demo == "inpaint" else ensure_demo_model_sd15
            return build(self.settings.models_dir / f"demo-{entry.source.demo}")
        path = registry.resolve_path(entry)
        if path is None or not path.exists():
            raise ModelLoadError(f"model {entry.model_code}: source {path} does not exist")
        return path

    def get(self, entry: ModelEntry, registry: Registry):
        key = entry.model_code
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key]
        from workers.pipeline import load_pipeline

        while len(self._pipes) >= self.max_loaded:
            old, _ = self._pipes.popitem(last=False)
            log.info("evicting pipeline %s", old)
            gc.collect()
        src = self.source_dir(entry, registry)
        log.info("loading pipeline %s from %s on %s (%s)", key, src, self.device, self.dtype)
        try:
            pipe = load_pipeline(src, self.device, self.dtype)
        except Exception as e:
            raise ModelLoadError(f"model {entry.model_code} could not be loaded: {e}") from e
        self._pipes[key] = pipe
        return pipe
