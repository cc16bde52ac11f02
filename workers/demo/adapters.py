"""A tiny random-weight IP-Adapter and CLIP vision encoder, built from code, for demos and tests.

Nothing is downloaded.

* :func:`ensure_demo_clip_vision`: a transformers ``CLIPVisionModelWithProjection`` folder (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``; 32x32 input, hidden size 32, projection 16: about 100 kB),
  the ``image_encoder:`` of ``demo-ip-adapter``.
* :func:`ensure_demo_ip_adapter`: ``ip-adapter_demo.safetensors`` in the published flat layout of a *plain*
  IP-Adapter (``image_proj.proj.weight`` (4 x 32, 16), ``image_proj.proj.bias``, ``image_proj.norm.*``, and
  ``ip_adapter.<n>.to_k_ip.weight`` / ``to_v_ip.weight`` for each cross-attention layer ``n`` of the demo
  inpainting UNet, numbered in ``unet.attn_processors`` order), its width the UNet's cross-attention width (32).

Random weights: a reference image changes the picture (another image, another picture), without meaning. Values
are drawn from (seed, tensor name), so the files are the same on every machine and run.
"""
from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from workers.demo.model import ensure_demo_model
from workers.demo.publish import ensure_folder, read_marker

ADAPTER_MARKER = "atelier_demo_ip_adapter.json"
ENCODER_MARKER = "atelier_demo_clip_vision.json"
ADAPTER_FILE = "ip-adapter_demo.safetensors"
DEMO_ADAPTER_BUILD = 1
DEMO_ENCODER_BUILD = 1
#: The demo encoder: CLIP ViT of 32x32 images in 8x8 patches, hidden width 32, projected ``image_embeds`` width 16.
ENCODER_IMAGE_SIZE, ENCODER_HIDDEN, ENCODER_PROJECTION = 32, 32, 16
#: Reference tokens a plain IP-Adapter adds to each cross-attention.
ADAPTER_TOKENS = 4
#: Scale of the reference tokens' key/value projections (relative to 1/sqrt(fan_in)): large enough that the
#: reference visibly changes the tiny model's picture.
ADAPTER_GAIN = 3.0


def _values(seed: int, name: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
    rng = np.random.RandomState([seed, zlib.crc32(name.encode())])
    return torch.from_numpy(rng.uniform(-bound, bound, shape).astype(np.float32))


def build_demo_clip_vision(seed: int = 0):
    """The tiny ``CLIPVisionModelWithProjection``, every parameter drawn from (seed, its name)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=ENCODER_HIDDEN, intermediate_size=2 * ENCODER_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        image_size=ENCODER_IMAGE_SIZE, patch_size=8, projection_dim=ENCODER_PROJECTION))
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm):
                    param.fill_(1.0 if param_name == "weight" else 0.0)
                    continue
                fan_in = param[0].numel() if param.ndim > 1 else param.shape[0]
                param.copy_(_values(seed, f"{module_name}.{param_name}", tuple(param.shape), (3.0 / fan_in) ** 0.5))
    return model.eval()


def ensure_demo_clip_vision(dest: Path, seed: int = 0) -> Path:
    """Build, once, the demo CLIP vision encoder folder at ``dest`` (:func:`build_demo_clip_vision` saved with
    transformers' ``save_pretrained``, plus its image processor). Idempotent and safe when several processes call it
    at once (:func:`workers.demo.publish.ensure_folder`). Returns ``dest``."""
    from transformers import CLIPImageProcessor

    def write(folder: Path, work: Path) -> None:
        build_demo_clip_vision(seed).save_pretrained(folder, safe_serialization=True)
        CLIPImageProcessor(size=ENCODER_IMAGE_SIZE, crop_size=ENCODER_IMAGE_SIZE).save_pretrained(folder)

    marker = {"kind": "atelier-demo-clip-vision", "build": DEMO_ENCODER_BUILD, "seed": seed}
    return ensure_folder(Path(dest), marker, write, marker_file=ENCODER_MARKER, what="demo CLIP vision encoder")


def demo_ip_adapter_state(unet, seed: int = 0, embed_dim: int = ENCODER_PROJECTION) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter's tensors for ``unet``, under the published flat names."""
    width = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": _values(seed, "proj.weight", (ADAPTER_TOKENS * width, embed_dim),
                                          (3.0 / embed_dim) ** 0.5),
        "image_proj.proj.bias": _values(seed, "proj.bias", (ADAPTER_TOKENS * width,), 0.1),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    for n, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if not attn.is_cross_attention:
            continue
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{n}.{part}.weight"] = _values(seed, f"{n}.{part}", (attn.inner_dim, width),
                                                             ADAPTER_GAIN * (3.0 / width) ** 0.5)
    return state


def ensure_unet_fitted_file(dest: Path, seed: int, base_model: Path | None, *, file: str, marker_file: str, kind: str,
                            build: int, state, what: str) -> Path:
    """Build, once, the folder ``dest`` holding ``file``: the tensors ``state(unet, seed)`` gives for a UNet of
    ``base_model``'s config (a diffusers SD 1.x folder; default: the demo inpainting model of ``seed``, built in a
    scratch folder), recorded in ``marker_file`` as ``kind`` of build ``build``. Returns the file's path. The demo
    adapters' files (an IP-Adapter, a FaceID one) fit the UNet they will be applied to this way."""
    from diffusers import UNet2DConditionModel

    dest = Path(dest)
    found = read_marker(dest, marker_file)
    if base_model is None and found is not None and found.get("seed") == seed and found.get("build") == build:
        return dest / file
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.base-", dir=dest.parent) as scratch:
        if base_model is None:
            base_model = ensure_demo_model(Path(scratch) / "base", seed=seed)
        config = json.loads((Path(base_model) / "unet" / "config.json").read_text())
        unet = UNet2DConditionModel.from_config(config)
        marker = {"kind": kind, "build": build, "seed": seed, "cross_attention_dim": unet.config.cross_attention_dim}

        def write(folder: Path, work: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(state(unet, seed), str(folder / file))

        ensure_folder(dest, marker, write, marker_file=marker_file, what=what)
    return dest / file


def ensure_demo_ip_adapter(dest: Path, seed: int = 0, base_model: Path | None = None) -> Path:
    """Build, once, the folder ``dest`` holding :data:`ADAPTER_FILE`, a plain IP-Adapter fitting the UNet of
    ``base_model`` (a diffusers SD 1.x folder; default: the demo inpainting model of ``seed``, built in a scratch
    folder) and the demo encoder's ``image_embeds`` width. Returns the file's path."""
    return ensure_unet_fitted_file(dest, seed, base_model, file=ADAPTER_FILE, marker_file=ADAPTER_MARKER,
                                   kind="atelier-demo-ip-adapter", build=DEMO_ADAPTER_BUILD,
                                   state=demo_ip_adapter_state, what="demo IP-Adapter")
