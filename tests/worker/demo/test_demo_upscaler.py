"""The demo Upscaler (workers/demo/upscaler.py, ``demo: upscaler``): a tiny random-weight file written tensor by
tensor in Real-ESRGAN's SRVGGNetCompact layout, which spandrel recognises as the real files' architecture; built
once, deterministic, and its demo upscales look like their input."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from spandrel import ModelLoader

from workers.demo import demo_path
from workers.demo.upscaler import UPSCALER_MARKER, compact_state_dict
from workers.inference.upscale import load_upscaler, resize_image


def test_the_demo_upscaler_is_built_once_in_compacts_layout(tmp_path):
    path = demo_path("upscaler", tmp_path)
    assert path == tmp_path / "demo-upscaler" / "4x-demo-compact.safetensors" and path.stat().st_size < 32_000
    marker = json.loads((path.parent / UPSCALER_MARKER).read_text())
    assert marker["kind"] == "atelier-demo-upscaler" and marker["scale"] == 4
    stamp = path.stat().st_mtime_ns
    assert demo_path("upscaler", tmp_path) == path and path.stat().st_mtime_ns == stamp   # not rebuilt
    tensors = load_file(path)
    assert sorted(tensors) == sorted(compact_state_dict())
    assert tensors["body.0.weight"].shape == (8, 3, 3, 3) and tensors["body.6.weight"].shape == (48, 8, 3, 3)
    assert all(torch.equal(tensors[k], v) for k, v in compact_state_dict(detail=0.05).items())  # deterministic


def test_spandrel_reads_it_as_a_real_esrgan_compact_x4(tmp_path):
    descriptor = ModelLoader().load_from_file(demo_path("upscaler", tmp_path))
    assert (descriptor.architecture.id, descriptor.scale, descriptor.purpose) == ("Compact", 4, "SR")
    assert (descriptor.input_channels, descriptor.output_channels) == (3, 3)
    assert "8nf" in descriptor.tags and "2nc" in descriptor.tags


def test_a_demo_upscale_looks_like_its_input(tmp_path):
    """The residual is scaled down: the upscale stays within a few grey levels of a plain enlargement."""
    up = load_upscaler(demo_path("upscaler", tmp_path), "cpu", torch.float32)
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out, ran = resize_image(photo, 128, 96, up)
    nearest = np.asarray(photo.resize((128, 96), Image.Resampling.NEAREST), dtype=int)
    diff = np.abs(np.asarray(out, dtype=int) - nearest)
    assert ran == 1 and 0 < diff.mean() < 8
