"""One cache for every model a worker loads, under two byte budgets, least recently used evicted first.

Everything a job needs that is expensive to load lives here: main pipelines, external VAEs, ControlNets,
pre-processor annotators, parsed submodel files and the prompt translator (:mod:`workers.models.kinds`
says how each is keyed and loaded). Each entry has a *place*:

* ``device``: on the worker's device (the GPU, or the CPU on a CPU worker): pipelines, VAEs, ControlNets,
  annotators. Budget ``ATELIER_MODEL_CACHE_BYTES``.
* ``host``: in host RAM whatever the device: parsed submodel files, the translator. Budget
  ``ATELIER_MODEL_CACHE_RAM_BYTES``.

Rules:

* Sizes are measured from the loaded tensors (:func:`workers.models.sizes.measure_bytes`). Before a load,
  least recently used entries of the same place are evicted to make room for the size estimated from the
  files (safetensors headers) when one is known, so an old and a new model are not in memory together;
  after the load, again until the measured total fits.
* An entry is never evicted while a job holds it: a job gets its models through a :class:`Lease`
  (``with cache.lease() as lease: lease.get(...)``) and holds them until the lease closes. When what the
  running job holds is itself more than the budget, the cache goes over the budget (with a warning) rather
  than fail the job; it comes back under the budget as soon as the job ends and the next load makes room.
* A *slot* names what an entry is for (``("pipeline", ModelCode)``, ``("submodel", path)``): when a slot
  gets a new key (the models config changed what a ModelCode points at, a file changed on disk), the entry
  of its old key is evicted at once unless another slot or a job still uses it.
* A CUDA out-of-memory error while loading evicts every entry no job holds and retries once.
* Loads and evictions are logged (``atelier.worker.cache``) with sizes; hits at DEBUG level, and a job's
  own line says which of its models were cached and which it loaded (:attr:`Lease.used`). All three are
  counted in :attr:`stats`, in all and by kind, with the bytes each place holds (the worker's metrics,
  :mod:`workers.metrics`).

Light to import: no torch here (the measuring and the out-of-memory check import it when they run).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from workers.models.sizes import fmt_bytes, measure_bytes

log = logging.getLogger("atelier.worker.cache")

Place = Literal["device", "host"]
PLACES: tuple[Place, ...] = ("device", "host")
T = TypeVar("T")


class NoRoom(Exception):
    """A look-ahead's load (``ModelCache.get(..., ahead=True)``) that does not fit the budget now: not loaded."""


class ModelLoadError(Exception):
    """A model could not be loaded: ``model_code`` says which (a ModelCode or a label such as
    ``vae:sd15``), ``reason`` why."""

    def __init__(self, model_code: str, reason: str):
        self.model_code = model_code
        self.reason = reason
        super().__init__(f"model {model_code} could not be loaded: {reason}")


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is CUDA running out of memory."""
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError)


@dataclass
class _Entry:
    key: Hashable
    label: str
    kind: str
    place: Place
    obj: Any
    size: int
    holds: int = 0
    on_evict: Callable[[Any], None] | None = None


@dataclass
class KindStats:
    """The counts of one kind of model (``pipeline``, ``vae``, ...)."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


@dataclass
class CacheStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_seconds: float = 0.0
    #: the most each place held, right after a load and before the room-making that follows it
    peak_bytes: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PLACES})
    #: what each place holds now (kept as entries come and go, so a metrics scrape reads it without the lock)
    held_bytes: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PLACES})
    #: the counts above by kind (the worker's metrics)
    kinds: dict[str, KindStats] = field(default_factory=dict)

    def kind(self, kind: str) -> KindStats:
        return self.kinds.setdefault(kind, KindStats())


class ModelCache:
    """The worker's models, in two places each under its own budget (bytes). Thread-safe."""

    def __init__(self, *, device_bytes: int, host_bytes: int, device: str = "cpu"):
        self.budgets: dict[Place, int] = {"device": int(device_bytes), "host": int(host_bytes)}
        self.device = str(device)
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._slots: dict[Hashable, Hashable] = {}
        self._lock = threading.RLock()

    # --- inspection ------------------------------------------------------------------------------------

    def used_bytes(self, place: Place = "device") -> int:
        return sum(e.size for e in self._entries.values() if e.place == place)

    def cached(self, place: Place | None = None) -> list[tuple[str, int]]:
        """(label, bytes) of what is loaded, least recently used first (of one place, or of both)."""
        with self._lock:
            return [(e.label, e.size) for e in self._entries.values() if place is None or e.place == place]

    def held(self) -> list[str]:
        """Labels of the entries a job holds now."""
        with self._lock:
            return [e.label for e in self._entries.values() if e.holds]

    def lease(self) -> Lease:
        return Lease(self)

    # --- getting -----------------------------------------------------------------------------------------

    def get(self, key: Hashable, load: Callable[[], T], *, label: str, kind: str, place: Place = "device",
            estimate: int | Callable[[], int | None] | None = None, slot: Hashable | None = None,
            on_evict: Callable[[T], None] | None = None, lease: Lease | None = None, ahead: bool = False) -> T:
        """The object cached under ``key``; on a miss, ``load()`` after making room for ``estimate`` bytes
        (a number, or a function giving it, called on a miss only: reading files' headers costs a hit nothing).

        ``label`` names it in logs and errors, ``kind`` says what it is (``pipeline``, ``vae``, ...).
        ``slot``: see the module doc. ``on_evict(obj)`` runs when the entry is evicted. With ``lease``, the
        entry is held until the lease closes. ``load`` may raise; nothing is cached then. Raises
        :class:`ModelLoadError` when CUDA runs out of memory even after evicting what it could. ``ahead``: a load
        for a job that is not running yet (the worker's look-ahead, :mod:`workers.lifecycle.overlap`): on a miss,
        :class:`NoRoom` rather than a load past the budget (beside a running job's models, on its device).
        """
        with self._lock:
            if slot is not None:
                self._move_slot(slot, key, label)
            entry = self._entries.get(key)
            hit = entry is not None
            if hit:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                self.stats.kind(kind).hits += 1
                log.debug("hit %s %s", kind, label)
            else:
                entry = self._load(key, load, label=label, kind=kind, place=place, estimate=estimate,
                                   on_evict=on_evict, ahead=ahead)
            if lease is not None:
                entry.holds += 1
                lease._keys.append(key)
                lease.used.setdefault(label, "cached" if hit else "loaded")
            return entry.obj

    def evict_all(self, reason: str = "asked to") -> None:
        """Evict every entry no job holds."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if not e.holds]:
                self._evict(key, reason)

    # --- internals ---------------------------------------------------------------------------------------

    def _move_slot(self, slot: Hashable, key: Hashable, label: str) -> None:
        previous = self._slots.get(slot)
        self._slots[slot] = key
        if previous is None or previous == key or previous not in self._entries:
            return
        if previous in self._slots.values() or self._entries[previous].holds:
            return
        self._evict(previous, f"{label} now names other weights or another file version")

    def _load(self, key: Hashable, load: Callable[[], Any], *, label: str, kind: str, place: Place,
              estimate: int | Callable[[], int | None] | None, on_evict: Callable[[Any], None] | None,
              ahead: bool = False) -> _Entry:
        if callable(estimate):
            estimate = estimate()
        self._make_room(place, estimate or 0, label)
        if ahead and (not estimate or self.used_bytes(place) + estimate > self.budgets[place]):
            raise NoRoom(f"{kind} {label} does not fit beside the models held now")
        log.info("loading %s %s (estimated %s)", kind, label, fmt_bytes(estimate))
        t0 = time.monotonic()
        try:
            obj = load()
        except Exception as e:
            if not is_oom(e):
                raise
            others = [k for k, en in self._entries.items() if not en.holds]
            if not others:
                raise ModelLoadError(label, f"out of GPU memory while loading ({self._oom_hint()})") from e
            log.warning("out of memory loading %s; evicting every model no job holds and retrying", label)
            for k in others:
                self._evict(k, f"out of memory loading {label}")
            try:
                obj = load()
            except Exception as e2:
                if is_oom(e2):
                    raise ModelLoadError(label, f"out of GPU memory while loading ({self._oom_hint()})") from e2
                raise
        seconds = time.monotonic() - t0
        self.stats.loads += 1
        self.stats.load_seconds += seconds
        counts = self.stats.kind(kind)
        counts.loads += 1
        counts.load_seconds += seconds
        entry = _Entry(key, label, kind, place, obj, measure_bytes(obj), on_evict=on_evict)
        self._entries[key] = entry
        self.stats.held_bytes[place] += entry.size
        self.stats.peak_bytes[place] = max(self.stats.peak_bytes[place], self.used_bytes(place))
        entry.holds += 1  # protected from its own room-making
        try:
            self._make_room(place, 0, label)
        finally:
            entry.holds -= 1
        used, budget = self.used_bytes(place), self.budgets[place]
        log.info("loaded %s %s in %.2fs: %s; %s cache holds %s of %s", kind, label, seconds, fmt_bytes(entry.size),
                 place, fmt_bytes(used), fmt_bytes(budget))
        if used > budget:
            log.warning("the %s cache holds %s, over its budget of %s: %s is larger than what the models no job"
                        " holds could free", place, fmt_bytes(used), fmt_bytes(budget), label)
        return entry

    def _make_room(self, place: Place, needed: int, for_label: str) -> None:
        budget = self.budgets[place]
        while self.used_bytes(place) + needed > budget:
            victim = next((k for k, e in self._entries.items() if e.place == place and not e.holds), None)
            if victim is None:
                return
            self._evict(victim, f"to make room for {for_label} (needs {fmt_bytes(needed) if needed else 'its size'},"
                                f" budget {fmt_bytes(budget)})")

    def _evict(self, key: Hashable, reason: str) -> None:
        entry = self._entries.pop(key)
        self.stats.evictions += 1
        self.stats.kind(entry.kind).evictions += 1
        self.stats.held_bytes[entry.place] -= entry.size
        for slot in [s for s, k in self._slots.items() if k == key]:
            del self._slots[slot]
        log.info("evicting %s %s (%s) %s; %s cache holds %s of %s", entry.kind, entry.label, fmt_bytes(entry.size),
                 reason, entry.place, fmt_bytes(self.used_bytes(entry.place)), fmt_bytes(self.budgets[entry.place]))
        if entry.on_evict is not None:
            entry.on_evict(entry.obj)
        del entry
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _release(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.holds:
                entry.holds -= 1

    def _oom_hint(self) -> str:
        return f"device {self.device}; try a smaller dtype, a smaller BatchSize or a bigger GPU"


class Lease:
    """The models one job holds: got through :meth:`get`, released together when the lease closes.

    ``load_seconds`` is the time this lease spent loading and ``used`` what it got, label ->
    ``"cached"`` or ``"loaded"`` (for the job's log line).
    """

    def __init__(self, cache: ModelCache):
        self.cache = cache
        self._keys: list[Hashable] = []
        self.load_seconds = 0.0
        self.used: dict[str, str] = {}

    def get(self, key: Hashable, load: Callable[[], T], **kwargs: Any) -> T:
        before = self.cache.stats.load_seconds
        try:
            return self.cache.get(key, load, lease=self, **kwargs)
        finally:
            self.load_seconds += self.cache.stats.load_seconds - before

    def close(self) -> None:
        keys, self._keys = self._keys, []
        for key in keys:
            self.cache._release(key)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
