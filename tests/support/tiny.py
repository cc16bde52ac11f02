"""Tiny Stable Diffusion models built by code for the tests, in SD 1.5's and SDXL's layouts: random weights,
real diffusers folders (``save_pretrained``) that the production loaders read."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SIZE = 64


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges (one token per character), loaded from files the way
    checkpoints are (the constructor with file paths silently makes a 2-token tokenizer)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token="<|endoftext|>")
    assert len(tok) == len(tokens)
    return tok


def _text_config(tok: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def make_vae() -> AutoencoderKL:
    """4 levels (scale factor 8) like SD's; channels change between levels (shortcut convs) and the mid
    block has attention, so the single-file key mapping is exercised in full."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=SIZE)


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def build_sd15(folder: Path, in_channels: int, seed: int = 0) -> Path:
    """A tiny SD 1.5-shaped diffusers folder: SD 1.5's block layout (cross-attention blocks first, a plain
    block last) with 3 levels and 2 layers per block, a 9-channel (inpainting) or 4-channel (base) UNet."""
    torch.manual_seed(seed)
    tok = make_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8)
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(vae=make_vae(), text_encoder=CLIPTextModel(_text_config(tok)), tokenizer=tok, unet=unet,
               scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL inpainting folder: two CLIP text encoders (the second with a projection), a UNet with
    SDXL's text-time conditioning (cross-attention dim = 32 + 32, pooled 32 + 6 x 8 time ids)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLInpaintPipeline(
        vae=make_vae(), text_encoder=CLIPTextModel(_text_config(tok)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, projection_dim=32)), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=scheduler, requires_aesthetics_score=False)
    pipe.save_pretrained(folder)
    return folder
