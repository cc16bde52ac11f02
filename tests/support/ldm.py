"""diffusers -> original (LDM/CompVis) key layout, written for the tests independently of the production
code: single-file checkpoints, and the LDM names of LoRA files."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

# The inverse of diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint /
# convert_ldm_clip_checkpoint (diffusers/loaders/single_file_utils.py), written for any number of levels and
# layers per block, the way diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py does it for
# SD 1.5's fixed shape.

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for diffusers_name, ldm_name in table.items():
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name):]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    lpb, levels = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}
    for b in range(levels):
        for j in range(lpb):
            prefixes[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{b * (lpb + 1) + j + 1}.0."
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{b * (lpb + 1) + j + 1}.1."
        for j in range(lpb + 1):
            prefixes[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{b * (lpb + 1) + j}.0."
            prefixes[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{b * (lpb + 1) + j}.1."
        if b < levels - 1:
            prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{(b + 1) * (lpb + 1)}.0.op."
            slot = 2 if "CrossAttn" in config["up_block_types"][b] else 1
            prefixes[f"up_blocks.{b}.upsamplers.0."] = f"output_blocks.{b * (lpb + 1) + lpb}.{slot}."
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":
        fixed.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        prefix = next(p for p in prefixes if key.startswith(p))
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = _rename_first(rest, _RESNET_TO_LDM)
        out[prefixes[prefix] + rest] = value
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    prefixes = {}
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        p = next(p for p in prefixes if key.startswith(p))
        rest = key[len(p):]
        if ".attentions." in p:
            rest = _rename_first(rest, _VAE_ATTN_TO_LDM)
            if value.ndim == 2:  # the original attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        elif ".resnets." in p:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        out[prefixes[p] + rest] = value
    return {prefix + k: v for k, v in out.items()}


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items()}


def save_single_file(folder: Path, file: Path, config_dir: Path) -> tuple[Path, Path]:
    """Write the diffusers SD 1.x folder ``folder`` as one original-layout checkpoint ``file`` (.safetensors or
    .ckpt) plus ``config_dir``: the folder without its weights (what ``from_single_file(config=)`` reads)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    checkpoint = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
                  **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
                  **clip_to_ldm(pipe.text_encoder.state_dict())}
    checkpoint = {k: v.detach().clone().contiguous() for k, v in checkpoint.items()}
    if file.suffix == ".safetensors":
        save_file(checkpoint, file)
    else:
        torch.save({"state_dict": checkpoint}, file)
    if not config_dir.exists():
        shutil.copytree(folder, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return file, config_dir
