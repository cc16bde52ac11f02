"""Per-process singletons of the gateway, built lazily from the settings (never at import time), and
checked at start (:meth:`Services.check`): the gateway's lifespan and ``make run`` refuse to start on a
key file or models config that cannot be used, instead of answering 500 to every request."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from app.contract.personas import PersonaStore
from app.contract.queue import make_celery
from app.contract.redis_conn import get_redis
from app.contract.registry import Registry, get_registry
from app.contract.settings import Settings, get_settings
from app.contract.storage import Storage, open_storage
from app.contract.taskstore import TaskStore
from app.keys import KeyStore, dev_keys_path, load_keystore


class ConfigError(Exception):
    """A configuration file the service cannot start with; the message names the file, the entry
    and the fix (and is all that is printed: no traceback)."""


@dataclass
class Services:
    settings: Settings

    @cached_property
    def keys(self) -> KeyStore:
        return load_keystore(self.settings.keys_file, self.settings.data_dir)

    @cached_property
    def tasks(self) -> TaskStore:
        s = self.settings
        return TaskStore(get_redis(), s.result_retention_s, wait_replicas=s.redis_wait_replicas,
                         wait_timeout_ms=s.redis_wait_timeout_ms)

    @cached_property
    def personas(self) -> PersonaStore:
        return PersonaStore(get_redis())

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings)

    @cached_property
    def celery(self):
        return make_celery("atelier-gateway")

    @property
    def registry(self) -> Registry:
        return get_registry(self.settings.models_config)

    def check(self) -> None:
        """Load the key store and the models config now (the dev key pair is created if needed).

        Raises :class:`ConfigError` with the message of the first problem: a key file that cannot be
        used (``app/keys.py``), a models config that is missing or invalid (``Registry.from_file``).
        """
        try:
            _ = self.keys
        except ValueError as e:  # KeyFileError
            raise ConfigError(str(e)) from None
        except OSError as e:  # the dev key pair could not be written
            raise ConfigError(f"{dev_keys_path(self.settings.data_dir)}: cannot create the dev key pair "
                              f"({e.strerror or e}); set ATELIER_KEYS_FILE or a writable ATELIER_DATA_DIR") from None
        path = self.settings.models_config
        try:
            _ = self.registry
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the models config ({e.strerror or e}); "
                              f"ATELIER_MODELS_CONFIG must name a readable YAML file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
        except ValueError as e:  # the message names the file and the entry
            raise ConfigError(str(e)) from None


@lru_cache
def get_services() -> Services:
    return Services(get_settings())
