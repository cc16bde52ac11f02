"""A Main model's ``speed:`` options (:class:`~app.contract.registry.SpeedOptions`) where a pipeline call needs
them: recorded on the pipeline (:func:`record`, by the loader), found again (:func:`speed_of`), and applied right
before every pipeline call by :mod:`workers.inference.inpaint` (:func:`before_call`: VAE tiling above the size
threshold, VAE slicing for batches, the DeepCache reset; :func:`images_per_call`: how many images one call may
take).

The options are recorded on the pipeline and on its UNet, which the ControlNet pipelines built from it share.
What the options change at load (attention, compile, DeepCache on or off) is
:func:`workers.models.speed.apply_speed`'s.
"""
from __future__ import annotations

from typing import Any

from app.contract.registry import SpeedOptions
from workers.patching import deepcache

#: Where :func:`record` keeps the options, on the pipeline and on its UNet.
_RECORD = "_atelier_speed"


def record(pipe: Any, options: SpeedOptions) -> None:
    """Make ``options`` the ones :func:`speed_of` finds on ``pipe`` (and its UNet), without applying anything:
    a pipeline shared by ModelCodes whose options differ only in per-call fields serves each job with its own
    model's (:meth:`workers.models.kinds.WorkerModels.pipeline` records them on every hand-out)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        setattr(unet, _RECORD, options)
    setattr(pipe, _RECORD, options)


def speed_of(pipe: Any) -> SpeedOptions:
    """The options recorded on ``pipe`` (or on its UNet: a ControlNet pipeline built from a warm pipeline shares
    it); the defaults when none were (pipelines built by tests)."""
    found = getattr(pipe, _RECORD, None) or getattr(getattr(pipe, "unet", None), _RECORD, None)
    return found if isinstance(found, SpeedOptions) else SpeedOptions()


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
