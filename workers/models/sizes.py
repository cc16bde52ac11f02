"""How many bytes a loaded model holds, measured from its tensors (never guessed from file sizes).

Light to import: torch is imported by :func:`measure_bytes` when it is first called.
"""
from __future__ import annotations

from typing import Any


def fmt_bytes(n: int | None) -> str:
    """``1.50 MiB``-style sizes for logs."""
    if n is None:
        return "unknown size"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def measure_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable from ``obj``: a module's parameters and buffers, a pipeline's
    components, tensors in dicts, lists, tuples and plain objects' attributes (a parsed LoRA file, a
    hypernetwork, a controlnet-aux detector). A storage shared by several tensors counts once; meta
    tensors count nothing. An object with an int ``model_bytes`` (an ONNX engine) adds it."""
    import torch

    seen_storage: set[int] = set()
    seen_objects: set[int] = set()
    total = 0

    def tensor(t: torch.Tensor) -> None:
        nonlocal total
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr() or id(storage)
        if key not in seen_storage:
            seen_storage.add(key)
            total += storage.nbytes()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor(value)
            return
        if value is None or isinstance(value, (str, bytes, int, float, bool, type)) or id(value) in seen_objects:
            return
        seen_objects.add(id(value))
        if isinstance(value, torch.nn.Module):
            for t in (*value.parameters(), *value.buffers()):
                tensor(t)
            return
        components = getattr(value, "components", None)
        if isinstance(components, dict):  # a diffusers pipeline
            for component in components.values():
                walk(component)
            return
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item)
        elif hasattr(value, "__dict__"):
            for item in vars(value).values():
                walk(item)

    walk(obj)
    # an object that holds weights outside torch (an onnxruntime session) says how many bytes they take
    extra = getattr(obj, "model_bytes", 0)
    return total + (extra if isinstance(extra, int) else 0)
