"""File storage shared by gateway and workers (one directory; a shared volume when they run on
different hosts, see docs/deployment.md).

- inputs:  ``inputs/{sha[:2]}/{sha}``  each uploaded image stored once, by content hash
- results: ``results/{TaskUID}/{i}.png`` written by the worker (atomically, so a re-run of the same
  task after a worker crash overwrites instead of duplicating)

Everything older than the retention period is removed by :func:`sweep`.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")
_UID = re.compile(r"^[0-9a-v]{21}$")
_RESULT = re.compile(r"^(\d{1,2}|clothes-mask)\.png$")

#: The result file of a clothes mask the worker made itself (GenerateFromMannequin without ClothesMaskIndex).
AUTO_MASK_NAME = "clothes-mask.png"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Storage:
    def __init__(self, data_dir: Path):
        self.inputs = data_dir / "inputs"
        self.results = data_dir / "results"

    def input_path(self, sha: str) -> Path:
        if not _SHA.match(sha):
            raise ValueError(f"not a content hash: {sha!r}")
        return self.inputs / sha[:2] / sha

    def has_input(self, sha: str) -> bool:
        """Whether an input of this content hash is stored (the gateway stores only inputs it has checked)."""
        return _SHA.match(sha) is not None and self.input_path(sha).exists()

    def put_input(self, sha: str, data: bytes) -> str:
        """Store an input image under its content hash (once); a re-upload refreshes its age."""
        path = self.input_path(sha)
        if path.exists():
            os.utime(path)
        else:
            _atomic_write(path, data)
        return sha

    def result_path(self, uid: str, name: str) -> Path:
        if not _UID.match(uid) or not _RESULT.match(name):
            raise ValueError("bad result name")
        return self.results / uid / name

    def write_result(self, uid: str, index: int | str, png: bytes) -> str:
        """Write result ``index`` (``<index>.png``) or a named result (:data:`AUTO_MASK_NAME`); its name."""
        name = index if isinstance(index, str) else f"{index}.png"
        _atomic_write(self.result_path(uid, name), png)
        return name

    def sweep(self, retention_s: float, now: float | None = None) -> int:
        """Delete inputs and result folders older than the retention period; returns how many."""
        cutoff = (now or time.time()) - retention_s
        removed = 0
        if self.results.exists():
            for d in self.results.iterdir():
                if d.is_dir() and d.stat().st_mtime < cutoff:
                    shutil.rmtree(d, ignore_errors=True)
                    removed += 1
        if self.inputs.exists():
            for f in self.inputs.glob("*/*"):
                if f.is_file() and f.stat().st_mtime < cutoff:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed
