"""The worker's device and weights dtype, from ``ATELIER_DEVICE`` and ``ATELIER_DTYPE``."""
from __future__ import annotations

import torch


def pick_device(setting: str) -> tuple[str, torch.dtype]:
    """Resolve a device setting to ``(device, dtype)``.

    ``"auto"``: the first CUDA device with float16 when CUDA is available, else the CPU with float32.
    ``"cpu"``: CPU, float32 (half precision is slow or unsupported for these models on CPUs).
    ``"cuda"`` / ``"cuda:N"``: that GPU, float16; ``RuntimeError`` when it does not exist.
    """
    setting = setting.strip().lower()
    if setting == "auto":
        return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    if setting == "cpu":
        return "cpu", torch.float32
    if setting == "cuda" or setting.startswith("cuda:"):
        index_text = setting.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ValueError(f"invalid device {setting!r}: expected cuda or cuda:N")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index_text) >= count:
            raise RuntimeError(f"device {setting!r} requested but {count} CUDA device(s) are available")
        return setting, torch.float16
    raise ValueError(f"invalid device {setting!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """The weights dtype for ``device``: the CPU always float32; CUDA float16 for ``auto``, else as asked."""
    setting = (setting or "auto").strip().lower()
    choices = {"auto": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if setting not in choices:
        raise ValueError(f"invalid dtype {setting!r}: expected auto, float16, bfloat16 or float32")
    if not str(device).startswith("cuda"):
        return torch.float32
    return choices[setting]
