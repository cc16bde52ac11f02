"""Real-size Stable Diffusion 1.5 and SDXL inpainting pipelines with random weights, built from code.

For benchmarks that need no downloaded weights (``make bench-gpu``, scripts/bench_gpu.py): every module has
the exact architecture of the published checkpoint, so a pipeline built here does the same FLOPs, holds the
same memory and launches the same kernels as the real one, only its pictures are noise. Production never
imports this module (the demo room is where models built by code live).

The configurations are those of the checkpoints' ``config.json`` files:

* SD 1.5 inpainting (``runwayml/stable-diffusion-inpainting``): :data:`SD15_UNET` (9 input channels: 4 noisy
  latents, 1 mask, 4 masked-image latents), :data:`SD_VAE`, :data:`CLIP_L_TEXT` (OpenAI CLIP ViT-L/14's text
  tower) and PNDM with SD's betas (:data:`SD15_SCHEDULER`), the scheduler that checkpoint ships with.
* SDXL inpainting (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``): :data:`SDXL_UNET`, :data:`SDXL_VAE`,
  :data:`CLIP_L_TEXT` and :data:`OPENCLIP_BIGG_TEXT` (the second, projected text encoder), Euler with SD's
  betas (:data:`SDXL_SCHEDULER`).

What differs from the real checkpoints, on purpose and without effect on speed:

* The weights: linear/conv/embedding weights are random with standard deviation 0.02 (:func:`materialize`),
  normalisation weights 1, biases 0, drawn per parameter from a generator seeded by (seed, component,
  parameter name) on the target device: the same seed and device give the same weights. This keeps
  activations finite in float16 (no NaNs to slow kernels or spoil the benchmark's images); it is not meant
  to draw anything.
* The tokenizer: no vocabulary file can be downloaded, so both pipelines use the demo model's byte-level BPE
  tokenizer (a 1000-token vocabulary, ``model_max_length`` 77). Prompts are padded to 77 tokens either way,
  so the text encoders (whose embedding tables keep CLIP's 49408 rows) do exactly the real work; the
  encoders' ``bos/eos/pad_token_id`` are set to this tokenizer's so the pooled output picks the EOS token.
* No safety checker (the service has none; a benchmark against the stock pipeline compares the same parts).

Building is fast and takes no extra memory: modules are constructed with their parameters on the meta device
(``accelerate.init_empty_weights``, buffers real), then every parameter is allocated once, directly on the
target device in the target dtype, and filled in place; nothing is initialised twice nor copied between
devices. ``device="meta"`` builds the whole pipeline without allocating any weight (for parameter counts and
FLOP counting).
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from workers.demo.model import build_tokenizer

#: UNet of ``runwayml/stable-diffusion-inpainting`` (``unet/config.json``): 859,535,364 parameters.
SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

#: UNet of ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``: 2,567,478,084 parameters. Its
#: ``projection_class_embeddings_input_dim`` 2816 = 6 time ids x 256 + the 1280-wide pooled text embedding
#: (no aesthetic score, hence ``requires_aesthetics_score=False`` in the pipeline).
SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 9,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

#: The KL autoencoder of Stable Diffusion 1.x (``vae/config.json``): 83,653,863 parameters.
#: ``sample_size`` only sets the tile size when VAE tiling is on.
SD_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

#: SDXL's VAE: the same architecture with SDXL's latent scale; ``force_upcast`` makes the stock pipeline
#: decode in float32 (the original SDXL VAE overflows in float16).
SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

#: The text tower of OpenAI CLIP ViT-L/14 (SD 1.5's text encoder, and SDXL's first): 123,060,480 parameters.
CLIP_L_TEXT: dict[str, Any] = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

#: The text tower of OpenCLIP ViT-bigG/14 with its projection (SDXL's ``text_encoder_2``,
#: ``CLIPTextModelWithProjection``): 694,659,840 parameters.
OPENCLIP_BIGG_TEXT: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

#: ``scheduler/scheduler_config.json`` of the SD 1.5 inpainting checkpoint (PNDM, SD's scaled-linear betas).
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

#: ``scheduler/scheduler_config.json`` of the SDXL inpainting checkpoint (Euler, the same betas).
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

#: Standard deviation of the random weights (CLIP's and many transformers' initialiser scale).
WEIGHT_STD = 0.02


def _param_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (``seed``, ``name``): each parameter's draw is independent of the others
    and of the order modules are built in."""
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 63)


def materialize(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype, seed: int,
                component: str) -> torch.nn.Module:
    """Give the meta-device parameters of ``model`` real storage on ``device`` in ``dtype`` and fill them.

    Each parameter is allocated once, on ``device`` directly, and filled in place by a generator on that
    device seeded by (``seed``, ``component``, its name): weights of two or more dimensions (linear, conv,
    embedding) uniform(-a, a) with a = sqrt(3) x :data:`WEIGHT_STD` (standard deviation WEIGHT_STD; uniform
    rather than normal because a CPU draws it twice as fast, and SDXL has 3.5 billion of them), a
    one-dimensional ``weight`` (norm layers) 1, everything else (biases) 0. Buffers (built real by
    ``init_empty_weights(include_buffers=False)``) are moved to ``device`` with their dtype kept (integer
    position ids stay integers). On ``device="meta"`` nothing is allocated nor filled.
    Returns ``model`` in eval mode, parameters without gradients.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device) if device.type != "meta" else None
    bound = WEIGHT_STD * 3**0.5
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                full_name = f"{component}.{module_name}.{name}" if module_name else f"{component}.{name}"
                tensor = torch.empty(tuple(param.shape), device=device, dtype=dtype)
                if generator is None:
                    pass
                elif tensor.dim() >= 2:
                    generator.manual_seed(_param_seed(seed, full_name))
                    tensor.uniform_(-bound, bound, generator=generator)
                elif name == "weight":
                    tensor.fill_(1.0)
                else:
                    tensor.zero_()
                module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = buffer.to(device)
    return model.eval()


def _tokenizer() -> CLIPTokenizer:
    """The demo model's byte-level BPE tokenizer (``model_max_length`` 77), built in a throw-away folder."""
    with tempfile.TemporaryDirectory(prefix="atelier-realsize-") as tmp:
        return build_tokenizer(Path(tmp) / "tokenizer")


def _text_config(fields: dict[str, Any], tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        **fields,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _build(device: torch.device | str, dtype: torch.dtype, seed: int, factories: dict[str, Any]) -> dict[str, Any]:
    """Construct each ``factories`` entry with meta parameters, then :func:`materialize` it."""
    modules = {}
    for component, factory in factories.items():
        with init_empty_weights(include_buffers=False):
            module = factory()
        modules[component] = materialize(module, device, dtype, seed, component)
    return modules


def build_sd15_inpaint(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> StableDiffusionInpaintPipeline:
    """A ``StableDiffusionInpaintPipeline`` with the architecture of ``runwayml/stable-diffusion-inpainting``
    (UNet 859.5M, VAE 83.65M, CLIP ViT-L text encoder 123.06M parameters) and random weights, on ``device``
    in ``dtype``; deterministic for a given ``seed`` and device. ``device="meta"`` allocates no weights."""
    tokenizer = _tokenizer()
    modules = _build(device, dtype, seed, {
        "unet": lambda: UNet2DConditionModel(**SD15_UNET),
        "vae": lambda: AutoencoderKL(**SD_VAE),
        "text_encoder": lambda: CLIPTextModel(_text_config(CLIP_L_TEXT, tokenizer)),
    })
    return StableDiffusionInpaintPipeline(
        **modules,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl_inpaint(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       seed: int = 0) -> StableDiffusionXLInpaintPipeline:
    """A ``StableDiffusionXLInpaintPipeline`` with the architecture of
    ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` (UNet 2.567B, VAE 83.65M, text encoders CLIP ViT-L
    123.06M and OpenCLIP bigG 694.66M parameters) and random weights, on ``device`` in ``dtype``;
    deterministic for a given ``seed`` and device. ``device="meta"`` allocates no weights.

    Memory: about 3.47B parameters, 6.9 GB in float16 and 13.9 GB in float32."""
    tokenizer = _tokenizer()
    modules = _build(device, dtype, seed, {
        "unet": lambda: UNet2DConditionModel(**SDXL_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "text_encoder": lambda: CLIPTextModel(_text_config(CLIP_L_TEXT, tokenizer)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(_text_config(OPENCLIP_BIGG_TEXT, tokenizer)),
    })
    return StableDiffusionXLInpaintPipeline(
        **modules,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )


def unet_forward_flops(unet: UNet2DConditionModel, height: int, width: int, batch: int) -> int:
    """FLOPs of one forward of ``unet`` on ``batch`` latents of a ``height`` x ``width`` image (pixels; the
    latents are 8 times smaller), counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions,
    matmuls and attention (a multiply-add counts 2); normalisations, activations and element-wise ops are
    not counted (a few per cent at most). A classifier-free-guided step is ``batch`` 2 per image.

    Runs on the UNet's own device: on a meta-device UNet (``build_*(device="meta")``) it costs nothing and
    allocates nothing. Inputs are built from the UNet's config: 77 text tokens of ``cross_attention_dim``,
    and for SDXL's ``text_time`` conditioning the pooled text embedding and the 6 time ids.
    """
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    config = unet.config
    latents = torch.zeros(batch, config.in_channels, height // 8, width // 8, device=device, dtype=dtype)
    context = torch.zeros(batch, 77, config.cross_attention_dim, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if config.addition_embed_type == "text_time":
        time_ids = 6  # original size, crop top-left, target size (h, w each)
        pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.zeros(batch, time_ids, device=device, dtype=dtype),
        }
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(latents, torch.tensor(500, device=device), encoder_hidden_states=context, **kwargs)
    return int(counter.get_total_flops())


#: The builders by the names the benchmark uses (``--archs``).
BUILDERS = {"sd15": build_sd15_inpaint, "sdxl": build_sdxl_inpaint}
