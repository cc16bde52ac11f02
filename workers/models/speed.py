"""A Main model's GPU fast paths at load (its ``speed:`` options, :class:`~app.contract.registry.SpeedOptions`).

:func:`apply_speed`, called once by :meth:`workers.models.kinds.WorkerModels.pipeline`, applies what is a
property of the loaded pipeline: attention processors (SDPA, or diffusers' classic ones) and fused q/k/v
projections (:mod:`workers.patching.attention`), channels_last weights (CUDA only), ``torch.compile`` of the
UNet, the DeepCache feature cache (:mod:`workers.patching.deepcache`). The options are recorded on the pipeline
(:func:`workers.patching.per_call.record`), where what runs before each pipeline call finds them
(:func:`workers.patching.per_call.before_call`: VAE tiling and slicing, the DeepCache reset; how many images one
call may take). The dtype is chosen before that, by the loader (:func:`pipeline_dtype`); a pipeline's cache key
holds the options that shape it (:func:`load_key`).

Interplay with the rest of the worker:

* **LoRAs** are merged into the weights in place (:func:`workers.submodels.lora.patched`); fused q/k/v share
  the separate layers' storage, so they are patched too, and a compiled UNet reads the new weights without
  recompiling (:mod:`workers.patching.attention`).
* **Hypernetworks** run on the separate projections of a fused model
  (:func:`workers.patching.attention.separate_projections`).
* **External VAEs** (``vaes:``) get the same attention and memory-format treatment as the checkpoint's own
  when :meth:`~workers.models.kinds.WorkerModels.vae_for` puts them on a pipeline (:func:`prepare_vae`).
* **DeepCache** on a diffusers whose UNet forward is not the one its cached step mirrors is refused with a
  warning: the model runs without it (:mod:`workers.patching.deepcache`).

At worker start, :func:`workers.models.warmup.warm_up` generates once at each configured size so that the first
job does not pay the compile.

Imports torch and diffusers (through workers/patching): only the worker imports this module.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from app.contract.registry import SpeedOptions
from workers.models.device import resolve_dtype
from workers.patching import deepcache
from workers.patching.attention import set_attention
from workers.patching.per_call import record

log = logging.getLogger("atelier.worker.speed")

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


def apply_speed(pipe: Any, options: SpeedOptions, device: str, *, compile_backend: str = COMPILE_BACKEND) -> None:
    """Apply ``options`` to the loaded ``pipe`` on ``device`` and record them
    (:func:`workers.patching.per_call.record`).

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
    """Switch the DeepCache feature cache (:mod:`workers.patching.deepcache`) as the options ask. A UNet whose
    forward is not the one DeepCache mirrors (another diffusers) runs without it, with a warning: its images are
    the stock ones, only slower, instead of cached steps that compute something else."""
    from diffusers import UNet2DConditionModel

    if not options.deep_cache_interval and not isinstance(unet, UNet2DConditionModel):
        return  # nothing to undo on what is no UNet (a test's stand-in)
    if not options.deep_cache_interval:
        deepcache.disable_deep_cache(unet)  # a no-op when it is not on
        return
    try:
        # idempotent there; other values update the cache; a branch this UNet lacks is a ValueError
        deepcache.enable_deep_cache(unet, interval=options.deep_cache_interval, branch=options.deep_cache_branch)
    except deepcache.ForwardChanged as e:
        log.warning("DeepCache (speed.deep_cache_interval %d) is off for this model: %s", options.deep_cache_interval,
                    e)
