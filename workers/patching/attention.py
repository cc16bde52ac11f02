"""The attention layers of a UNet or a VAE: their processors (SDPA or diffusers' classic ones), fused q/k/v
projections, and the separate projections a hypernetwork needs.

* :func:`set_attention` (a model's ``speed.sdpa`` and ``speed.fuse_qkv``, applied at load by
  :func:`workers.models.speed.apply_speed`) gives every attention layer the processor asked for, fusing its
  projections once.
* Fusing makes the separate q/k/v weights views into the fused ones (:func:`share_fused_storage`: no extra
  memory), so a LoRA patching them in place (:func:`workers.submodels.lora.patched`) patches the fused layers
  too; where they are not views, :func:`refresh_fused_projections` rebuilds the fused weights after patching.
  Nothing is swapped or re-wrapped, so a compiled UNet reads the new weights without recompiling: Atelier's
  equivalent of diffusers' LoRA hotswap.
* Hypernetworks hook the inputs of ``to_k``/``to_v``, which fused attention never calls: a job with a
  hypernetwork runs inside :func:`separate_projections` (the classic separate projections for that job; a
  compiled UNet compiles that variant once, on the first such job).

Below ``models/``, ``inference/`` and ``submodels/``: imports none of them. Imports torch (diffusers lazily).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: diffusers' fused attention projections (``Attention.fuse_projections``) and the layers each concatenates.
FUSED_PROJECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("to_qkv", ("to_q", "to_k", "to_v")),
    ("to_kv", ("to_k", "to_v")),
    ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
)

_PROCESSORS: dict[str, Any] | None = None


def _processors() -> dict[str, Any]:
    """One instance of each attention processor for the whole process: a compiled UNet guards on the
    processors' identity, so handing the same objects back never recompiles."""
    global _PROCESSORS
    if _PROCESSORS is None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

        _PROCESSORS = {"sdpa": AttnProcessor2_0(), "classic": AttnProcessor(), "fused": FusedAttnProcessor2_0()}
    return _PROCESSORS


def attention_layers(model: Any) -> list[Any]:
    """Every diffusers ``Attention`` module of ``model`` (none for an object without ``modules()``)."""
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
    layers = [a for a in attention_layers(model) if getattr(a, "added_kv_proj_dim", None) is None]
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


def fused_parameters(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter, list[torch.nn.Linear]]]:
    """``(attr, fused parameter, separate layers)`` for the weight and the bias of each :data:`FUSED_PROJECTIONS`
    layer of ``module`` itself (not its children) whose separate layers all exist and all have that parameter."""
    for fused_name, part_names in FUSED_PROJECTIONS:
        fused = getattr(module, fused_name, None)
        parts = [getattr(module, name, None) for name in part_names]
        if not isinstance(fused, torch.nn.Linear) or not all(isinstance(p, torch.nn.Linear) for p in parts):
            continue
        for attr in ("weight", "bias"):
            whole = getattr(fused, attr)
            if whole is not None and all(getattr(part, attr) is not None for part in parts):
                yield attr, whole, parts


def share_fused_storage(attn: Any) -> int:
    """Make the separate projections of ``attn`` (``to_q``/``to_k``/``to_v``...) views into its fused layer's
    weights (and biases), so that fusing costs no memory (diffusers keeps both copies) and what patches the
    separate layers in place (a LoRA) patches the fused one too. The separate layers' current values are the
    ones kept. Idempotent; returns how many parameters were made views now.

    Only for a pipeline that stays where it is: moving it (``.to(device)``) gives each tensor its own storage
    again (:func:`refresh_fused_projections` then rebuilds the fused weights by copying)."""
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


def refresh_fused_projections(model: torch.nn.Module, changed: set[int],
                              keep: Callable[[torch.nn.Parameter], None]) -> int:
    """Rebuild, in place, each fused parameter of ``model`` (weight or bias of a :data:`FUSED_PROJECTIONS`
    layer) one of whose parts has its ``id`` in ``changed``, by concatenating the parts as diffusers does when
    fusing, unless the parts are views into it already (then it changed with them); ``keep(param)`` is called
    first on each fused parameter rewritten. Returns how many were rebuilt."""
    count = 0
    for module in model.modules():
        for attr, whole, parts in fused_parameters(module):
            pieces = [getattr(part, attr) for part in parts]
            if not any(id(p) in changed for p in pieces):
                continue
            storage = whole.untyped_storage().data_ptr()
            if all(p.untyped_storage().data_ptr() == storage for p in pieces):
                continue  # views into the fused parameter: patched with them
            keep(whole)
            whole.copy_(torch.cat(pieces))
            count += 1
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
    fused = [a for a in attention_layers(unet) if getattr(a, "fused_projections", False)] if unet else []
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
