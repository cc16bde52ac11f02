"""Reading submodel files safely: safetensors, or PyTorch pickles through ``torch.load(weights_only=True)``.

The format is recognised from the file's first bytes, not its name, so a ``.ckpt`` that is really a
safetensors file (it happens) still loads, and a truncated or foreign file gets a clear message. Pickles are
never unpickled with arbitrary code execution: ``weights_only=True`` admits tensors, containers and plain
values only, which is all the A1111 formats contain.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


class FileFormatError(Exception):
    """A file could not be read as a weights file; the message says why, in one line."""


def sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"`` (``torch.save`` since torch 1.6), ``"torch-legacy"`` (older
    pickles) or ``"unknown"``, from the first bytes of ``path``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file (on the CPU) and its ``__metadata__`` header (may be empty)."""
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, metadata
    except (SafetensorError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"corrupt or truncated .safetensors file ({_one_line(e)})") from e


def read_torch(path: Path) -> Any:
    """The object in a ``torch.save`` file, loaded on the CPU with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise FileFormatError(
            f"PyTorch file holds objects other than tensors and plain values, refused for safety "
            f"({_one_line(e)[:200]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
        raise FileFormatError(f"corrupt or truncated PyTorch file ({_one_line(e)[:200]})") from e


def read_weights(path: Path) -> tuple[Any, dict[str, str] | None]:
    """``(content, safetensors metadata or None)`` of a weights file of any supported format.

    A safetensors file gives its tensor dict, a PyTorch file the unpickled object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"file not found: {path}")
    kind = sniff(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind in ("torch-zip", "torch-legacy"):
        return read_torch(path), None
    size = path.stat().st_size
    raise FileFormatError(f"{path.name} is neither a safetensors nor a PyTorch file ({size} bytes)")


def find_weights_file(path: Path, preferred: tuple[str, ...]) -> Path:
    """``path`` itself when it is a file; in a folder, the first of ``preferred`` names present, else the
    folder's only ``.safetensors`` / ``.bin`` / ``.pt`` / ``.ckpt`` file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileFormatError(f"file not found: {path}")
    for name in preferred:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for p in path.iterdir()
                        if p.is_file() and p.suffix.lower() in (".safetensors", ".bin", ".pt", ".ckpt"))
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(p.name for p in candidates) or "none"
    raise FileFormatError(f"folder {path} has no {' or '.join(preferred)} and no single weights file ({names})")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
