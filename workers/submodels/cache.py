"""A RAM cache of parsed submodel files, least recently used evicted first, bounded by bytes.

A worker serves thousands of jobs with a handful of popular submodels: each file is read and parsed once,
then served from memory. Entries are keyed by (kind, resolved path, modification time, size), so a file
replaced on disk is read again. Cached values are shared between jobs and must be treated as read-only.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MAX_BYTES = 2 * 1024**3


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors inside ``value`` (nested dicts, lists, tuples, dataclass-like objects)."""
    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr() if obj.device.type != "meta" else id(obj)
            if key in seen:
                return 0
            seen.add(key)
            return obj.untyped_storage().nbytes()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v) for v in obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            return sum(walk(v) for v in vars(obj).values())
        return 0

    return walk(value)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class SubmodelCache:
    """Parsed submodel files kept in RAM, up to ``max_bytes`` of tensors (LRU eviction).

    ``get(kind, path, reader)`` returns ``reader(path)``'s result, reading the file only when no entry for
    the file's current version is cached. A value larger than ``max_bytes`` is returned but not kept.
    Thread-safe; a miss holds the lock while it reads (a worker process runs one job at a time).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(kind: str, path: Path) -> tuple:
        resolved = Path(path).resolve()
        st = os.stat(resolved)
        return kind, str(resolved), st.st_mtime_ns, st.st_size

    def get(self, kind: str, path: Path, reader: Callable[[Path], Any]) -> Any:
        key = self._key(kind, path)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return self._entries[key][0]
            self.stats.misses += 1
            value = reader(Path(path))
            size = tensor_bytes(value)
            # an older version of the same file is dead weight
            for old in [k for k in self._entries if k[:2] == key[:2]]:
                self._drop(old)
            if size <= self.max_bytes:
                self._entries[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    self._drop(next(iter(self._entries)))
                    self.stats.evictions += 1
            return value

    def _drop(self, key: tuple) -> None:
        _, size = self._entries.pop(key)
        self._bytes -= size

    @property
    def bytes(self) -> int:
        """Bytes of tensors currently cached."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
