"""Stable Diffusion inpainting around a :class:`~workers.compose.Composition`.

Imports torch and diffusers: only the worker imports this module.

What the service relies on, and how it is obtained:

* **Exact output size.** ``height`` and ``width`` are always passed to the pipeline (without them it
  silently works at the UNet's native size). Sizes that are not a multiple of the VAE factor (8 for Stable
  Diffusion) are run at the size rounded *up* (:func:`~workers.compose.pad_to_multiple`: the image
  edge-replicated, the padding redrawn) and cropped back to exactly width x height.
* **Exact clothes.** Every result goes through :func:`~workers.compose.paste_back`.
* **Reproducible batches.** Image ``i`` of a batch is generated from seed ``seed + i`` by its own pipeline
  call with its own CPU ``torch.Generator``, so it is bit-identical to a single-image request with seed
  ``seed + i``. One call per image is deliberate: a batched call gives each image slightly different
  numbers (different kernels for a different batch size; measured: off by one grey level on the CPU), and
  with a single input image diffusers VAE-encodes it with ``generator[0]`` for the whole batch, so image
  ``i`` would also depend on ``seed``. It also bounds memory at large sizes. CPU generators make the
  starting noise the same on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image

from workers.compose import Composition, inpaint_mask, pad_to_multiple, paste_back

StepCallback = Callable[[int, int], None]


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


def load_pipeline(source: Path, device: str, dtype: torch.dtype) -> DiffusionPipeline:
    """Load a local diffusers folder as an inpainting pipeline on ``device`` in ``dtype``.

    ``AutoPipelineForInpainting`` maps the folder's pipeline class to its inpainting sibling, so both
    inpainting checkpoints (9-channel UNet) and base checkpoints (4-channel, inpainted by latent blending)
    load. Only local files are read. The folder's own safety checker setting is kept. The progress bar is off.
    """
    source = Path(source)
    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(f"{source} is not a diffusers folder (no model_index.json)")
    pipe = AutoPipelineForInpainting.from_pretrained(source, dtype=dtype, local_files_only=True)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_inpaint(
    pipe: DiffusionPipeline,
    comp: Composition,
    prompt: str,
    negative_prompt: str,
    seed: int,
    batch_size: int,
    steps: int,
    guidance_scale: float,
    on_step: StepCallback | None = None,
) -> list[Image.Image]:
    """Redraw everything but the clothes of ``comp``; return ``batch_size`` RGB images of ``comp``'s size.

    Image ``i`` is generated from seed ``seed + i`` and equals a single-image run with that seed (same
    model, device and inputs). The clothes pixels of every image are bit-identical to ``comp.image``'s.
    ``on_step(step, total)`` is called after every denoising step of the whole batch, ``step`` counting from
    1 to ``total`` = ``batch_size`` x the scheduler's number of timesteps (for some schedulers, e.g. PNDM,
    that differs from ``steps``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    padded = pad_to_multiple(comp, math.lcm(8, pipe.vae_scale_factor))
    mask = inpaint_mask(padded)
    crop_box = (0, 0, comp.width, comp.height)
    image_index = 0

    def step_end(pipeline: DiffusionPipeline, index: int, timestep, tensors: dict) -> dict:
        per_image = pipeline.num_timesteps
        on_step(image_index * per_image + index + 1, batch_size * per_image)
        return tensors

    images = []
    for image_index in range(batch_size):
        result = pipe(
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=padded.image,
            mask_image=mask,
            height=padded.height,
            width=padded.width,
            strength=1.0,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            num_images_per_prompt=1,
            generator=torch.Generator(device="cpu").manual_seed(seed + image_index),
            callback_on_step_end=step_end if on_step is not None else None,
            output_type="pil",
        )
        images.append(paste_back(result.images[0].crop(crop_box), comp))
    return images
