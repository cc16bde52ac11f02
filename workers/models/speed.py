"""A Main model's GPU fast paths (its ``speed:`` options, :class:`~app.contract.registry.SpeedOptions`).

Two moments:

* **At load** (:func:`apply_speed`, called once by :meth:`workers.models.kinds.WorkerModels.pipeline`): what is
  a property of the loaded pipeline. Attention processors (SDPA, or diffusers' classic ones), fused q/k/v
  projections, channels_last weights (CUDA only), ``torch.compile`` of the UNet, the DeepCache feature cache.
  The options are recorded on the pipeline (and on its UNet, which the ControlNet pipelines built from it
  share), where :func:`speed_of` finds them. The dtype is chosen before that, by the loader
  (:func:`pipeline_dtype`).
* **Before each pipeline call** (:func:`before_call`, called by :mod:`workers.inference.inpaint` and
  :mod:`workers.inference.control` right before every call): VAE tiling above the size threshold, VAE slicing
  for batches, the DeepCache reset; and how many images one call may take (:func:`images_per_call`).

Interplay with the rest of the worker:

* **LoRAs** are merged into the weights in place (:func:`workers.submodels.lora.patched`). Fusing makes the
  separate q/k/v weights views into the fused ones (:func:`share_fused_storage`: no extra memory), so a LoRA
  patching them patches the fused layers too. Nothing is swapped or re-wrapped, so a compiled UNet reads the
  new weights without recompiling: that is Atelier's equivalent of diffusers' LoRA hotswap.
* **Hypernetworks** hook the inputs of ``to_k``/``to_v``, which fused attention never calls: a job with a
  hypernetwork runs inside :func:`separate_projections` (the classic separate projections for that job;
  a compiled UNet compiles that variant once, on the first such job).
* **External VAEs** (``vaes:``) get the same attention and memory-format treatment as the checkpoint's own
  when :meth:`~workers.models.kinds.WorkerModels.vae_for` puts them on a pipeline (:func:`prepare_vae`).

At worker start, :func:`workers.models.warmup.warm_up` generates once at each configured size so that the first
job does not pay the compile.

Imports torch (and diffusers, lazily): only the worker imports this module.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from app.contract.registry import SpeedOptions
from workers.inference import deepcache
from workers.models.device import resolve_dtype
from workers.submodels.lora import fused_parameters

if TYPE_CHECKING:
    pass

log = logging.getLogger("atelier.worker.speed")

#: Where :func:`apply_speed` records the options, on the pipeline and on its UNet.
_RECORD = "_atelier_speed"
#: What :func:`prepare_vae` last applied to a VAE (an external VAE is shared by several models).
_VAE_RECORD = "_atelier_vae_speed"
#: torch.compile's backend. Tests pass ``compile_backend="aot_eager"``: the same graph capture and guards,
#: without inductor's code generation (minutes on a small CPU).
COMPILE_BACKEND = "inductor"


# --- dtype ------------------------------------------------------------------------------------------------


def pipeline_dtype(options: SpeedOptions, device: str, worker_dtype: torch.dtype) -> torch.dtype:
    """The weights dtype of a model with ``options`` on ``device``: the CPU always float32; on CUDA the model's
    ``speed.dtype``, or the worker's (``ATELIER_DTYPE``) for ``auto``."""
    if not str(device).startswith("cuda"):
        return torch.float32
    if options.dtype == "auto":
        return worker_dtype
    return resolve_dtype(options.dtype, device)


# --- at load ----------------------------------------------------------------------------------------------

#: The options that shape the loaded pipeline: part of its cache key (:func:`load_key`). The others are read
#: per call (tiling, slicing, chunking) or at worker start (warm-up) and can change without a reload.
LOAD_FIELDS: tuple[str, ...] = ("dtype", "channels_last", "sdpa", "fuse_qkv", "compile", "compile_mode",
                                "deep_cache_interval", "deep_cache_branch")


def load_key(options: SpeedOptions) -> tuple[Any, ...]:
    """What of ``options`` goes into a Main pipeline's cache key: two ModelCodes with the same weights and the
    same :data:`LOAD_FIELDS` share one loaded pipeline; editing one of these in the YAML loads it again."""
    return tuple(getattr(options, name) for name in LOAD_FIELDS)


def record(pipe: Any, options: SpeedOptions) -> None:
    """Make ``options`` the ones :func:`speed_of` finds on ``pipe`` (and its UNet), without applying anything:
    a pipeline shared by ModelCodes whose options differ only in per-call fields serves each job with its own
    model's (:meth:`workers.models.kinds.WorkerModels.pipeline` records them on every hand-out)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        setattr(unet, _RECORD, options)
    setattr(pipe, _RECORD, options)


def apply_speed(pipe: Any, options: SpeedOptions, device: str, *, compile_backend: str = COMPILE_BACKEND) -> None:
    """Apply ``options`` to the loaded ``pipe`` on ``device`` and record them (:func:`speed_of`).

    Idempotent, and applying other options to the same pipeline switches to them (what is on and no longer
    asked is undone), without rebuilding what did not change: the attention processors are replaced only when
    they are not already the asked ones (a compiled UNet may guard on them), the fused layers are built once.
    ``compile`` compiles the UNet's forward in place (``unet.compile``), lazily: the first call at each new
    shape compiles. On the CPU the compile mode is inductor's default (``compile_mode``'s autotuning is for GPU
    kernels) and channels_last is not applied (no faster there).

    An object without a UNet (a test's stand-in for a pipeline) only gets the record.
    """
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        cuda = str(device).startswith("cuda")
        set_attention(unet, sdpa=options.sdpa, fuse=options.fuse_qkv)
        _set_memory_format(unet, channels_last=options.channels_last and cuda)
        _set_deep_cache(unet, options)
        _set_compile(unet, options, cuda, compile_backend)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        prepare_vae(vae, options, device)
    record(pipe, options)


def speed_of(pipe: Any) -> SpeedOptions:
    """The options :func:`apply_speed` recorded on ``pipe`` (or on its UNet: a ControlNet pipeline built from a
    warm pipeline shares it); the defaults when none were (pipelines built by tests)."""
    found = getattr(pipe, _RECORD, None) or getattr(getattr(pipe, "unet", None), _RECORD, None)
    return found if isinstance(found, SpeedOptions) else SpeedOptions()


def prepare_vae(vae: Any, options: SpeedOptions, device: str) -> None:
    """Give ``vae`` (the checkpoint's or an external one) the attention processors and memory format of
    ``options``. Cheap when nothing changes (an external VAE is prepared each time it is put on a pipeline,
    for the options of that pipeline's model)."""
    wanted = (options.sdpa, options.fuse_qkv, options.channels_last and str(device).startswith("cuda"))
    if getattr(vae, _VAE_RECORD, None) == wanted:
        return
    set_attention(vae, sdpa=options.sdpa, fuse=options.fuse_qkv)
    _set_memory_format(vae, channels_last=wanted[2])
    try:
        setattr(vae, _VAE_RECORD, wanted)
    except AttributeError:  # an object that takes no attributes: it is simply prepared again next time
        pass


def _processors() -> dict[str, Any]:
    """One instance of each attention processor for the whole process: a compiled UNet guards on the
    processors' identity, so handing the same objects back never recompiles."""
    global _PROCESSORS
    if _PROCESSORS is None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

        _PROCESSORS = {"sdpa": AttnProcessor2_0(), "classic": AttnProcessor(), "fused": FusedAttnProcessor2_0()}
    return _PROCESSORS


_PROCESSORS: dict[str, Any] | None = None


def _attention_layers(model: Any) -> list[Any]:
    from diffusers.models.attention_processor import Attention

    modules = getattr(model, "modules", None)
    return [m for m in modules() if isinstance(m, Attention)] if modules is not None else []


def set_attention(model: Any, *, sdpa: bool, fuse: bool) -> None:
    """Give every attention layer of ``model`` (a UNet or a VAE) the processor the options ask for.

    ``fuse``: what ``pipe.fuse_qkv_projections()`` does (each self-attention's q, k, v weights concatenated into
    one ``to_qkv`` layer, each cross-attention's k, v into ``to_kv``; diffusers' ``FusedAttnProcessor2_0``),
    made idempotent (the fused layers are built once, then only the processor changes) and per model, so that
    a VAE without attention (``AutoencoderTiny``) is no error. Diffusers has no classic fused processor: with
    ``sdpa`` false, ``fuse`` is not applied. Layers with added k/v projections (not in SD 1.x/2.x or XL) keep
    their own processors. Unfusing only switches the processor back (the fused layers stay, unused).
    """
    layers = [a for a in _attention_layers(model) if getattr(a, "added_kv_proj_dim", None) is None]
    if not layers:
        return
    procs = _processors()
    fuse = fuse and sdpa
    wanted = procs["fused"] if fuse else procs["sdpa"] if sdpa else procs["classic"]
    with torch.no_grad():
        for attn in layers:
            if fuse:
                if getattr(attn, "to_qkv" if not attn.is_cross_attention else "to_kv", None) is None:
                    attn.fuse_projections(fuse=True)
                share_fused_storage(attn)
            attn.fused_projections = fuse
            if attn.processor is not wanted:
                attn.set_processor(wanted)


def share_fused_storage(attn: Any) -> int:
    """Make the separate projections of ``attn`` (``to_q``/``to_k``/``to_v``...) views into its fused layer's
    weights (and biases), so that fusing costs no memory (diffusers keeps both copies) and what patches the
    separate layers in place (a LoRA) patches the fused one too. The separate layers' current values are the
    ones kept. Idempotent; returns how many parameters were made views now.

    Only for a pipeline that stays where it is: moving it (``.to(device)``) gives each tensor its own storage
    again (:func:`workers.submodels.lora.patched` then refreshes the fused weights by copying)."""
    count = 0
    for attr, whole, parts in fused_parameters(attn):
        offset = 0
        for part in parts:
            own = getattr(part, attr)
            rows = own.shape[0]
            if own.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
                whole.data[offset:offset + rows].copy_(own.data)
                setattr(part, attr, torch.nn.Parameter(whole.data[offset:offset + rows],
                                                       requires_grad=own.requires_grad))
                count += 1
            offset += rows
    return count


@contextmanager
def separate_projections(pipe: Any) -> Iterator[None]:
    """For the ``with`` block, the UNet's fused attention layers compute q, k and v with their separate
    ``to_q``/``to_k``/``to_v`` layers again (SDPA processors): what hypernetworks hook
    (:func:`workers.submodels.hypernetwork.hypernetwork_hooks`). The fused processors are put back afterwards,
    whatever happens. Nothing is done for a UNet that is not fused.

    The separate layers hold the same weights as the fused ones (a LoRA patches both), so the images are
    those of the fused model; only slower. The same processor objects are used every time, so a compiled UNet
    compiles this variant once and then switches between the two without recompiling.
    """
    unet = getattr(pipe, "unet", None)
    fused = [a for a in _attention_layers(unet) if getattr(a, "fused_projections", False)] if unet else []
    if not fused:
        yield
        return
    before = [(attn, attn.processor) for attn in fused]
    separate = _processors()["sdpa"]
    try:
        for attn in fused:
            attn.fused_projections = False
            attn.set_processor(separate)
        yield
    finally:
        for attn, processor in before:
            attn.fused_projections = True
            attn.set_processor(processor)


def _set_memory_format(model: Any, *, channels_last: bool) -> None:
    """channels_last (NHWC, what cuDNN's tensor-core convolutions want) or the default contiguous format."""
    to = getattr(model, "to", None)
    if to is None:
        return
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if getattr(model, "_atelier_memory_format", torch.contiguous_format) != fmt:
        to(memory_format=fmt)
        model._atelier_memory_format = fmt


def _set_compile(unet: Any, options: SpeedOptions, cuda: bool, backend: str) -> None:
    """``unet.compile(...)`` (its forward, in place: the object the pipeline, the LoRA patcher and the hooks
    know stays the same), or undo it. ``fullgraph`` is off: diffusers' UNet has Python-level branches (the
    ControlNet residuals, the DeepCache skip) that may break the graph without being errors."""
    compiled = getattr(unet, "_compiled_call_impl", None) is not None
    wanted = (options.compile_mode if cuda else "default", backend)
    if options.compile and (not compiled or getattr(unet, "_atelier_compiled", None) != wanted):
        kwargs: dict[str, Any] = {"backend": backend, "fullgraph": False}
        if backend == "inductor":
            kwargs["mode"] = wanted[0]
        unet.compile(**kwargs)
        unet._atelier_compiled = wanted
    elif not options.compile and compiled:
        unet._compiled_call_impl = None
        unet._atelier_compiled = None


def _set_deep_cache(unet: Any, options: SpeedOptions) -> None:
    """Switch the DeepCache feature cache (:mod:`workers.inference.deepcache`) as the options ask."""
    from diffusers import UNet2DConditionModel

    if not options.deep_cache_interval and not isinstance(unet, UNet2DConditionModel):
        return  # nothing to undo on what is no UNet (a test's stand-in)
    if options.deep_cache_interval:
        # idempotent there; other values update the cache; a branch this UNet lacks is a ValueError
        deepcache.enable_deep_cache(unet, interval=options.deep_cache_interval, branch=options.deep_cache_branch)
    else:
        deepcache.disable_deep_cache(unet)  # a no-op when it is not on


# --- per call ---------------------------------------------------------------------------------------------


def images_per_call(pipe: Any, width: int, height: int) -> int:
    """How many ``width`` x ``height`` images one call of ``pipe`` takes (a BatchSize is split into calls of
    this many): ``max(1, min(max_batch, floor(max_batch_megapixels * 1e6 / (width * height))))``."""
    return speed_of(pipe).images_per_call(width, height)


def before_call(pipe: Any, width: int, height: int, batch: int) -> None:
    """Get ``pipe`` ready for a call making ``batch`` images of ``width`` x ``height`` (the size the pipeline
    runs at): VAE tiling on above ``vae_tiling_above_px`` (off below), VAE slicing on for a batch of more than
    one when ``vae_slicing``, the DeepCache features of the previous call dropped. Works on ``AutoencoderKL``
    and ``AutoencoderTiny`` (both have ``enable_tiling``/``enable_slicing``)."""
    options = speed_of(pipe)
    vae = pipe.vae
    threshold = options.vae_tiling_above_px
    _switch(vae, "tiling", threshold == 0 or width * height > threshold)
    _switch(vae, "slicing", options.vae_slicing and batch > 1)
    if options.deep_cache_interval:
        deepcache.reset_deep_cache(pipe.unet)


def _switch(vae: Any, what: str, on: bool) -> None:
    """``vae.enable_<what>()`` / ``vae.disable_<what>()`` when the VAE has them and is not already so."""
    if getattr(vae, f"use_{what}", None) == on:
        return
    method = getattr(vae, f"{'enable' if on else 'disable'}_{what}", None)
    if method is not None:
        method()
