"""An IP-Adapter file as published (h94/IP-Adapter ``models/`` and ``sdxl_models/``), read and recognised.

Two containers, one layout:

* ``.safetensors``: flat keys ``image_proj.<name>`` (the image projection) and ``ip_adapter.<n>.to_k_ip.weight`` /
  ``ip_adapter.<n>.to_v_ip.weight`` (the key and value projections of the reference tokens, one pair per
  cross-attention layer);
* ``.bin`` (a torch pickle, read with ``weights_only=True``): ``{"image_proj": {<name>: tensor},
  "ip_adapter": {"<n>.to_k_ip.weight": tensor, ...}}`` (a flat dict with the safetensors keys is taken too).

``<n>`` numbers the UNet's attention processors in ``unet.attn_processors`` order (self- and cross-attention
alternating, so the cross-attention layers are 1, 3, 5 ...), as the original IP-Adapter code and diffusers number
them. The image projection says the variant (:func:`recognise`):

* **plain** (``ip-adapter_sd15``, ``ip-adapter_sdxl``...): ``proj.weight`` (tokens x width, embed), ``proj.bias``,
  ``norm.*``: reads the CLIP vision encoder's projected ``image_embeds``, 4 tokens;
* **plus** (``ip-adapter-plus_*``, ``ip-adapter-plus-face_*``: the same layout, trained on other images): a
  Resampler (``latents``, ``proj_in``, ``proj_out``, ``norm_out``, ``layers.<i>...``): reads the encoder's
  penultimate hidden states, ``latents``' query count of tokens;
* **full** (``ip-adapter-full-face_sd15``): ``proj.0``-``proj.3`` (an MLP and a LayerNorm) over the hidden states,
  one token per encoder token.

FaceID files (h94/IP-Adapter-FaceID ``ip-adapter-faceid*``) read a face-recognition embedding (ArcFace, 512 wide)
instead of the CLIP encoder's, and carry a LoRA part in ``ip_adapter`` too (``<n>.to_q_lora.down.weight``,
``to_k_lora``, ``to_v_lora``, ``to_out_lora``, ``up`` alike, for every attention processor ``n``):

* **faceid** (``ip-adapter-faceid_sd15``, ``_sdxl``): ``proj.0``/``proj.2`` (an MLP) and ``norm``, no ``proj.3``:
  the face embedding only;
* **faceid-plus** (``ip-adapter-faceid-plus_sd15``, ``-plusv2_sd15``, ``-plusv2_sdxl``): the MLP plus
  ``perceiver_resampler.*`` over the CLIP encoder's penultimate hidden states of the aligned face crop.

:func:`recognise` reads the image projection of any of them; ``read_adapter_file`` keeps the LoRA part
(:attr:`AdapterFile.lora`) for :mod:`workers.adapters.faceid` and only the FaceID variants may have one.

Pure torch (and safetensors): no diffusers, no pipeline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

#: What a variant reads: the CLIP vision encoder's projected ``image_embeds`` or its penultimate hidden states; a
#: FaceID file the face embedding (``face_id``), or that and the CLIP hidden states of the face crop
#: (``face_id_plus``: one vector per side, :mod:`workers.adapters.faceid`).
EmbedsKind = Literal["image_embeds", "hidden_states", "face_id", "face_id_plus"]
#: The variants whose reference is a face (:mod:`workers.adapters.faceid`).
FACEID_VARIANTS = ("faceid", "faceid-plus")

_LAYER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


class AdapterFileError(ValueError):
    """A file that is not an IP-Adapter of a supported layout (missing keys, shapes that do not agree, a FaceID
    file, an unreadable container). ``str(error)`` says what, in one line."""


@dataclass(frozen=True)
class AdapterFile:
    """One IP-Adapter file, read into CPU tensors (shared between jobs: read-only).

    ``variant``: ``plain``, ``plus`` or ``full`` (module doc). ``image_proj``: the projection's tensors under the
    file's own names (without ``image_proj.``). ``layers``: ``n -> (to_k_ip.weight, to_v_ip.weight)``, each
    ``(layer width, cross_attention_dim)``. ``embeds``: what it reads of the encoder; ``embed_dim``: that width;
    ``tokens``: how many reference tokens it adds to each cross-attention (None for ``full``: the encoder's
    token count); ``cross_attention_dim``: the text-embedding width of the UNet it was made for (768 for SD 1.5,
    2048 for SDXL)."""

    variant: Literal["plain", "plus", "full", "faceid", "faceid-plus"]
    image_proj: dict[str, torch.Tensor]
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    embeds: EmbedsKind
    embed_dim: int
    tokens: int | None
    cross_attention_dim: int
    #: FaceID: the LoRA part, ``n -> {"q.down": tensor, "q.up": ..., "out.up": ...}`` (``n`` numbering
    #: ``unet.attn_processors``); empty for the other variants. ``name``: the file's name (FaceID plus: ``v2`` in it
    #: turns the projection's shortcut on, :mod:`workers.adapters.faceid`).
    lora: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    name: str = ""

    @property
    def nbytes(self) -> int:
        tensors = [*self.image_proj.values(), *(t for pair in self.layers.values() for t in pair),
                   *(t for parts in self.lora.values() for t in parts.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


def _load(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from either container."""
    try:
        if path.suffix.lower() == ".safetensors":
            flat = load_file(str(path), device="cpu")
        else:
            flat = torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # a truncated or foreign file: safetensors' and pickle's own errors vary
        raise AdapterFileError(f"cannot read {path.name} as an IP-Adapter file: {e}") from e
    if not isinstance(flat, dict):
        raise AdapterFileError(f"{path.name} holds a {type(flat).__name__}, not an IP-Adapter's tensors")
    if isinstance(flat.get("image_proj"), dict) and isinstance(flat.get("ip_adapter"), dict):
        return {"image_proj": dict(flat["image_proj"]), "ip_adapter": dict(flat["ip_adapter"])}
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = str(key).partition(".")
        if head in parts and rest:
            parts[head][rest] = value
    return parts


def _tensor(state: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        raise AdapterFileError(f"image_proj.{key}: missing or not a {ndim}-d tensor")
    return value


def recognise(image_proj: dict[str, torch.Tensor]) -> tuple[str, EmbedsKind, int, int | None, int]:
    """``(variant, embeds, embed_dim, tokens, cross_attention_dim)`` of an image projection (the module doc's
    variants). :class:`AdapterFileError` for a FaceID projection or an unknown layout."""
    keys = set(image_proj)
    if "perceiver_resampler.proj_in.weight" in keys:
        id_dim = _tensor(image_proj, "proj.0.weight", 2).shape[1]
        width = _tensor(image_proj, "perceiver_resampler.proj_out.weight", 2).shape[0]
        return "faceid-plus", "face_id_plus", id_dim, 4, width  # diffusers' projection: 4 tokens
    if "norm.weight" in keys and "proj.0.weight" in keys and "proj.3.weight" not in keys:
        id_dim = _tensor(image_proj, "proj.0.weight", 2).shape[1]
        width = _tensor(image_proj, "norm.weight", 1).shape[0]
        tokens, rest = divmod(_tensor(image_proj, "proj.2.weight", 2).shape[0], width)
        if rest:
            raise AdapterFileError(f"image_proj.proj.2.weight's rows are not a multiple of the norm's width {width}")
        return "faceid", "face_id", id_dim, tokens, width
    if "proj.weight" in keys:
        proj = _tensor(image_proj, "proj.weight", 2)
        width = _tensor(image_proj, "norm.weight", 1).shape[0]
        if proj.shape[0] % width:
            raise AdapterFileError(f"image_proj.proj.weight has {proj.shape[0]} rows, not a multiple of the"
                                   f" norm's width {width}")
        return "plain", "image_embeds", proj.shape[1], proj.shape[0] // width, width
    if "proj.3.weight" in keys:
        width = _tensor(image_proj, "proj.3.weight", 1).shape[0]
        return "full", "hidden_states", _tensor(image_proj, "proj.0.weight", 2).shape[1], None, width
    if "latents" in keys:
        latents = _tensor(image_proj, "latents", 3)
        embed_dim = _tensor(image_proj, "proj_in.weight", 2).shape[1]
        width = _tensor(image_proj, "proj_out.weight", 2).shape[0]
        return "plus", "hidden_states", embed_dim, latents.shape[1], width
    raise AdapterFileError("image_proj is none of the published layouts (plain: proj.weight; plus: latents;"
                           " full-face: proj.3.weight)")


def read_adapter_file(path: Path) -> AdapterFile:
    """The IP-Adapter at ``path`` (``.safetensors`` or ``.bin``). Raises :class:`AdapterFileError` for a file that
    is not one (what is wrong, in one line), ``OSError`` for one that cannot be read."""
    path = Path(path)
    parts = _load(path)
    if not parts["image_proj"]:
        raise AdapterFileError(f"{path.name} has no image_proj.* tensors: not an IP-Adapter file")
    variant, embeds, embed_dim, tokens, width = recognise(parts["image_proj"])
    found: dict[int, dict[str, torch.Tensor]] = {}
    lora: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in parts["ip_adapter"].items():
        match = _LAYER_KEY.match(str(key))
        if match is not None:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
            continue
        match = _LORA_KEY.match(str(key))
        if match is not None and variant in FACEID_VARIANTS:  # the FaceID LoRA part
            lora.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = value
    if not found:
        raise AdapterFileError(f"{path.name} has no ip_adapter.<n>.to_k_ip.weight tensors")
    layers = {}
    for n, pair in sorted(found.items()):
        k, v = pair.get("to_k_ip"), pair.get("to_v_ip")
        if k is None or v is None:
            raise AdapterFileError(f"ip_adapter.{n}: to_k_ip and to_v_ip come in pairs")
        if k.ndim != 2 or k.shape != v.shape or k.shape[1] != width:
            raise AdapterFileError(f"ip_adapter.{n}: to_k_ip {tuple(k.shape)}, to_v_ip {tuple(v.shape)}: both must"
                                   f" be (layer width, {width})")
        layers[n] = (k, v)
    for n, pair in lora.items():
        for x in ("q", "k", "v", "out"):
            if (f"{x}.down" in pair) != (f"{x}.up" in pair):
                raise AdapterFileError(f"ip_adapter.{n}.to_{x}_lora: down and up come in pairs")
    return AdapterFile(variant=variant, image_proj=parts["image_proj"], layers=layers, embeds=embeds,
                       embed_dim=embed_dim, tokens=tokens, cross_attention_dim=width, lora=lora, name=path.name)
