"""Build a folder once, next to where it belongs, and publish it atomically.

Every generated artifact (demo models, VAEs, the demo translator, ControlNet, annotators) goes through
:func:`ensure_folder`: several worker processes may ask for the same folder at once, a crash never
leaves a half-written one behind, and a folder of an older build is replaced without a moment where
readers could see it missing (where the OS can swap two paths atomically).

A folder carries a JSON marker describing what it holds (``kind``, ``seed``, ... and ``build``): the
same marker is current; the same identity with a lower ``build`` is outdated and rebuilt; anything else
is refused rather than overwritten.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_marker(dest: Path, marker_file: str) -> dict | None:
    try:
        found = json.loads((dest / marker_file).read_text())
    except FileNotFoundError:
        return None
    return found if isinstance(found, dict) else {"unreadable": found}


def folder_state(dest: Path, marker: dict, marker_file: str, what: str = "demo model") -> str:
    """What ``dest`` holds: ``"current"`` (this very build), ``"outdated"`` (the same thing from an older
    build), ``"missing"`` (nothing, or an empty directory). Raises ``ValueError`` for a folder of another
    thing (kind, seed, ...) or of a newer build, ``FileExistsError`` for a folder without a marker."""
    found = read_marker(dest, marker_file)
    if found is None:
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} exists and is not a {what} folder; refusing to overwrite it")
        return "missing"
    if found == marker:
        return "current"
    identity = {key: value for key, value in marker.items() if key != "build"}
    found_identity = {key: value for key, value in found.items() if key != "build"}
    found_build = found.get("build", 1)
    if found_identity == identity and isinstance(found_build, int) and found_build < marker["build"]:
        return "outdated"
    raise ValueError(f"{dest} holds a different {what} ({found}), not {marker}")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``OSError`` where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError) as exc:
        raise OSError(errno.ENOSYS, "renameat2 is not available") from exc
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def publish(folder: Path, dest: Path, state: Callable[[], str], parking: Path) -> None:
    """Move the finished ``folder`` to ``dest``: onto nothing by ``rename``; over an outdated build by an
    atomic exchange (``dest`` always holds a complete folder, the old one ends up at ``folder``), or, where
    the exchange is not supported, by moving the old build aside to ``parking`` and renaming the new one
    in (``dest`` is missing for an instant). When another process publishes the same build first, its
    folder is kept and ours is discarded. ``state()`` is :func:`folder_state` of ``dest``."""
    for _ in range(3):
        current = state()
        if current == "current":
            return
        if current == "missing":
            try:
                # rename() onto a missing or empty directory; fails when another process got there first
                os.rename(folder, dest)
                return
            except OSError:
                if state() == "missing":
                    raise
                continue
        try:
            exchange(folder, dest)
            return
        except OSError:
            pass
        try:
            os.rename(dest, parking)
            os.rename(folder, dest)
            return
        except OSError:
            if state() != "current":
                raise
            return
    raise RuntimeError(f"could not publish the build at {dest}: it keeps changing")


def ensure_folder(dest: Path, marker: dict, write: Callable[[Path, Path], None], *, marker_file: str,
                  what: str = "demo model") -> Path:
    """Make ``dest`` hold the build described by ``marker`` (which must have an int ``build``);
    ``write(folder, workdir)`` saves it into ``folder`` (``workdir`` is scratch space next to it).

    Idempotent, and safe when several processes call it at once. Files are made readable by all (diffusers
    writes weights 0600; a worker may run as another user than the one who built the folder).
    """
    dest = Path(dest)

    def state() -> str:
        return folder_state(dest, marker, marker_file, what)

    if state() == "current":
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    build_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        folder = build_root / "out"
        write(folder, build_root / "work")
        (folder / marker_file).write_text(json.dumps(marker, indent=2) + "\n")
        for path in (folder, *folder.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        publish(folder, dest, state, build_root / "replaced")
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return dest
