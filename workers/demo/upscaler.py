"""The demo Upscaler (``demo: upscaler``): a tiny random-weight file in Real-ESRGAN's SRVGGNetCompact layout (the
architecture of ``realesr-general-x4v3.pth`` and ``realesr-animevideov3.pth``), written tensor by tensor from code,
which spandrel recognises as "RealESRGAN Compact" like the real files (nothing is downloaded).

SRVGGNetCompact with ``F`` features, ``C`` body convolutions and factor ``s`` is, in its state dict:

* ``body.0.weight`` ``(F, 3, 3, 3)`` and ``body.0.bias`` ``(F,)``: the first 3x3 convolution; ``body.1.weight``
  ``(F,)``: its PReLU's slopes;
* for i = 1..C: ``body.{2i}.weight`` ``(F, F, 3, 3)`` and ``.bias``, a body convolution; ``body.{2i+1}.weight``,
  its PReLU;
* ``body.{2C+2}.weight`` ``(3*s*s, F, 3, 3)`` and ``.bias``: the last convolution, followed by PixelShuffle(s);

and its output is ``PixelShuffle(last) + nearest(x, s)``: the network learns the residual over a nearest-neighbour
upscale. The demo (F 8, C 2, x4: 4.9 thousand parameters, 20 KB) draws its weights from numpy's legacy
``RandomState`` (a frozen bit stream) seeded by the seed, with He scaling and PyTorch's default PReLU slope 0.25;
the last convolution is scaled down by ``detail`` (0.05 in the demo deployment) so that the demo's upscales look
like their input with a faint texture rather than noise. Its receptive field is 4 convolutions: 4 input pixels
each way, which a tile overlap of 16 hides entirely (tests/worker/inference/test_upscale.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from workers.demo.publish import ensure_folder

UPSCALER_FILE = "4x-demo-compact.safetensors"
UPSCALER_MARKER = "atelier_demo_upscaler.json"
#: the demo's features, body convolutions and factor
DEMO_FEATURES, DEMO_CONVS, DEMO_SCALE = 8, 2, 4
#: the demo deployment's scale of the last convolution (the residual over nearest-neighbour)
DEMO_DETAIL = 0.05


def compact_state_dict(features: int = DEMO_FEATURES, convs: int = DEMO_CONVS, scale: int = DEMO_SCALE,
                       seed: int = 0, detail: float = 1.0) -> dict[str, torch.Tensor]:
    """A random SRVGGNetCompact state dict (the module doc's layout), float32, deterministic from ``seed``."""
    rng = np.random.RandomState(seed)

    def conv(out_ch: int, in_ch: int, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        std = gain * np.sqrt(2.0 / (in_ch * 9))
        weight = rng.normal(0.0, std, size=(out_ch, in_ch, 3, 3)).astype(np.float32)
        bias = rng.normal(0.0, 0.01 * gain, size=(out_ch,)).astype(np.float32)
        return torch.from_numpy(weight), torch.from_numpy(bias)

    def prelu() -> torch.Tensor:
        return torch.full((features,), 0.25, dtype=torch.float32)

    sd: dict[str, torch.Tensor] = {}
    sd["body.0.weight"], sd["body.0.bias"] = conv(features, 3)
    sd["body.1.weight"] = prelu()
    for i in range(1, convs + 1):
        sd[f"body.{2 * i}.weight"], sd[f"body.{2 * i}.bias"] = conv(features, features)
        sd[f"body.{2 * i + 1}.weight"] = prelu()
    last = 2 * convs + 2
    sd[f"body.{last}.weight"], sd[f"body.{last}.bias"] = conv(3 * scale * scale, features, gain=detail)
    return sd


def write_demo_upscaler(file: Path, *, seed: int = 0, detail: float = DEMO_DETAIL, scale: int = DEMO_SCALE) -> Path:
    """Write a demo SRVGGNetCompact ``.safetensors`` (or, for a ``.pth`` name, a pickled ``{"params": state dict}`` as
    Real-ESRGAN's releases are) at ``file``; returns ``file``."""
    file = Path(file)
    sd = compact_state_dict(seed=seed, detail=detail, scale=scale)
    if file.suffix == ".pth":
        torch.save({"params": sd}, file)
    else:
        save_file(sd, str(file))
    return file


def ensure_demo_upscaler(dest: Path) -> Path:
    """Build, once, the folder ``dest`` holding the demo upscaler file; returns the path of that file."""

    def write(folder: Path, work: Path) -> None:
        folder.mkdir(parents=True)
        write_demo_upscaler(folder / UPSCALER_FILE)

    marker = {"kind": "atelier-demo-upscaler", "architecture": "SRVGGNetCompact",
              "features": DEMO_FEATURES, "convs": DEMO_CONVS, "scale": DEMO_SCALE, "build": 1}
    return ensure_folder(Path(dest), marker, write, marker_file=UPSCALER_MARKER, what="demo upscaler") / UPSCALER_FILE
