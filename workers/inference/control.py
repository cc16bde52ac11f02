"""The control pipeline built on the cached base pipeline, and controlled inpainting.

Imports torch and diffusers. ControlNets are loaded by :func:`workers.models.loading.load_controlnet` and
kept in the worker's model cache; control maps are made by :mod:`workers.inference.preprocess`.

* :func:`control_pipeline`: a ``StableDiffusionControlNetInpaintPipeline`` made of the base pipeline's own
  modules (``ctrl.unet is base.unet``, the same VAE, text encoder, tokenizer and scheduler objects: no
  second copy of anything) plus the ControlNet(s), a ``MultiControlNetModel`` for several units. Cached per
  (base pipeline, ControlNets), at most :data:`MAX_CONTROL_PIPELINES`. The cache holds its base pipeline
  weakly: an entry is dropped when its base pipeline is garbage-collected, so evicting a base model from the
  model cache frees it. It holds the ControlNets (they are the control pipeline's modules): whoever evicts
  a ControlNet calls :func:`drop_control_pipelines` with it.
* :func:`run_control_inpaint`: :func:`workers.inference.inpaint.run_inpaint` (same sizes, seeds, batches, progress
  and bit-exact clothes) plus one control image per unit, ControlWeight
  (``controlnet_conditioning_scale``, 0..2), StartingStep (``control_guidance_start``, 0..1) and
  EndingStep (``control_guidance_end``, 0..1).

Step window: diffusers lets a unit act at denoising step ``i`` of ``N`` (0-based) when
``i / N >= start`` and ``(i + 1) / N <= end``; outside it the unit's residuals are multiplied by 0. The
ControlNet *runs* at every step all the same (diffusers computes it and scales it by 0), so a narrow window
does not save time. ``start == end`` (a window with no step) is refused by diffusers; here it means "acts on
no step" and is run as weight 0, which is the same computation.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from app.contract.limits import CONTROL_WEIGHT_RANGE, STEP_RATIO_RANGE
from workers.inference.compose import Composition
from workers.inference.inpaint import Sampling, run_inpaint, size_multiple

#: How many control pipelines are kept (each is a thin wrapper: the modules belong to the base pipeline
#: and the ControlNets, so an entry costs almost no memory of its own while they are alive).
MAX_CONTROL_PIPELINES = 8

ControlPipeline = StableDiffusionControlNetInpaintPipeline | StableDiffusionXLControlNetInpaintPipeline


# --- the control pipeline ----------------------------------------------------------------------------------

@dataclass
class _Entry:
    base: weakref.ref
    controlnets: tuple[ControlNetModel, ...]
    pipe: DiffusionPipeline


_pipes: OrderedDict[tuple[int, tuple[int, ...]], _Entry] = OrderedDict()
_pipes_lock = threading.RLock()  # re-entrant: a weakref callback may run during a GC inside a locked block


def _drop_dead_base(ref: weakref.ref) -> None:
    with _pipes_lock:
        for key, entry in list(_pipes.items()):
            if entry.base is ref:
                del _pipes[key]


def drop_control_pipelines(model: object) -> int:
    """Forget the cached control pipelines built on ``model`` (a base pipeline or a ControlNet); return how
    many. A cached control pipeline holds its ControlNets (they are its modules), so a cache that evicts a
    ControlNet must call this for its memory to be freed; base pipelines need not (entries are dropped
    automatically when their base pipeline is garbage-collected)."""
    with _pipes_lock:
        doomed = [key for key, entry in _pipes.items()
                  if entry.base() is model or any(net is model for net in entry.controlnets)]
        for key in doomed:
            del _pipes[key]
        return len(doomed)


def clear_control_pipeline_cache() -> None:
    """Forget every cached control pipeline."""
    with _pipes_lock:
        _pipes.clear()


def _control_class(base: DiffusionPipeline) -> type[DiffusionPipeline]:
    components = base.components
    if isinstance(base, StableDiffusionXLInpaintPipeline) or "text_encoder_2" in components:
        return StableDiffusionXLControlNetInpaintPipeline
    missing = {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} - set(components)
    if missing:
        raise TypeError(f"{type(base).__name__} is not a Stable Diffusion pipeline (no {', '.join(sorted(missing))})")
    return StableDiffusionControlNetInpaintPipeline


def _check_compatible(base: DiffusionPipeline, controlnets: Sequence[ControlNetModel]) -> None:
    unet = base.unet
    latent_channels = base.vae.config.latent_channels
    for index, net in enumerate(controlnets):
        if not isinstance(net, ControlNetModel):
            raise TypeError(f"controlnets[{index}] is a {type(net).__name__}, not a ControlNetModel")
        problems = []
        if net.config.in_channels != latent_channels:
            problems.append(
                f"in_channels {net.config.in_channels} != the VAE's {latent_channels} latent channels (the"
                " ControlNet sees the latents only, not an inpainting UNet's mask channels)"
            )
        if net.config.cross_attention_dim != unet.config.cross_attention_dim:
            problems.append(
                f"cross_attention_dim {net.config.cross_attention_dim} != the UNet's {unet.config.cross_attention_dim}"
            )
        if list(net.config.block_out_channels) != list(unet.config.block_out_channels):
            problems.append(
                f"block_out_channels {list(net.config.block_out_channels)} != the UNet's"
                f" {list(unet.config.block_out_channels)}"
            )
        if net.device != unet.device or net.dtype != unet.dtype:
            problems.append(f"on {net.device} in {net.dtype}, the base pipeline on {unet.device} in {unet.dtype}")
        if problems:
            raise ValueError(f"controlnets[{index}] does not fit the base model: " + "; ".join(problems))


def control_pipeline(base_pipe: DiffusionPipeline, controlnets: Sequence[ControlNetModel]) -> ControlPipeline:
    """The ControlNet inpainting pipeline for ``base_pipe`` and ``controlnets`` (one per unit, in order).

    Built from ``base_pipe.components``: it *shares* the base pipeline's modules (``ctrl.unet is
    base.unet``, ...) and scheduler object, so it costs no memory, and what is done to the base modules in
    place (LoRA, attention settings) applies to both. The ControlNets must already be on the base
    pipeline's device in its dtype (checked, with their shapes: ``ValueError`` when they do not fit). One
    ControlNet is used as is; several are wrapped in a ``MultiControlNetModel``. The result is cached per
    (base pipeline, ControlNet objects) and returned again for the same objects in the same order. The
    pipelines share a scheduler: run them one at a time (as a worker does), not concurrently.
    """
    controlnets = tuple(controlnets)
    if not controlnets:
        raise ValueError("control_pipeline needs at least one ControlNet")
    key = (id(base_pipe), tuple(id(net) for net in controlnets))
    with _pipes_lock:
        entry = _pipes.get(key)
        if (
            entry is not None
            and entry.base() is base_pipe
            and all(cached is net for cached, net in zip(entry.controlnets, controlnets))
        ):
            _pipes.move_to_end(key)
            return entry.pipe

        pipeline_class = _control_class(base_pipe)
        _check_compatible(base_pipe, controlnets)
        accepted = set(inspect.signature(pipeline_class.__init__).parameters)
        components = {name: module for name, module in base_pipe.components.items() if name in accepted}
        extra = {
            name: base_pipe.config[name]
            for name in ("requires_safety_checker", "requires_aesthetics_score", "force_zeros_for_empty_prompt")
            if name in accepted and name in base_pipe.config
        }
        if "requires_safety_checker" in accepted and "requires_safety_checker" not in extra:
            extra["requires_safety_checker"] = components.get("safety_checker") is not None
        controlnet = controlnets[0] if len(controlnets) == 1 else MultiControlNetModel(list(controlnets))
        pipe = pipeline_class(**components, controlnet=controlnet, **extra)
        pipe.set_progress_bar_config(**getattr(base_pipe, "_progress_bar_config", {"disable": True}))
        # prompts are expanded by the base pipeline's own converter: a job's embeddings install theirs there
        # (workers/submodels/embedding.py), and take it away again when the job ends
        base_ref = weakref.ref(base_pipe)
        pipe.maybe_convert_prompt = lambda prompt, tokenizer: base_ref().maybe_convert_prompt(prompt, tokenizer)

        _pipes[key] = _Entry(
            base=weakref.ref(base_pipe, _drop_dead_base),
            controlnets=controlnets,
            pipe=pipe,
        )
        while len(_pipes) > MAX_CONTROL_PIPELINES:
            _pipes.popitem(last=False)
        return pipe


def controlnets_of(pipe: DiffusionPipeline) -> list[ControlNetModel]:
    """The ControlNets of a control pipeline, one per unit."""
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, MultiControlNetModel):
        return list(controlnet.nets)
    if isinstance(controlnet, ControlNetModel):
        return [controlnet]
    raise TypeError(f"{type(pipe).__name__} has no ControlNet; build one with control_pipeline(base, controlnets)")


# --- controlled inpainting ---------------------------------------------------------------------------------

def _per_unit(value: float | Sequence[float], units: int, name: str, low: float, high: float) -> list[float]:
    values = [value] * units if isinstance(value, numbers.Real) else list(value)
    if len(values) != units:
        raise ValueError(f"{name} has {len(values)} values for {units} ControlNet unit(s)")
    result = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Real) or not math.isfinite(item):
            raise ValueError(f"{name} must be numbers, got {item!r}")
        if not low <= item <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}, got {item}")
        result.append(float(item))
    return result


def _pad_edge(image: Image.Image, width: int, height: int) -> Image.Image:
    """Grow ``image`` on the right and bottom to ``width`` x ``height`` by edge replication, exactly as
    :func:`workers.inference.compose.pad_to_multiple` grows the composed image, so the map stays aligned with it."""
    if image.size == (width, height):
        return image
    array = np.asarray(image)
    pad = [(0, height - image.height), (0, width - image.width), (0, 0)]
    return Image.fromarray(np.pad(array, pad, mode="edge"), mode="RGB")


@dataclass(frozen=True, kw_only=True)
class ControlUnits:
    """The ControlNet side of one :func:`run_control_inpaint`: one control map per unit (``control_images``,
    each of exactly the composition's size, made from ``comp.image``, e.g. by
    :func:`workers.inference.preprocess.preprocess`; padded like the composition when the size is not a multiple
    of 8, never resized) and three settings, each one number for every unit or one per unit:
    ``controlnet_conditioning_scale`` (ControlWeight, 0..2), ``control_guidance_start`` (StartingStep, 0..1) and
    ``control_guidance_end`` (EndingStep, 0..1), start <= end (the module doc says which steps they select).
    Checked against the pipeline and the composition by :func:`run_control_inpaint`."""

    control_images: Sequence[Image.Image] | Image.Image
    controlnet_conditioning_scale: float | Sequence[float] = 1.0
    control_guidance_start: float | Sequence[float] = 0.0
    control_guidance_end: float | Sequence[float] = 1.0


def _control_kwargs(pipe: ControlPipeline, comp: Composition, control: ControlUnits) -> dict:
    """``control`` checked against ``pipe``'s units and ``comp``'s size (``ValueError``; ``TypeError`` for a
    pipeline without ControlNet), as the arguments of every pipeline call: the maps padded to the size
    :func:`~workers.inference.inpaint.run_inpaint` pads to, one value instead of a list for a single unit."""
    units = len(controlnets_of(pipe))
    images = [control.control_images] if isinstance(control.control_images, Image.Image) \
        else list(control.control_images)
    if len(images) != units:
        raise ValueError(f"{len(images)} control image(s) for {units} ControlNet unit(s)")
    for index, image in enumerate(images):
        if image.size != (comp.width, comp.height):
            raise ValueError(
                f"control_images[{index}] is {image.width}x{image.height}, the composition {comp.width}x{comp.height}:"
                " make control maps from comp.image (preprocess brings them back to its size)"
            )
    scales = _per_unit(control.controlnet_conditioning_scale, units, "controlnet_conditioning_scale",
                       *CONTROL_WEIGHT_RANGE)
    starts = _per_unit(control.control_guidance_start, units, "control_guidance_start", *STEP_RATIO_RANGE)
    ends = _per_unit(control.control_guidance_end, units, "control_guidance_end", *STEP_RATIO_RANGE)
    for index, (start, end) in enumerate(zip(starts, ends)):
        if start > end:
            raise ValueError(f"control_guidance_start {start} > control_guidance_end {end} (unit {index})")
        if start == end:  # acts on no step: diffusers refuses start >= end; weight 0 is the same computation
            scales[index], starts[index], ends[index] = 0.0, 0.0, 1.0

    multiple = size_multiple(pipe)
    width, height = -(-comp.width // multiple) * multiple, -(-comp.height // multiple) * multiple
    maps = [_pad_edge(image.convert("RGB"), width, height) for image in images]
    single = units == 1
    return {
        "control_image": maps[0] if single else maps,
        "controlnet_conditioning_scale": scales[0] if single else scales,
        "control_guidance_start": starts[0] if single else starts,
        "control_guidance_end": ends[0] if single else ends,
    }


def run_control_inpaint(
    pipe: ControlPipeline,
    comp: Composition,
    prompt: str,
    negative_prompt: str,
    sampling: Sampling,
    control: ControlUnits,
    *,
    starts: Sequence[Image.Image | np.ndarray] | None = None,
    strength: float = 1.0,
    pipeline_kwargs: dict | None = None,
) -> list[Image.Image] | list[np.ndarray]:
    """Redraw everything but the clothes of ``comp`` under ControlNet guidance; return ``sampling.batch_size``
    RGB images of ``comp``'s size. ``pipeline_kwargs``: more arguments of every pipeline call (the IP-Adapter
    units' embeddings: :class:`workers.adapters.ip_adapter.AdapterRun`).

    ``pipe`` comes from :func:`control_pipeline`; ``control`` gives its units' maps and settings
    (:class:`ControlUnits`). Everything else is :func:`workers.inference.inpaint.run_inpaint`, which this calls
    with the control arguments: image ``i`` from seed ``seed + i`` (a batch in few pipeline calls), height/width
    always passed (padded, cropped back), clothes pixels bit-identical to ``comp.image``, the background
    reference, ``on_step``, ``stats``, ``output`` (:class:`~workers.inference.inpaint.Sampling`), a refine pass
    from ``starts`` at ``strength``.
    """
    return run_inpaint(pipe, comp, prompt, negative_prompt, sampling,
                       pipeline_kwargs={**_control_kwargs(pipe, comp, control), **(pipeline_kwargs or {})},
                       starts=starts, strength=strength)
