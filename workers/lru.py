"""A least-recently-used cache bounded in entries and in bytes, shared by the worker's caches of derived
images (control maps, compositions): what a job computes from its inputs alone is kept for the next job
with the same inputs."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used values by key, at most ``max_entries`` of them and ``max_bytes`` in all (``size`` of
    each value; the oldest go first; a value larger than ``max_bytes`` is not kept). Thread-safe. ``copy``
    is applied to a value on the way in and on the way out (identity by default: for values nobody changes).
    ``hits`` and ``misses`` count :meth:`get` results."""

    def __init__(self, max_entries: int, max_bytes: int, size: Callable[[V], int],
                 copy: Callable[[V], V] = lambda value: value):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be >= 1")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._size, self._copy = size, copy
        self.hits = 0
        self.misses = 0
        self._values: OrderedDict[K, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._values.get(key)
            if value is None:
                self.misses += 1
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return self._copy(value)

    def put(self, key: K, value: V) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._values[key] = self._copy(value)
            self._bytes += size
            while len(self._values) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._values.popitem(last=False)
                self._bytes -= self._size(evicted)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._values
