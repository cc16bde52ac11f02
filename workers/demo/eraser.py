"""The demo Eraser (``demo: eraser``): a random-weight file in LaMa's layout (big-lama's FFC ResNet generator, the
architecture of ``big-lama.pt`` and of the LaMa files ComfyUI and IOPaint publish), written from code, which spandrel
recognises as "LaMa" like the real files (nothing is downloaded).

spandrel builds LaMa at its one published size (64 base channels, 18 FFC blocks: 51 million parameters) whatever
the file holds, so the demo cannot be smaller in parameters than the real one: its tensors are stored in float16
(about 100 MB; spandrel loads them into its float32 modules) and drawn by PyTorch's own initialisation from
``torch.manual_seed(seed)``. The last convolution is scaled by ``detail`` (0.02 in the demo deployment) with a zero
bias, so that the demo fills an erased area with a faintly textured mid grey (its output, a sigmoid, near 0.5)
rather than noise. Built in a few seconds on a CPU.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from workers.demo.publish import ensure_folder

ERASER_FILE = "demo-lama.safetensors"
ERASER_MARKER = "atelier_demo_eraser.json"
#: the demo deployment's scale of the last convolution (how far its fill strays from mid grey)
DEMO_DETAIL = 0.02


def lama_state_dict(seed: int = 0, detail: float = DEMO_DETAIL) -> dict[str, torch.Tensor]:
    """A random LaMa state dict (spandrel's layout, ``model.model.*``), float16, deterministic from ``seed`` on one
    torch version."""
    from spandrel.architectures.LaMa import LaMa

    torch.manual_seed(seed)
    model = LaMa(in_nc=4, out_nc=3)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    convs = sorted({int(k.split(".")[2]) for k in sd if k.startswith("model.model.")})
    last = f"model.model.{convs[-1]}"
    sd[f"{last}.weight"] = sd[f"{last}.weight"] * detail
    if f"{last}.bias" in sd:
        sd[f"{last}.bias"] = torch.zeros_like(sd[f"{last}.bias"])
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def write_demo_eraser(file: Path, *, seed: int = 0, detail: float = DEMO_DETAIL) -> Path:
    """Write the demo LaMa ``.safetensors`` at ``file``; returns ``file``."""
    file = Path(file)
    save_file(lama_state_dict(seed, detail), str(file))
    return file


def ensure_demo_eraser(dest: Path) -> Path:
    """Build, once, the folder ``dest`` holding the demo eraser file; returns the path of that file."""

    def write(folder: Path, work: Path) -> None:
        folder.mkdir(parents=True)
        write_demo_eraser(folder / ERASER_FILE)

    marker = {"kind": "atelier-demo-eraser", "architecture": "LaMa", "detail": DEMO_DETAIL, "build": 1}
    return ensure_folder(Path(dest), marker, write, marker_file=ERASER_MARKER, what="demo eraser") / ERASER_FILE
