"""Textual-inversion files in each format A1111, ComfyUI, kohya and diffusers write, from vectors the test
chooses, so that what the worker loads can be checked against what was written."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

SD15_FORMATS = ("a1111_pt", "a1111_safetensors", "diffusers_safetensors", "diffusers_bin", "comfy_clip_l",
                "comfy_list")
SDXL_FORMATS = ("sdxl_safetensors", "sdxl_pt")


def vectors(seed: int, n: int, width: int) -> torch.Tensor:
    """``[n, width]`` float32 vectors, far larger than CLIP's token embeddings (std 0.02) so that each shows."""
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def _save(data, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in data.items()}, str(path))
    else:
        torch.save(data, path)
    return path


def write_sd15(fmt: str, folder: Path, vecs: torch.Tensor) -> Path:
    """An SD 1.x embedding of ``vecs`` ``[n, width]`` in format ``fmt`` (one of :data:`SD15_FORMATS`) under
    ``folder``; the path a models config would name (a folder for the diffusers safetensors layout)."""
    if fmt == "a1111_pt":  # A1111's textual_inversion.py save layout
        return _save({"string_to_token": {"*": 265}, "string_to_param": {"*": vecs.clone()}, "name": "brand",
                      "step": 1500, "sd_checkpoint": "abc123", "sd_checkpoint_name": "v1-5"}, folder / "brand.pt")
    if fmt == "a1111_safetensors":  # A1111 / kohya
        return _save({"emb_params": vecs}, folder / "brand.safetensors")
    if fmt in ("diffusers_safetensors", "diffusers_bin"):  # diffusers' training script: [width] for one vector
        data = {"<brand>": vecs[0].clone() if vecs.shape[0] == 1 else vecs}
        if fmt == "diffusers_bin":
            return _save(data, folder / "learned_embeds.bin")
        _save(data, folder / "ti" / "learned_embeds.safetensors")
        return folder / "ti"
    if fmt == "comfy_clip_l":  # ComfyUI reads the "clip_l" key of an SD 1.x embedding
        return _save({"clip_l": vecs}, folder / "brand_l.safetensors")
    if fmt == "comfy_list":  # ComfyUI concatenates the tensors of a list of dicts
        parts = [{"a": vecs[:1].clone()}] + ([{"b": vecs[1:].clone()}] if vecs.shape[0] > 1 else [])
        return _save(parts, folder / "brand_list.pt")
    raise ValueError(fmt)


def write_sdxl(fmt: str, folder: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """An SDXL embedding (A1111 / kohya layout: ``clip_l`` and ``clip_g``) as ``.safetensors`` or ``.pt``."""
    if fmt not in SDXL_FORMATS:
        raise ValueError(fmt)
    suffix = ".safetensors" if fmt == "sdxl_safetensors" else ".pt"
    return _save({"clip_l": clip_l, "clip_g": clip_g}, folder / f"brand_xl{suffix}")
