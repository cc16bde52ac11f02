"""Per-process singletons of the gateway, built lazily from the settings (never at import time)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from app.contract.queue import make_celery
from app.contract.redis_conn import get_redis
from app.contract.registry import Registry, get_registry
from app.contract.settings import Settings, get_settings
from app.contract.storage import Storage
from app.contract.taskstore import TaskStore
from app.keys import KeyStore, load_keystore


@dataclass
class Services:
    settings: Settings

    @cached_property
    def keys(self) -> KeyStore:
        return load_keystore(self.settings.keys_file, self.settings.data_dir)

    @cached_property
    def tasks(self) -> TaskStore:
        return TaskStore(get_redis(), self.settings.result_retention_s)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings.data_dir)

    @cached_property
    def celery(self):
        return make_celery("atelier-gateway")

    @property
    def registry(self) -> Registry:
        return get_registry(self.settings.models_config)


@lru_cache
def get_services() -> Services:
    return Services(get_settings())
