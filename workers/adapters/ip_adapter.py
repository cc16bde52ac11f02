"""IP-Adapter units on a warm pipeline, for one job, then gone.

What diffusers' ``load_ip_adapter`` does to a UNet, and how it is done here instead:

* diffusers replaces *every* attention processor with a new object (self-attention ones by a fresh instance of
  their class, cross-attention ones by ``IPAdapterAttnProcessor2_0`` holding ``to_k_ip``/``to_v_ip``), sets
  ``unet.encoder_hid_proj`` to a ``MultiIPAdapterImageProjection`` and ``unet.config.encoder_hid_dim_type`` to
  ``"ip_image_proj"``, and moves the whole UNet (``unet.to``); ``unload_ip_adapter`` builds yet other processors.
  A worker's UNet carries processors of its own (fused q/k/v, SDPA: :mod:`workers.patching.attention`; a compiled
  UNet guards on their identity), so neither is used as is.
* :func:`adapters_applied` touches only the cross-attention layers of the units' UNet: each gets an
  :class:`AdapterAttention` that calls the layer's own processor (fused or not, untouched) for the text and adds
  the reference tokens' attention (diffusers' IP-Adapter arithmetic: ``to_out`` being linear, its weight is applied
  to that sum apart). ``encoder_hid_proj`` and the config value are set as diffusers sets them (so the UNet's own
  ``process_encoder_hidden_states`` and the pipelines' ``ip_adapter_image_embeds`` do the rest), and one forward
  pre-hook sets each unit's scale for the step. On exit, whatever happened: each layer's processor object back,
  ``encoder_hid_proj`` back where it lived (an attribute or a submodule), the config value back, the hook removed,
  a compiled forward back. No weight of the UNet is written.
* The adapter's own modules (:class:`LoadedAdapter`: the image projection, built by diffusers' own converter, and
  one ``to_k_ip``/``to_v_ip`` pair per layer) are made once per file and dtype and kept in the model cache.

Speed options: fused attention and SDPA keep working (the text attention is the layer's own processor). DeepCache
keeps working (its cached steps run the same processors; a cached step's deep features are those of the last full
step, with that step's scales). ``torch.compile`` is off for the job (the compiled forward would recompile for the
new processors and for every step's scales): :func:`adapters_applied` runs the UNet's eager forward and reports it
(``compile_off``: the job's Notes say so).

StartingStep / EndingStep: the unit acts at step ``i`` of ``N`` when ``i / N >= start`` and ``(i + 1) / N <= end``,
ControlNet's rule (:mod:`workers.inference.control`); elsewhere its scale is 0 and its layers skip it, so a unit
acting on no step, or at weight 0, computes exactly the image without it. ``N`` is the running pipeline's
``num_timesteps`` (:meth:`AdapterRun.kwargs` binds the pipeline); step 0 is recognised by its timestep, the first
of the pipeline's schedule.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from workers.adapters.encoder import ReferenceEmbeds
from workers.adapters.faceid import FaceIDPlusProjection, is_v2
from workers.adapters.files import AdapterFile

#: The task's Notes when a job with IP-Adapter units ran a compiled UNet's eager forward (``speed.compile``).
COMPILE_OFF_NOTE = ("speed.compile: off for this job (IP-Adapter units run the UNet's eager forward; the compiled one"
                    " serves the next job without units)")


class AdapterFitError(ValueError):
    """An adapter that does not fit the job's UNet (another cross-attention width, other layers) or its reference
    embeddings; ``str(error)`` says why, in one line."""


@dataclass
class LoadedAdapter:
    """One IP-Adapter file as modules on the device, shared by every job that names it (read-only): ``projection``
    (diffusers' image projection module of the variant), ``layers`` (``n -> (to_k_ip, to_v_ip)`` Linear modules,
    ``n`` numbering ``unet.attn_processors``) and what the file says of itself (its variant, what it reads of the
    encoder and at which width, the UNet cross-attention width it was made for: :class:`AdapterFile`'s fields)."""

    projection: torch.nn.Module
    layers: dict[int, tuple[torch.nn.Linear, torch.nn.Linear]]
    variant: str
    embeds: str
    embed_dim: int
    cross_attention_dim: int
    #: FaceID files: the LoRA part as read (CPU tensors; :func:`workers.adapters.faceid.faceid_lora`), the file's
    #: name, and (faceid-plus) the width of the CLIP hidden states it reads of the face crop
    lora: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    name: str = ""
    clip_dim: int | None = None

    @property
    def nbytes(self) -> int:
        params = [*self.projection.parameters(), *(p for pair in self.layers.values() for m in pair
                                                    for p in m.parameters())]
        lora = [t for parts in self.lora.values() for t in parts.values()]
        return sum(p.numel() * p.element_size() for p in [*params, *lora])


def build_adapter(data: AdapterFile, device: str | torch.device, dtype: torch.dtype) -> LoadedAdapter:
    """The modules of ``data`` on ``device`` in ``dtype``. The image projection is built by diffusers' own
    converter of the published layout (``UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers``,
    which needs no UNet when it does not load to the meta device). Raises :class:`AdapterFitError` when the
    projection's tensors do not load into it."""
    from diffusers import UNet2DConditionModel

    try:
        projection = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(
            None, dict(data.image_proj), low_cpu_mem_usage=False)
    except (RuntimeError, KeyError, ValueError) as e:
        raise AdapterFitError(f"its image projection ({data.variant}) does not load: {e}") from e
    clip_dim = None
    if data.variant == "faceid-plus":
        clip_dim = data.image_proj["perceiver_resampler.proj_in.weight"].shape[1]
        projection = FaceIDPlusProjection(projection, data.embed_dim, clip_dim, shortcut=is_v2(data.name))
    projection.to(device=device, dtype=dtype).eval().requires_grad_(False)
    layers = {}
    for n, (k, v) in data.layers.items():
        pair = []
        for weight in (k, v):
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            linear.weight = torch.nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
            pair.append(linear)
        layers[n] = (pair[0], pair[1])
    return LoadedAdapter(projection=projection, layers=layers, variant=data.variant, embeds=data.embeds,
                         embed_dim=data.embed_dim, cross_attention_dim=data.cross_attention_dim, lora=data.lora,
                         name=data.name, clip_dim=clip_dim)


@dataclass(frozen=True)
class AdapterUnit:
    """One IP-Adapter unit of a job: the adapter, its reference's embeddings, ``weight`` (ControlWeight, the
    adapter's scale) and its step window (``start``/``end``, StartingStep/EndingStep)."""

    adapter: LoadedAdapter
    embeds: ReferenceEmbeds
    weight: float
    start: float = 0.0
    end: float = 1.0

    def acts_at(self, step: int, total: int) -> bool:
        """Whether the unit acts at ``step`` (0-based) of ``total``: ControlNet's rule."""
        return self.weight != 0 and step / total >= self.start and (step + 1) / total <= self.end


def cross_attention_layers(unet: Any) -> dict[int, tuple[str, Any]]:
    """``n -> (processor name, Attention module)`` of the UNet's cross-attention layers, ``n`` their index in
    ``unet.attn_processors`` (the numbering of the published files)."""
    layers = {}
    for n, name in enumerate(unet.attn_processors):
        module = unet.get_submodule(name.removesuffix(".processor"))
        if getattr(module, "is_cross_attention", False):
            layers[n] = (name, module)
    return layers


def check_fits(unet: Any, adapter: LoadedAdapter, embeds: ReferenceEmbeds | None = None) -> None:
    """:class:`AdapterFitError` unless ``adapter`` fits ``unet`` (its cross-attention width, the same layers, each
    layer's width) and ``embeds`` fit the adapter (their kind and width)."""
    width = unet.config.cross_attention_dim
    if adapter.cross_attention_dim != width:
        raise AdapterFitError(f"it is made for a UNet with cross-attention width {adapter.cross_attention_dim} (an"
                              f" {'sdxl' if adapter.cross_attention_dim == 2048 else 'sd15'} model?), this one has"
                              f" {width}")
    layers = cross_attention_layers(unet)
    if set(layers) != set(adapter.layers):
        raise AdapterFitError(f"its {len(adapter.layers)} layers ({_ids(adapter.layers)}) are not this UNet's"
                              f" {len(layers)} cross-attention layers ({_ids(layers)})")
    for n, (name, attn) in layers.items():
        out = adapter.layers[n][0].out_features
        if out != attn.inner_dim:
            raise AdapterFitError(f"ip_adapter.{n} has width {out}, the layer {name} {attn.inner_dim}")
    if embeds is not None and not _embeds_fit(adapter, embeds):
        raise AdapterFitError(f"it reads {adapter.embeds} of width {adapter.embed_dim}, the reference gives"
                              f" {embeds.kind} of width {embeds.positive.shape[-1]} (another image encoder?)")


def _embeds_fit(adapter: LoadedAdapter, embeds: ReferenceEmbeds) -> bool:
    """Whether ``embeds`` are of the kind and width ``adapter`` reads (faceid-plus: the id embedding's width plus
    whole tokens of its CLIP width)."""
    if embeds.kind != adapter.embeds:
        return False
    width = embeds.positive.shape[-1]
    if adapter.embeds == "face_id_plus":
        rest = width - adapter.embed_dim
        return adapter.clip_dim is not None and rest > 0 and rest % adapter.clip_dim == 0
    return width == adapter.embed_dim


def _ids(layers: dict[int, Any]) -> str:
    ids = sorted(layers)
    return ", ".join(map(str, ids)) if len(ids) <= 6 else f"{ids[0]}, {ids[1]} ... {ids[-1]}"


@dataclass
class _Scales:
    """The units' scales at the running step, shared by every layer of one job (one list, rewritten in place)."""

    units: Sequence[AdapterUnit]
    scales: list[float] = field(default_factory=list)
    pipe: Any = None
    step: int = 0

    def at(self, step: int, total: int) -> None:
        self.scales[:] = [u.weight if u.acts_at(step, total) else 0.0 for u in self.units]


class AdapterAttention:
    """The processor of one cross-attention layer while a job's units are applied: the layer's own processor
    (``original``) computes the text attention, then each unit acting at this step adds its reference tokens'
    attention times its scale, through the layer's output projection (without its bias, which the text part has).
    A plain object, not a module: the UNet's module tree does not change."""

    def __init__(self, original: Any, layers: Sequence[tuple[torch.nn.Linear, torch.nn.Linear]], scales: _Scales):
        self.original, self.layers, self.state = original, list(layers), scales

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        reference = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, reference = encoder_hidden_states
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        scales = self.state.scales
        if reference is None or not any(scales):
            return out
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        shape = x.shape
        if x.ndim == 4:
            x = x.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(x)
        batch, heads = query.shape[0], attn.heads
        head_dim = query.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        added = None
        for tokens, scale, (to_k, to_v) in zip(reference, scales, self.layers):
            if scale == 0:
                continue
            key = to_k(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
            value = to_v(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
            h = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
            h = h.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype) * scale
            added = h if added is None else added + h
        added = F.linear(added, attn.to_out[0].weight)
        if len(shape) == 4:
            added = added.transpose(-1, -2).reshape(shape)
        return out + added / attn.rescale_output_factor


@dataclass
class AdapterRun:
    """What :func:`adapters_applied` gives the job: :meth:`kwargs` for each pipeline call, and which speed option
    it switched off for the job (``compile_off``: the job's Notes say so)."""

    state: _Scales | None
    embeds: list[torch.Tensor] = field(default_factory=list)
    compile_off: bool = False

    def kwargs(self, pipe: Any) -> dict[str, Any]:
        """The arguments a call of ``pipe`` (the base pipeline or a ControlNet pipeline made of it) needs for the
        units: ``ip_adapter_image_embeds``; none without units. Binds ``pipe`` for the step count."""
        if self.state is None:
            return {}
        self.state.pipe = pipe
        return {"ip_adapter_image_embeds": list(self.embeds)}


def _guided(unet: Any, guidance_scale: float) -> bool:
    """Whether the pipelines run classifier-free guidance (then each unit's embeddings are [negative, positive])."""
    return guidance_scale > 1 and getattr(unet.config, "time_cond_proj_dim", None) is None


def _pipeline_embeds(units: Sequence[AdapterUnit], guided: bool, device: Any, dtype: torch.dtype) -> list[torch.Tensor]:
    """``ip_adapter_image_embeds`` as the pipelines take them: per unit ``(2 or 1, 1, ...)``, one reference image."""
    out = []
    for unit in units:
        e = unit.embeds
        pair = torch.cat([e.negative, e.positive]) if guided else e.positive
        out.append(pair.unsqueeze(1).to(device=device, dtype=dtype))
    return out


def _step_hook(state: _Scales):
    """The UNet's forward pre-hook: the step of the running pipeline call from the timestep (its first timestep
    starts the count), and each unit's scale for it."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        pipe = state.pipe
        total = int(getattr(pipe, "num_timesteps", 0) or getattr(pipe, "_num_timesteps", 0) or 0)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        schedule = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        if total <= 0 or timestep is None or schedule is None or len(schedule) < total:
            state.at(0, 1)  # not a pipeline's denoising loop (a direct UNet call): every unit acts
            return
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        first = float(schedule[len(schedule) - total])
        state.step = 0 if math.isclose(t, first) else state.step + 1
        state.at(min(state.step, total - 1), total)

    return hook


@contextmanager
def adapters_applied(pipe: Any, units: Sequence[AdapterUnit], *, guidance_scale: float) -> Iterator[AdapterRun]:
    """``with adapters_applied(pipe, units, guidance_scale=g) as run:`` ``units`` act on every call of ``pipe`` (or
    of a ControlNet pipeline sharing its UNet) given ``**run.kwargs(that_pipeline)``; afterwards the UNet is
    exactly as before (module doc). No units: nothing is touched. Raises :class:`AdapterFitError` (before touching
    anything) for a unit that does not fit the UNet."""
    if not units:
        yield AdapterRun(state=None)
        return
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    unet = pipe.unet
    if getattr(unet, "encoder_hid_proj", None) is not None:
        raise AdapterFitError(f"the UNet already projects its encoder states ({unet.config.encoder_hid_dim_type}):"
                              " IP-Adapters are for Stable Diffusion 1.x/2.x and XL UNets")
    for unit in units:
        check_fits(unet, unit.adapter, unit.embeds)
    state = _Scales(units=list(units), scales=[0.0] * len(units))
    layers = cross_attention_layers(unet)
    before = {n: attn.processor for n, (_, attn) in layers.items()}
    in_dict = "encoder_hid_proj" in unet.__dict__
    hid_type = unet.config.encoder_hid_dim_type
    compiled = getattr(unet, "_compiled_call_impl", None)
    run = AdapterRun(state=state, embeds=_pipeline_embeds(units, _guided(unet, guidance_scale), unet.device,
                                                          unet.dtype), compile_off=compiled is not None)
    handle = None
    try:
        for n, (_, attn) in layers.items():
            attn.set_processor(AdapterAttention(before[n], [u.adapter.layers[n] for u in units], state))
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([u.adapter.projection for u in units])
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # diffusers' way: FrozenDict takes attribute writes
        handle = unet.register_forward_pre_hook(_step_hook(state), with_kwargs=True)
        if compiled is not None:
            unet._compiled_call_impl = None
        yield run
    finally:
        if handle is not None:
            handle.remove()
        if compiled is not None:
            unet._compiled_call_impl = compiled
        unet.config.encoder_hid_dim_type = hid_type
        if in_dict:  # where it lived: an attribute (as UNet2DConditionModel makes it) or a submodule slot
            unet._modules.pop("encoder_hid_proj", None)
            object.__setattr__(unet, "encoder_hid_proj", None)
        else:
            unet._modules["encoder_hid_proj"] = None
        for n, (_, attn) in layers.items():
            attn.set_processor(before[n])
        state.pipe = None
