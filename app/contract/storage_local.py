"""The local-folder storage backend: one directory (``ATELIER_DATA_DIR``; a shared volume when the gateway and
the workers run on different hosts, see docs/deployment.md).

- a flat namespace: ``{namespace}/{name[:2]}/{name}`` (inputs: ``inputs/{sha[:2]}/{sha}``, so no folder holds
  more than a 256th of them);
- a grouped namespace: ``{namespace}/{group}/{name}`` (results: ``results/{TaskUID}/{i}.png``).

Writes go to a temporary file beside the object (``.tmp-*``) renamed over it, so a reader or a re-run of the
same task after a worker crash sees the old object or the new one, never a part. An object's age is its file's
modification time. A group's folder goes with its last object; a temporary file a crash left behind is removed
with its group, or in a flat namespace by the expired listing once it is older than the cutoff (it is never an
object), and a group folder left empty is listed as expired.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.contract.storage_base import Namespace, ObjectKey

_TMP_PREFIX = ".tmp-"


class LocalStore:
    """:class:`~app.contract.storage_base.ObjectStore` on a folder; links are None (the gateway serves)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: ObjectKey) -> Path:
        folder = key.group if key.group is not None else key.name[:2]
        return self.root / key.namespace.name / folder / key.name

    def put(self, key: ObjectKey, data: bytes) -> None:
        path = self._path(key)
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        except FileNotFoundError:  # its first object (or its group's folder just went with its last one)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def touch(self, key: ObjectKey) -> bool:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def get(self, key: ObjectKey) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def open(self, key: ObjectKey) -> BinaryIO:
        return self._path(key).open("rb")

    def exists(self, key: ObjectKey) -> bool:
        return self._path(key).is_file()

    def delete(self, key: ObjectKey) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if key.group is not None:
            with contextlib.suppress(OSError):  # a group's folder goes with its last object
                path.parent.rmdir()
        return True

    def delete_group(self, namespace: Namespace, group: str) -> int:
        folder = self.root / namespace.name / namespace.check_group(group)
        n = sum(1 for _ in self._objects(namespace, folder))
        shutil.rmtree(folder, ignore_errors=True)  # its temporary files too
        return n

    def expired(self, namespace: Namespace, before: float) -> list[str]:
        top = self.root / namespace.name
        if not top.is_dir():
            return []
        found = []
        for folder in top.iterdir():
            if not folder.is_dir():
                continue
            if namespace.grouped:
                if namespace.is_group(folder.name) and _newest(self._objects(namespace, folder), folder) < before:
                    found.append(folder.name)
            else:
                found += (f.name for f in self._objects(namespace, folder, before)
                          if f.name[:2] == folder.name and _mtime(f) < before)
        return found

    def link(self, key: ObjectKey, expires_at: int) -> str | None:
        return None

    def _objects(self, namespace: Namespace, folder: Path, before: float | None = None) -> Iterator[Path]:
        """The objects in ``folder``; with ``before``, its temporary files older than that are removed on the way."""
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            return
        for f in entries:
            if f.name.startswith(_TMP_PREFIX):
                if before is not None and _mtime(f) < before:
                    f.unlink(missing_ok=True)
            elif namespace.is_name(f.name) and f.is_file():
                yield f


def _mtime(path: Path) -> float:
    """The file's modification time; +inf for a file removed meanwhile (never expired: it is gone)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _newest(objects: Iterator[Path], folder: Path) -> float:
    """When a group was last written: its newest object, or for a group without objects its folder."""
    return max((_mtime(f) for f in objects), default=_mtime(folder))
