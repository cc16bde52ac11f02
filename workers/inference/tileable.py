"""Seamless textures (GenerateImages' ``Tileable``): the image drawn on a torus.

Every ``Conv2d`` of the given modules (the Main model's UNet and VAE, the job's ControlNets) pads circularly for
the duration of a ``with`` block: the left edge's neighbours are the right edge's pixels, the top's the bottom's.
Group norms and attention are global and the resamplings are strided by powers of two, so the whole pipeline
becomes equivariant to circular shifts of its latents (by multiples of the UNet's downsampling): the image's wrap
boundary is drawn exactly as any interior line, and the image tiles without a seam. The modes are put back when
the block ends (an error included): the cached pipeline other jobs share is unchanged.

A module compiled in place (``speed.compile``: ``unet.compile()``) runs its eager forward within the block, as for
IP-Adapter units: a graph compiled with zero padding must not serve a Tileable job, and recompiling for one job
would cost more than it saves. Its compiled forward is back for the next job.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

CIRCULAR = "circular"


@contextmanager
def circular_padding(*modules: nn.Module | None) -> Iterator[int]:
    """Pad every ``Conv2d`` of ``modules`` (None ones skipped; each layer once) circularly within the block; yields
    how many layers it changed."""
    present = [module for module in modules if module is not None]
    convs = {id(m): m for module in present for m in module.modules() if isinstance(m, nn.Conv2d)}
    saved = [(conv, conv.padding_mode) for conv in convs.values()]
    compiled = [(module, module._compiled_call_impl) for module in present
                if getattr(module, "_compiled_call_impl", None) is not None]
    try:
        for conv, _ in saved:
            conv.padding_mode = CIRCULAR
        for module, _ in compiled:
            module._compiled_call_impl = None
        yield len(saved)
    finally:
        for conv, mode in saved:
            conv.padding_mode = mode
        for module, call in compiled:
            module._compiled_call_impl = call
