"""DeepCache for diffusers' ``UNet2DConditionModel``: reuse the UNet's deep features across denoising steps.

The idea (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024, arXiv 2312.00858):
between consecutive denoising steps the high-level features computed by the deep part of the UNet barely
change, while the shallow part (the outermost down and up blocks, joined by the skip connections) carries the
fine detail. So on a *full* step the whole UNet runs and the feature map that enters the shallow up blocks from
the deep part is kept; on the following ``interval - 1`` *cached* steps only the shallow part runs:

    time/text embeddings -> conv_in -> down_blocks[:branch + 1]      (fresh skip connections)
    cached deep feature  -> up_blocks[-(branch + 1):]                 (consume those skips)
                         -> conv_norm_out / conv_act / conv_out

``branch`` picks the skip connection the UNet is cut at: 0 keeps only the outermost down/up block pair (the
fastest cached step), ``len(down_blocks) - 1`` recomputes every block but the mid block. ``interval`` 1 makes
every step full: the output is then the stock forward's, bit for bit.

How it is applied: :func:`enable_deep_cache` patches the *instance's* ``forward`` (the class is untouched,
other UNets are not affected) and puts a forward pre-hook on the up block the cache feeds, which records that
block's input during full steps. Full steps run the stock ``forward`` unchanged (ControlNet residuals,
T2I-Adapters, LoRA scales, GLIGEN: all as diffusers does them); cached steps run :func:`_shallow_forward`, which
mirrors the stock forward's steps for the blocks it keeps (diffusers 0.42; guarded, see below). A call runs
full when the cache cannot be trusted: no cached feature (first call, after :func:`reset_deep_cache`), another
input shape, batch, dtype or device, a timestep not below the previous call's (a new generation, or a scheduler
that evaluates a step twice), arguments the shallow path does not handle (``down_intrablock_additional_residuals``,
legacy adapter residuals, GLIGEN), or ``interval - 1`` cached steps since the last full one.

ControlNet: on cached steps only the residuals of the shallow skips are added (the others, and the mid-block
residual, went into the cached feature at its full step), so the control still steers every step's detail.

torch.compile: the full/cached decision is host-side Python (it reads the timestep and counters) and is kept out
of compiled graphs: the patched ``forward`` is ``torch.compiler.disable(recursive=False)`` and its bookkeeping
(``_DeepCache.start`` / ``finish``) is fully disabled, so dynamo runs them eagerly and compiles the two paths they
call, the stock forward (full steps) and :func:`_shallow_forward` (cached steps), as one graph each, compiled
once per input shape; counters and timesteps never become guards, so no step recompiles. Order does not
matter: enable before or after ``torch.compile(unet)`` / ``unet.compile()``; a compiled warm-up of at least
two steps with ``interval >= 2`` compiles both graphs. The recorded feature is cloned after each full step, so
it survives compiled graphs that reuse their output memory (CUDA graphs).

Not combined with accelerate's offload hooks (they patch ``forward`` too): :func:`enable_deep_cache` refuses a
UNet whose ``forward`` is already patched by someone else.

Guarded against another diffusers: :func:`_shallow_forward` is a copy of the steps of one version's
``UNet2DConditionModel.forward``, while the project accepts any diffusers from 0.42 on (pyproject.toml). The
fingerprint of the forward it mirrors (:func:`forward_fingerprint`: a hash of its source without docstring,
comments or formatting) is recorded in :data:`MIRRORED_FORWARD`, with the versions it was checked on
(:data:`MIRRORED_ON`). :func:`enable_deep_cache` refuses (:class:`ForwardChanged`) a UNet whose class's
``forward`` has another fingerprint (a newer diffusers, or a subclass that overrides it), rather than let
cached steps silently compute something other than the stock forward; the worker then logs a warning and runs
that model without DeepCache (:func:`workers.models.speed.apply_speed`: stock images, only slower), and
tests/worker/patching/test_deepcache.py fails on such a diffusers, saying what to re-check.

Below ``models/`` and ``inference/`` (workers/patching): imports neither.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import MethodType
from typing import Any

import diffusers
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.utils.peft_utils import apply_lora_scale
from torch.utils.hooks import RemovableHandle

#: The attribute of a UNet instance that holds its :class:`_DeepCache` while DeepCache is enabled.
_STATE_ATTR = "_atelier_deep_cache"

#: :func:`forward_fingerprint` of the ``UNet2DConditionModel.forward`` that :func:`_shallow_forward` mirrors.
MIRRORED_FORWARD = "77abaa7a16ed1b5ac226031a53ad57120102f2a2430efcbf71a72c3aa350e409"
#: The diffusers versions whose ``UNet2DConditionModel.forward`` has that fingerprint (checked by hand against
#: :func:`_shallow_forward`, and by tests/worker/patching/test_deepcache.py's exactness tests).
MIRRORED_ON = ("0.42.1",)


class ForwardChanged(ValueError):
    """The UNet's ``forward`` is not the one :func:`_shallow_forward` mirrors: DeepCache is refused for it."""


@cache
def forward_fingerprint(forward: Callable[..., Any]) -> str | None:
    """A sha256 of ``forward``'s source with its name, docstring, comments and formatting left out
    (``ast.unparse`` of the parsed function, signature and decorators included); None when its source cannot be
    read."""
    try:
        source = textwrap.dedent(inspect.getsource(forward))
    except (OSError, TypeError):
        return None
    function = ast.parse(source).body[0]
    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        function.name = "_"
    body = getattr(function, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        function.body = body[1:]
    return hashlib.sha256(ast.unparse(function).encode()).hexdigest()


def check_mirrored_forward(unet_class: type) -> None:
    """Raise :class:`ForwardChanged` unless ``unet_class.forward`` is the forward :func:`_shallow_forward`
    mirrors (:data:`MIRRORED_FORWARD`), saying what to re-check."""
    found = forward_fingerprint(unet_class.forward)
    if found == MIRRORED_FORWARD:
        return
    seen = "its source cannot be read" if found is None else f"fingerprint {found[:12]}"
    raise ForwardChanged(
        f"{unet_class.__name__}.forward (diffusers {diffusers.__version__}: {seen}) is not the forward DeepCache's"
        f" cached step mirrors (diffusers {', '.join(MIRRORED_ON)}: {MIRRORED_FORWARD[:12]}). Re-check"
        " _shallow_forward in workers/patching/deepcache.py against the new forward, step by step, run"
        " tests/worker/patching/test_deepcache.py, then record the new fingerprint and version in MIRRORED_FORWARD and"
        " MIRRORED_ON")


@dataclass(eq=False)
class _DeepCache:
    """One UNet's DeepCache settings, cached feature and counters."""

    interval: int
    branch: int
    hook: RemovableHandle | None = None
    #: The feature entering ``up_blocks[-(branch + 1)]`` at the last full step, and what it is valid for.
    feature: torch.Tensor | None = None
    key: tuple | None = None
    #: Set by the pre-hook while a full step runs; moved to ``feature`` afterwards.
    captured: torch.Tensor | None = None
    last_timestep: float | None = None
    #: (key, timestep) of the call in progress, between ``start`` and ``finish``.
    pending: tuple | None = None
    cached_since_full: int = 0
    full_steps: int = 0
    cached_steps: int = 0

    def capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the shallow part's first up block: keep its input, the deep feature."""
        self.captured = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def forget(self) -> None:
        self.feature = self.key = self.captured = self.last_timestep = None
        self.pending = None
        self.cached_since_full = 0

    # ``start`` and ``finish`` are the host-side bookkeeping around each call: kept out of dynamo entirely, so
    # that a compiled UNet neither traces them (the timestep read is a graph break) nor guards on counters.

    @torch.compiler.disable
    def start(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
              encoder_hidden_states: torch.Tensor, shallow_supported: bool) -> bool:
        """Whether this call may be a cached step (see the module docstring for the rules)."""
        key = (tuple(sample.shape), sample.dtype, sample.device, tuple(encoder_hidden_states.shape))
        # The largest timestep if there is one per sample; a host sync for a GPU tensor.
        t = float(timestep.detach().max()) if torch.is_tensor(timestep) else float(timestep)
        cached = (
            shallow_supported
            and self.feature is not None
            and self.key == key
            and t < self.last_timestep
            and self.cached_since_full + 1 < self.interval
        )
        self.pending = (key, t)
        self.captured = None
        return cached

    @torch.compiler.disable
    def finish(self, out: torch.Tensor, cached: bool, return_dict: bool) -> UNet2DConditionOutput | tuple:
        """Count the step, keep a full step's feature, and return ``out`` as the stock forward would."""
        key, self.last_timestep = self.pending
        if cached:
            self.cached_since_full += 1
            self.cached_steps += 1
        else:
            # Cloned: a compiled graph may hand out memory that it reuses on its next run (CUDA graphs).
            keep = self.interval > 1 and self.captured is not None
            self.feature = self.captured.clone() if keep else None
            self.key = key if keep else None
            self.cached_since_full = 0
            self.full_steps += 1
        self.captured = self.pending = None
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def _unwrap(unet: Any) -> UNet2DConditionModel:
    """The UNet itself, also when given the wrapper ``torch.compile(unet)`` returns."""
    unet = getattr(unet, "_orig_mod", unet)
    if not isinstance(unet, UNet2DConditionModel):
        raise TypeError(f"DeepCache needs a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    return unet


def _state(unet: Any) -> _DeepCache | None:
    return getattr(_unwrap(unet), _STATE_ATTR, None)


def _check_layout(unet: UNet2DConditionModel, branch: int) -> None:
    """Raise ``ValueError`` unless ``branch`` names one of the UNet's down/up block pairs and the shallow up
    blocks take no more skip connections than the shallow down blocks make (true of SD 1.x/2.x/XL layouts)."""
    branches = len(unet.down_blocks)
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < branches:
        raise ValueError(f"DeepCache branch must be an integer in [0, {branches - 1}] for this UNet, got {branch!r}")
    if len(unet.up_blocks) != branches:
        raise ValueError("DeepCache needs as many up blocks as down blocks")
    if unet.config.addition_embed_type == "image_hint":
        raise ValueError("DeepCache does not support addition_embed_type 'image_hint'")
    produced = 1 + sum(len(block.resnets) + len(block.downsamplers or ()) for block in unet.down_blocks[: branch + 1])
    consumed = sum(len(block.resnets) for block in unet.up_blocks[len(unet.up_blocks) - branch - 1 :])
    if consumed > produced:
        raise ValueError(f"DeepCache branch {branch}: the shallow up blocks take {consumed} skip connections,"
                         f" the shallow down blocks make {produced}")


def enable_deep_cache(unet: UNet2DConditionModel, interval: int, branch: int = 0) -> None:
    """Make ``unet`` (this instance only) run its deep part only every ``interval`` steps (module docstring).

    ``interval`` 1 = every step full (same output as without DeepCache); >= 2 = one full step, then up to
    ``interval - 1`` cached steps. ``branch`` in ``[0, len(unet.down_blocks) - 1]``: how many outer down/up block
    pairs run at every step, minus one (0 = the fastest, larger = closer to the stock output).

    Idempotent; calling it again with other values updates them (and forgets the cached feature; the step
    counters of :func:`deep_cache_stats` keep counting). Accepts the wrapper of ``torch.compile(unet)``.
    Raises ``ValueError`` for ``interval < 1``, a branch the UNet does not have, or a UNet whose ``forward``
    is already patched by something else (e.g. accelerate's offload hooks); :class:`ForwardChanged` (a
    ``ValueError``) for a UNet whose class's ``forward`` is not the one mirrored (module docstring).
    """
    unet = _unwrap(unet)
    check_mirrored_forward(type(unet))
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"DeepCache interval must be an integer >= 1, got {interval!r}")
    _check_layout(unet, branch)
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        if "forward" in vars(unet):
            raise ValueError("this UNet's forward is already patched (e.g. by accelerate hooks); enable DeepCache"
                             " on an unpatched UNet")
        state = _DeepCache(interval=interval, branch=branch)
        setattr(unet, _STATE_ATTR, state)
        unet.forward = MethodType(_deep_cache_forward, unet)
    elif (state.interval, state.branch) == (interval, branch):
        return
    if state.hook is not None:
        state.hook.remove()
    state.interval, state.branch = interval, branch
    state.forget()
    entry_block = unet.up_blocks[len(unet.up_blocks) - branch - 1]
    state.hook = entry_block.register_forward_pre_hook(state.capture, with_kwargs=True)


def disable_deep_cache(unet: UNet2DConditionModel) -> None:
    """Give ``unet`` back its stock ``forward`` and drop the hook and the cached feature (no-op if not enabled)."""
    unet = _unwrap(unet)
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        return
    if state.hook is not None:
        state.hook.remove()
    state.forget()
    del unet.forward
    delattr(unet, _STATE_ATTR)


def reset_deep_cache(unet: UNet2DConditionModel) -> None:
    """Forget the cached feature, so that the next call is a full step; frees its memory. Call it before each
    pipeline call (a new image must not start from the last one's features). No-op if DeepCache is off."""
    state = _state(unet)
    if state is not None:
        state.forget()


def deep_cache_stats(unet: UNet2DConditionModel) -> dict:
    """``{"enabled", "interval", "branch", "full_steps", "cached_steps"}``: the settings, and the UNet calls
    of each kind since DeepCache was enabled (``enabled`` False and zeros when it is not)."""
    state = _state(unet)
    if state is None:
        return {"enabled": False, "interval": None, "branch": None, "full_steps": 0, "cached_steps": 0}
    return {"enabled": True, "interval": state.interval, "branch": state.branch,
            "full_steps": state.full_steps, "cached_steps": state.cached_steps}


@torch.compiler.disable(recursive=False)
def _deep_cache_forward(
    self: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    timestep_cond: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    down_block_additional_residuals: tuple[torch.Tensor] | None = None,
    mid_block_additional_residual: torch.Tensor | None = None,
    down_intrablock_additional_residuals: tuple[torch.Tensor] | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    return_dict: bool = True,
) -> UNet2DConditionOutput | tuple:
    """The patched ``forward`` (same signature as the stock one): decide full or cached, run it, keep count.

    Never compiled itself (see the module docstring); what it calls is.
    """
    state: _DeepCache = getattr(self, _STATE_ATTR)
    shallow_supported = (
        down_intrablock_additional_residuals is None
        and (down_block_additional_residuals is None) == (mid_block_additional_residual is None)
        and not (cross_attention_kwargs or {}).get("gligen")
    )
    cached = state.start(sample, timestep, encoder_hidden_states, shallow_supported)
    if cached:
        out = _shallow_forward(
            self, state.feature, state.branch, sample=sample, timestep=timestep,
            encoder_hidden_states=encoder_hidden_states, class_labels=class_labels, timestep_cond=timestep_cond,
            attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
            added_cond_kwargs=added_cond_kwargs, down_block_additional_residuals=down_block_additional_residuals,
            encoder_attention_mask=encoder_attention_mask,
        )
    else:
        out = type(self).forward(
            self, sample, timestep, encoder_hidden_states, class_labels=class_labels, timestep_cond=timestep_cond,
            attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
            added_cond_kwargs=added_cond_kwargs, down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            down_intrablock_additional_residuals=down_intrablock_additional_residuals,
            encoder_attention_mask=encoder_attention_mask, return_dict=False,
        )[0]
    return state.finish(out, cached, return_dict)


@apply_lora_scale("cross_attention_kwargs")
def _shallow_forward(
    unet: UNet2DConditionModel,
    feature: torch.Tensor,
    branch: int,
    *,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    class_labels: torch.Tensor | None,
    timestep_cond: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cross_attention_kwargs: dict[str, Any] | None,
    added_cond_kwargs: dict[str, torch.Tensor] | None,
    down_block_additional_residuals: tuple[torch.Tensor] | None,
    encoder_attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """A cached step: the stock forward's steps restricted to the outer ``branch + 1`` down/up blocks, with
    ``feature`` (from the last full step) in place of what the deep part would feed the first of those up
    blocks. Mirrors ``UNet2DConditionModel.forward`` of diffusers 0.42 (:data:`MIRRORED_FORWARD`) step by step,
    so that a cached step with the very feature a full step would compute gives that full step's output (the
    tests check this)."""
    # Masks to additive biases with a query dimension, as the stock forward does.
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    # Latent sizes that are not a multiple of the UNet's overall factor need explicit upsampling sizes.
    forward_upsample_size = any(dim % 2**unet.num_upsamplers for dim in sample.shape[-2:])
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    # Time, class and added (SDXL text_time) embeddings, and the text states, through the UNet's own helpers.
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    attention = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": attention_mask,
                 "cross_attention_kwargs": cross_attention_kwargs, "encoder_attention_mask": encoder_attention_mask}

    # Shallow down blocks: the skip connections, freshly computed. (The last one's downsampler output feeds
    # only the deep part and goes unused: a single strided conv.)
    sample = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks[: branch + 1]:
        if getattr(block, "has_cross_attention", False):
            sample, block_skips = block(hidden_states=sample, temb=emb, **attention)
        else:
            sample, block_skips = block(hidden_states=sample, temb=emb)
        skips += block_skips

    # The up blocks consume skips from the end of the stack, so the outer ones take its first entries.
    up_blocks = unet.up_blocks[len(unet.up_blocks) - branch - 1 :]
    skips = skips[: sum(len(block.resnets) for block in up_blocks)]
    if down_block_additional_residuals is not None:  # ControlNet: the residuals of these skips only
        skips = tuple(skip + residual for skip, residual in zip(skips, down_block_additional_residuals))

    sample = feature
    upsample_size = None
    for block in up_blocks:
        block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        if block is not unet.up_blocks[-1] and forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=block_skips,
                           upsample_size=upsample_size, **attention)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=block_skips,
                           upsample_size=upsample_size)

    if unet.conv_norm_out:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)
