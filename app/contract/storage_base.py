"""The storage interface: what a backend (a local folder, an S3-compatible bucket) must do, and the keys it is
given. Callers do not use it directly: they use :class:`app.contract.storage.Storage`, whose typed helpers
(``put_input``, ``open_input``, ``write_result`` ...) build the keys and hold the rules (an input is stored
once, the retention sweep); a backend only stores bytes under keys. tests/contract/storage_contract.py is the
behaviour every backend must show.

Why a ``Protocol`` and not an abstract base class: a backend is a small adapter over someone else's client
(a folder, boto3), with no code to inherit; what it must do is checked by the contract suite (which also
checks ``isinstance(store, ObjectStore)``: every method is there), and a type checker checks the signatures.

Keys are typed and checked when they are made (:meth:`Namespace.key`): a backend never sees a name that could
leave its namespace (``../``, a slash, a leading dot), so it may map keys to paths or object names directly.
A key is a namespace (``inputs``, ``results``: one per kind of stored object) and a name, and in a grouped
namespace a group (the TaskUID of ``results``): a group's objects expire together, when the newest of them
does, and are deleted together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

#: What every segment of a key (namespace, group, name) must look like, whatever its namespace allows: no
#: slash, no ``..``, no leading dot (a backend's temporary files start with one and are never objects).
SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Namespace:
    """One kind of stored object: its name (the first segment of its keys), the names it allows, and for a
    grouped kind the groups it allows. ``swept``: removed by the retention sweep once expired."""
    name: str
    names: re.Pattern[str]
    groups: re.Pattern[str] | None = None
    swept: bool = True

    def __post_init__(self) -> None:
        if not SEGMENT.match(self.name):
            raise ValueError(f"not a namespace name: {self.name!r}")

    @property
    def grouped(self) -> bool:
        return self.groups is not None

    def is_name(self, name: object) -> bool:
        """Whether ``name`` is the name of an object of this namespace."""
        return isinstance(name, str) and bool(SEGMENT.match(name) and self.names.match(name))

    def is_group(self, group: object) -> bool:
        """Whether ``group`` is a group of this (grouped) namespace."""
        return self.groups is not None and isinstance(group, str) and bool(SEGMENT.match(group)
                                                                            and self.groups.match(group))

    def check_group(self, group: str) -> str:
        """``group`` if it is one of this grouped namespace's groups; else ValueError."""
        if not self.is_group(group):
            raise ValueError(f"not a group of {self.name}: {group!r}")
        return group

    def key(self, name: str, group: str | None = None) -> ObjectKey:
        """The key of object ``name`` (in ``group`` for a grouped namespace); ValueError if it is not one."""
        return ObjectKey(self, name, group)


@dataclass(frozen=True)
class ObjectKey:
    """A checked key: made only through :meth:`Namespace.key`, which raises ValueError on a bad name or group."""
    namespace: Namespace
    name: str
    group: str | None = None

    def __post_init__(self) -> None:
        ns = self.namespace
        if ns.grouped:
            ns.check_group(self.group)  # type: ignore[arg-type]
        elif self.group is not None:
            raise ValueError(f"{ns.name} has no groups: {self.group!r}")
        if not ns.is_name(self.name):
            raise ValueError(f"not a name of {ns.name}: {self.name!r}")

    def __str__(self) -> str:
        """``namespace/[group/]name``: the backend-neutral key (an S3 object key under the bucket's prefix)."""
        return "/".join(p for p in (self.namespace.name, self.group, self.name) if p is not None)


@runtime_checkable
class ObjectStore(Protocol):
    """A storage backend. Every method may raise ``OSError`` when the storage cannot be reached or written
    (the gateway answers 150); a missing object is never an error except for :meth:`open`."""

    def put(self, key: ObjectKey, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there atomically: a reader sees the old object or
        the new one, never a part; the object's age starts again."""

    def touch(self, key: ObjectKey) -> bool:
        """Start the age of a stored object again (a re-upload of the same input); False if there is none."""

    def get(self, key: ObjectKey) -> bytes | None:
        """The object's bytes, or None if there is none."""

    def open(self, key: ObjectKey) -> BinaryIO:
        """The object as a readable, seekable binary stream (close it; a ``with`` block does); it reads the
        object as it was when opened, even if it is replaced meanwhile. ``FileNotFoundError`` if there is none."""

    def exists(self, key: ObjectKey) -> bool:
        """Whether an object is stored under ``key``."""

    def delete(self, key: ObjectKey) -> bool:
        """Remove one object; False if there was none."""

    def delete_group(self, namespace: Namespace, group: str) -> int:
        """Remove every object of ``group`` (a grouped namespace); how many there were."""

    def expired(self, namespace: Namespace, before: float) -> list[str]:
        """What of ``namespace`` was last written before ``before`` (a Unix time): in a flat namespace the names
        of the objects, in a grouped one the groups whose newest object is older (each group once)."""

    def link(self, key: ObjectKey, expires_at: int) -> str | None:
        """A URL a client downloads the object from until ``expires_at`` (e.g. presigned), or None: the
        gateway serves it itself (``GET /results/...``)."""
