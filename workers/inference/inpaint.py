"""Stable Diffusion inpainting around a :class:`~workers.inference.compose.Composition`.

Imports torch and diffusers: only the worker imports this module.

What the service relies on, and how it is obtained:

* **Exact output size.** ``height`` and ``width`` are always passed to the pipeline (without them it
  silently works at the UNet's native size). Sizes that are not a multiple of the VAE factor (8 for Stable
  Diffusion) are run at the size rounded *up* (:func:`~workers.inference.compose.pad_to_multiple`: the image
  edge-replicated, the padding redrawn) and cropped back to exactly width x height.
* **Exact clothes.** Every result goes through :func:`~workers.inference.compose.paste_back`.
* **Background reference (Image2Image).** The image the pipeline starts from is the background reference
  outside the clothes (:func:`~workers.inference.compose.with_background`), denoised with a *per-pixel* strength
  (:func:`~workers.inference.compose.redraw_strength`): ``1 - refer_strength`` on the background, always 1 on the
  figure of a cut-out mannequin. This is differential diffusion, done inside the denoising loop
  (:class:`ReferenceHold`): the pipeline runs at strength 1 and, after every step, the latent pixels whose
  own start step has not come yet are reset to the reference's latents noised to the next timestep.
* **Batches in few calls, each image from its own seed.** A BatchSize of N runs as pipeline calls of up to
  :func:`~workers.patching.per_call.images_per_call` images each (the model's ``speed.max_batch`` and
  ``speed.max_batch_megapixels``: one call at 512x512 x 8 keeps a GPU busy, and the chunks bound memory at
  large sizes). Image ``i`` gets its own CPU ``torch.Generator`` seeded ``seed + i``, and the call is given N
  copies of the input image and mask, so every random draw image ``i`` sees (its initial noise, its VAE
  posterior sample) is the very draw a single-image call with seed ``seed + i`` makes. What still differs is
  arithmetic: kernels for a batch of N round differently from kernels for one image, so image ``i`` of a
  batch is within a small tolerance of the single-image request with seed ``seed + i``, not bit-identical
  (docs/API.md "Seeds"; tests/worker/inference/test_batching.py measures it). A single-image call is made exactly as
  before (one image, one generator): a BatchSize 1 task is unchanged bit for bit. CPU generators make the
  starting noise the same on every device.

One call, in named steps: its settings (:class:`Sampling`, checked when made), what every pipeline call starts
from (:func:`_canvas`: the padded composition, its mask, the held reference), the state the pipeline's step
callback keeps across the calls of a batch (:class:`_StepEnd`), one pipeline call per chunk
(:func:`_call_pipeline`), each image cropped and pasted back (:func:`_finish`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import retrieve_latents
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from workers.inference.compose import (
    Composition,
    held_exactly,
    inpaint_mask,
    pad_to_multiple,
    paste_back_pixels,
    redraw_strength,
    with_background,
)
from workers.patching.per_call import before_call, images_per_call

StepCallback = Callable[[int, int], None]


def latent_strength(strength: np.ndarray, keep: np.ndarray, factor: int) -> np.ndarray:
    """Bring a per-pixel strength map (:func:`~workers.inference.compose.redraw_strength`) to latent resolution.

    Each ``factor`` x ``factor`` block of pixels becomes one latent pixel whose strength is the *largest*
    strength of the block's pixels outside the clothes, so whatever must be redrawn wins (the figure of a
    cut-out, at 1, takes every block it touches: the person is never held back by a background pixel
    sharing its block). Blocks that are all clothes get 1: they are not held to the reference, the pipeline
    treats them as without a reference (a 9-channel model draws them from its masked-image input, a
    4-channel one keeps them itself), and the clothes are pasted back in pixel space anyway.
    """
    height, width = strength.shape
    if height % factor or width % factor:
        raise ValueError(f"a {width}x{height} map does not split into {factor}x{factor} blocks")
    candidates = np.where(keep, -1.0, strength).reshape(height // factor, factor, width // factor, factor)
    pooled = candidates.max(axis=(1, 3))
    return np.where(pooled < 0, 1.0, pooled).astype(np.float32)


def start_steps(strength: np.ndarray, total: int) -> np.ndarray:
    """The denoising step index at which each latent pixel starts: ``round((1 - strength) * total)``
    (halves rounded up). 0 = from the first step (pure noise); ``total`` = never (kept at the reference).

    Halves are rounded up with a small tolerance: strengths are decimal fractions stored in binary
    (``1 - 0.1`` in float32 times 5 is 4.49999999), and ReferStrength 0.9 over 5 steps must start at 5.
    """
    return np.floor((1.0 - strength.astype(np.float64)) * total + 0.5 + 1e-4).astype(np.int64)


def reference_latents(pipe: DiffusionPipeline, image: Image.Image) -> torch.Tensor:
    """The VAE latents of ``image`` as the pipeline's denoising loop sees them: preprocessed like the
    pipeline's own input image, encoded deterministically (the mode of a ``latent_dist``, or an
    ``AutoencoderTiny``'s ``.latents``), times the VAE's ``scaling_factor``."""
    device = pipe._execution_device
    pixels = pipe.image_processor.preprocess(image, height=image.height, width=image.width)
    pixels = pixels.to(device=device, dtype=pipe.vae.dtype)
    with torch.no_grad():
        latents = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    return latents * pipe.vae.config.scaling_factor


class ReferenceHold:
    """Differential diffusion towards a reference, applied in ``callback_on_step_end``.

    Latent pixel p (strength s_p, :func:`latent_strength`) starts at step index
    k_p = round((1 - s_p) * N), N being the number of denoising steps the pipeline runs. Until then it
    follows the reference: after step i, every pixel with k_p > i is set to
    ``scheduler.add_noise(x0, noise, t_{i+1})``, the reference latents ``x0`` noised to the level the
    latents are at now, with one fixed ``noise`` tensor per image, so step k_p denoises it from exactly the
    state an img2img run of strength s_p starts from. After the last step, pixels with k_p = N (s_p = 0)
    are set to ``x0`` itself. Pixels with k_p = 0 are never touched.

    Notes: the values written are ``add_noise`` outputs, which are already in the latents' space for every
    scheduler (variance-preserving for DDIM/PNDM, ``x0 + sigma * noise`` for Euler-type ones), so they are
    not multiplied by ``init_noise_sigma``, and ``noise`` is unit Gaussian noise (what the pipeline draws
    before scaling its initial latents). Euler-type schedulers' ``add_noise`` ignore the timestep passed
    inside the loop and use their current step index, which after step i is i + 1: the same level. During
    the very first step, held pixels are the pipeline's pure noise rather than the reference noised to the
    first timestep: at the first (strength 1) timestep the reference's share is negligible (sqrt of
    alpha-bar ~ 0.07 for SD's schedule), the approximation diffusers itself makes for strength 1. The
    callback runs after a 4-channel pipeline's own blend of its kept region, so it has the last word.

    Use one per pipeline call, ``noise_seed`` = the seed of each image of the call (one image's noise is then
    the very draw a pipeline generator with that seed makes for its initial latents when nothing else consumes
    it first, as with a 9-channel model), and call it from ``callback_on_step_end`` as
    ``tensors["latents"] = hold(pipeline, index, tensors["latents"])``; any pipeline with the Stable
    Diffusion loop (a ControlNet one too) works the same way.
    """

    def __init__(self, x0: torch.Tensor, strength: np.ndarray, noise_seed: int | Sequence[int]):
        seeds = [noise_seed] if isinstance(noise_seed, int) else list(noise_seed)
        self.x0 = x0 if len(seeds) == 1 else x0.expand(len(seeds), *x0.shape[1:])
        self.strength = strength
        self.noise = torch.cat([
            randn_tensor(tuple(x0.shape), generator=torch.Generator(device="cpu").manual_seed(s),
                         device=x0.device, dtype=x0.dtype)
            for s in seeds
        ])
        self._starts: torch.Tensor | None = None

    def __call__(self, pipeline: DiffusionPipeline, index: int, latents: torch.Tensor) -> torch.Tensor:
        total = pipeline.num_timesteps
        if self._starts is None:
            starts = torch.from_numpy(start_steps(self.strength, total))
            self._starts = starts[None, None].to(latents.device)
        held = self._starts > index
        if not bool(held.any()):
            return latents
        if index + 1 < total:
            timesteps = pipeline.scheduler.timesteps
            target = pipeline.scheduler.add_noise(self.x0, self.noise, timesteps[index + 1 : index + 2])
        else:
            target = self.x0
        return torch.where(held, target.to(dtype=latents.dtype), latents)


def to_bytes(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The top-left ``height`` x ``width`` of a pipeline's ``output_type="np"`` image (height, width, 3 floats in
    0..1) as a C-contiguous uint8 array, exactly as diffusers' own PIL output would be (x 255, rounded half to
    even).

    The pipeline's float32 array is a permuted view of its (channels, height, width) tensor: each channel plane
    is scaled and rounded by OpenCV (``convertScaleAbs``: the float32 product rounded to nearest even and
    saturated, numpy's ``rint`` of it) and the planes are interleaved once, instead of rounding in the planar
    order and transposing the bytes afterwards (several times slower at 512x512)."""
    planes = np.moveaxis(image, -1, 0)
    if image.dtype == np.float32 and image.shape[-1] == 3 and planes.flags.c_contiguous:
        pixels = cv2.merge([cv2.convertScaleAbs(plane, alpha=255) for plane in planes])
    else:
        scaled = np.multiply(image, 255)
        np.rint(scaled, out=scaled)
        pixels = scaled.astype(np.uint8)
    if pixels.shape[:2] != (height, width):
        pixels = pixels[:height, :width]
    return np.ascontiguousarray(pixels)


def size_multiple(pipe: DiffusionPipeline) -> int:
    """Pipeline calls run at a size padded up to a multiple of this (8 and the VAE's scale factor)."""
    return math.lcm(8, pipe.vae_scale_factor)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How one :func:`run_inpaint` (or :func:`~workers.inference.control.run_control_inpaint`) call samples;
    checked when made (``ValueError``).

    Image ``i`` is generated from seed ``seed + i``: a single-image run with that seed (same model, device and
    inputs) gives the same image, bit for bit when ``batch_size`` is 1, within a small tolerance otherwise
    (batches run as few pipeline calls: see the module doc). ``steps`` denoising steps, classifier-free guidance
    ``guidance_scale``.

    ``background`` (Image2Image): a reference for everything outside the clothes, of any size (brought to the
    composition's by :func:`~workers.inference.compose.fit_background`), denoised with the per-pixel strength of
    :func:`~workers.inference.compose.redraw_strength`: ``1 - refer_strength`` on the background, 1 on the figure
    of a cut-out mannequin (see :class:`ReferenceHold` for how). ``refer_strength`` 0 ignores the reference (the
    images are exactly those without it); 1 keeps it: the background pixels of the result are the reference's,
    bit for bit, blended into the redrawn figure over the same seam as the clothes.

    ``on_step(step, total)`` is called after every denoising step of the whole batch, ``step`` counting from 1 to
    ``total`` = ``batch_size`` x the scheduler's number of timesteps (for some schedulers, e.g. PNDM, that
    differs from ``steps``).

    ``stats``: when given, ``stats["pipeline_s"]`` grows by the seconds spent inside the pipeline calls, less
    their step callbacks (progress, cancellation): the bare diffusion work, which ``make bench`` subtracts from a
    task's time to get what the service adds.

    ``output``: ``"np"`` returns each image as its uint8 array (height, width, 3) instead of an RGB image (what
    the worker encodes: no round trip through PIL).
    """

    seed: int
    batch_size: int = 1
    steps: int
    guidance_scale: float
    background: Image.Image | None = None
    refer_strength: float = 0.5
    on_step: StepCallback | None = None
    stats: dict[str, float] | None = None
    output: Literal["pil", "np"] = "pil"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.refer_strength <= 1.0:
            raise ValueError(f"refer_strength must be between 0 and 1, got {self.refer_strength}")


@dataclass(frozen=True)
class _Canvas:
    """What every pipeline call of one :func:`run_inpaint` starts from."""

    #: The composition padded to :func:`size_multiple`; outside the clothes, the background reference when a
    #: latent pixel is held to it.
    padded: Composition
    #: Its inpainting mask (:func:`~workers.inference.compose.inpaint_mask`).
    mask: Image.Image
    #: The reference's latents and the latent strength map (:func:`latent_strength`), when a latent pixel is held.
    x0: torch.Tensor | None
    strength: np.ndarray | None
    #: ReferStrength 1: the pixels kept exactly (the clothes and the background) and the image they come from.
    kept: np.ndarray | None
    source: Image.Image | None


def _canvas(pipe: DiffusionPipeline, comp: Composition, sampling: Sampling) -> _Canvas:
    """Pad ``comp`` for ``pipe`` and, with a background reference, put it outside the clothes and work out
    which latent pixels are held to it (none: the reference plays no part)."""
    multiple = size_multiple(pipe)
    padded = pad_to_multiple(comp, multiple)
    start = with_background(comp, sampling.background) if sampling.background is not None else None
    strength = None
    if start is not None and sampling.refer_strength > 0:
        padded_start = pad_to_multiple(start, multiple)
        pixel_strength = redraw_strength(padded_start, sampling.refer_strength)
        strength = latent_strength(pixel_strength, padded_start.keep, pipe.vae_scale_factor)
        if (strength < 1).any():
            padded = padded_start
        else:
            strength = None  # no latent pixel is held: the reference plays no part
    x0 = reference_latents(pipe, padded.image) if strength is not None else None
    mask = inpaint_mask(padded)
    if sampling.background is not None and sampling.refer_strength == 1.0:  # the clothes and the background are kept
        kept, source = held_exactly(comp, sampling.background)
    else:
        kept, source = None, None
    return _Canvas(padded=padded, mask=mask, x0=x0, strength=strength, kept=kept, source=source)


class _StepEnd:
    """The pipeline's ``callback_on_step_end`` for one :func:`run_inpaint`, and the state it keeps across the
    pipeline calls of the batch: the running call's :class:`ReferenceHold`, how many images the calls before it
    made (``done``) and how many it makes (``chunk``), for the progress count; and the seconds spent in
    ``on_step`` since :meth:`seconds_in_callbacks` last took them."""

    def __init__(self, on_step: StepCallback | None, batch_size: int):
        self.on_step = on_step
        self.batch_size = batch_size
        self.hold: ReferenceHold | None = None
        self.done = 0
        self.chunk = 1
        self._in_callbacks = 0.0

    def start_call(self, done: int, chunk: int, hold: ReferenceHold | None) -> None:
        """A pipeline call making images ``done`` to ``done + chunk - 1`` of the batch begins."""
        self.done, self.chunk, self.hold = done, chunk, hold

    @property
    def needed(self) -> bool:
        """Whether the running call needs the callback at all (without it the pipeline runs as it would alone)."""
        return self.on_step is not None or self.hold is not None

    def seconds_in_callbacks(self) -> float:
        """The seconds ``on_step`` took since the last time this was asked."""
        seconds, self._in_callbacks = self._in_callbacks, 0.0
        return seconds

    def __call__(self, pipeline: DiffusionPipeline, index: int, timestep, tensors: dict) -> dict:
        if self.hold is not None:
            tensors["latents"] = self.hold(pipeline, index, tensors["latents"])
        if self.on_step is not None:
            t0 = time.perf_counter()
            per_image = pipeline.num_timesteps
            try:
                self.on_step(self.done * per_image + (index + 1) * self.chunk, self.batch_size * per_image)
            finally:
                self._in_callbacks += time.perf_counter() - t0
        return tensors


def _call_pipeline(pipe: DiffusionPipeline, prompt: str, negative_prompt: str, canvas: _Canvas, sampling: Sampling,
                   step_end: _StepEnd, done: int, chunk: int, pipeline_kwargs: dict | None,
                   starts: list[Image.Image] | None = None, strength: float = 1.0) -> list[np.ndarray]:
    """One pipeline call making images ``done`` to ``done + chunk - 1`` of the batch, each from its own seed;
    the pipeline's float images (``output_type="np"``), at the padded size. ``starts``: each image's own start
    (padded), redrawn at ``strength`` (a refine pass); else the canvas, at strength 1."""
    seeds = [sampling.seed + done + k for k in range(chunk)]
    step_end.start_call(done, chunk, ReferenceHold(canvas.x0, canvas.strength, seeds) if canvas.x0 is not None
                        else None)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    padded = canvas.padded
    before_call(pipe, padded.width, padded.height, chunk)
    # one copy per image, so that each image's VAE sample is drawn from its own generator
    images = starts[done:done + chunk] if starts is not None else [padded.image] * chunk
    started = time.perf_counter()
    result = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        image=images[0] if chunk == 1 else images,
        mask_image=canvas.mask if chunk == 1 else [canvas.mask] * chunk,
        height=padded.height,
        width=padded.width,
        strength=strength,
        num_inference_steps=sampling.steps,
        guidance_scale=sampling.guidance_scale,
        num_images_per_prompt=chunk,
        generator=generators[0] if chunk == 1 else generators,
        callback_on_step_end=step_end if step_end.needed else None,
        output_type="np",
        **(pipeline_kwargs or {}),
    )
    in_callbacks = step_end.seconds_in_callbacks()
    if sampling.stats is not None:
        stats = sampling.stats
        stats["pipeline_s"] = stats.get("pipeline_s", 0.0) + time.perf_counter() - started - in_callbacks
    return list(result.images)


def _finish(generated: np.ndarray, comp: Composition, canvas: _Canvas,
            output: Literal["pil", "np"]) -> Image.Image | np.ndarray:
    """One generated image cropped to ``comp``'s size, its clothes (and with ReferStrength 1 its background)
    pasted back exactly."""
    pixels = to_bytes(generated, comp.height, comp.width)
    if canvas.kept is not None:
        pixels = paste_back_pixels(pixels, comp, keep=canvas.kept, source=canvas.source, overwrite=True)
    else:
        pixels = paste_back_pixels(pixels, comp, overwrite=True)
    return pixels if output == "np" else Image.fromarray(pixels, mode="RGB")


def _rgb(image: Image.Image | np.ndarray, comp: Composition) -> Image.Image:
    """A start image as RGB, checked to be ``comp``'s size."""
    rgb = Image.fromarray(image, mode="RGB") if isinstance(image, np.ndarray) else image.convert("RGB")
    if rgb.size != (comp.width, comp.height):
        raise ValueError(f"a start image of {rgb.width}x{rgb.height} for a {comp.width}x{comp.height} composition")
    return rgb


def run_inpaint(
    pipe: DiffusionPipeline,
    comp: Composition,
    prompt: str,
    negative_prompt: str,
    sampling: Sampling,
    *,
    pipeline_kwargs: dict | None = None,
    starts: Sequence[Image.Image | np.ndarray] | None = None,
    strength: float = 1.0,
) -> list[Image.Image] | list[np.ndarray]:
    """Redraw everything but the clothes of ``comp`` as ``sampling`` says (:class:`Sampling`: seeds, steps,
    guidance, background reference, progress, output kind); return ``sampling.batch_size`` RGB images of
    ``comp``'s size. The clothes pixels of every image are bit-identical to ``comp.image``'s.

    ``pipeline_kwargs``: extra arguments of every pipeline call (the ControlNet runner's control maps,
    already padded to the size this function pads to: the composition rounded up to :func:`size_multiple`).

    ``starts`` (a refine pass, :mod:`workers.inference.passes`): one image of ``comp``'s size per image of the
    batch, each redrawn outside the clothes from itself at ``strength`` (img2img: the last ``strength`` of the
    denoising schedule) instead of from the composition at strength 1.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    canvas = _canvas(pipe, comp, sampling)
    padded_starts = None
    if starts is not None:
        if len(starts) != sampling.batch_size:
            raise ValueError(f"{len(starts)} start images for a batch of {sampling.batch_size}")
        multiple = size_multiple(pipe)
        padded_starts = [pad_to_multiple(Composition(_rgb(start, comp), comp.keep, comp.figure), multiple).image
                         for start in starts]
    per_call = images_per_call(pipe, canvas.padded.width, canvas.padded.height)
    step_end = _StepEnd(sampling.on_step, sampling.batch_size)
    images = []
    for done in range(0, sampling.batch_size, per_call):
        chunk = min(per_call, sampling.batch_size - done)
        for generated in _call_pipeline(pipe, prompt, negative_prompt, canvas, sampling, step_end, done, chunk,
                                        pipeline_kwargs, padded_starts, strength):
            images.append(_finish(generated, comp, canvas, sampling.output))
    return images
