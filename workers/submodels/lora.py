"""LoRA-family files (kohya/A1111, LyCORIS, diffusers/peft), applied by patching the weights they change and
restored bit for bit: the math A1111 and ComfyUI use, for every layout they load.

**Reading** (:func:`read_lora`): a ``.safetensors`` (or pickle) file, or a diffusers LoRA folder. Its keys are
``<layer>.<part>``; the parts say the layer's kind:

==============  =====================================================================  =====================
kind            parts                                                                  written by
==============  =====================================================================  =====================
``lora``        ``lora_down.weight`` + ``lora_up.weight`` [+ ``lora_mid.weight``]      kohya sd-scripts, A1111
                (LoCon: 3x3 convs; Tucker with ``lora_mid``); ``lora_A.weight`` +      diffusers/peft
                ``lora_B.weight``
``loha``        ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``             LyCORIS LoHa
``lokr``        ``lokr_w1`` or ``lokr_w1_a`` + ``lokr_w1_b``; ``lokr_w2`` or            LyCORIS LoKr
                ``lokr_w2_a`` + ``lokr_w2_b``
``full``        ``diff`` [+ ``diff_b``]                                                LyCORIS full / diff
==============  =====================================================================  =====================

plus, on any kind, ``alpha`` (a scalar) and DoRA's magnitude ``dora_scale`` (peft: ``lora_magnitude_vector``).
Anything else (OFT, BOFT, LoHa/LoKr with Tucker cores, unknown parts) is refused, naming it.

**Names** (:func:`_resolve`): ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + a module path with
``.`` written ``_`` (kohya), either diffusers' module names or the original LDM ones
(:mod:`workers.submodels.ldm_names`, for SD 1.x and SDXL); or ``unet.`` / ``text_encoder.`` /
``text_encoder_2.`` + the dotted module name (diffusers/peft; the layouts of diffusers' older training scripts are
read in these names, :mod:`workers.submodels.diffusers_names`). Names are looked up in the loaded model, so
any model size works. A layer that names no module, or whose shape does not fit, refuses the whole file:
a LoRA is never applied partly. The family a file is made for comes from its keys first, then its metadata
(:func:`_family`).

**The math** (per layer with weight ``W`` and the job's weight ``w``; in float32, then cast to ``W``'s dtype):

* ``lora``: ``ΔW = alpha/r · up @ down`` (``r`` = the rank, ``down``'s first dimension; no ``alpha`` -> ``r``;
  peft: ``lora_alpha`` from the file's ``lora_adapter_metadata``, ``alpha/sqrt(r)`` with rsLoRA); Tucker:
  ``ΔW[o,i] = Σ up[o,a] · mid[a,b] · down[b,i]`` over the kernel;
* ``loha``: ``ΔW = alpha/r · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)``;
* ``lokr``: ``ΔW = scale · kron(w1, w2)``, ``scale = alpha/r`` when a factor is decomposed (its rank ``r``),
  else 1; on a convolution per kernel (a 4-D ``w2``) or of the flattened ``(out, in·kh·kw)`` weight (a matrix
  ``w2``), as :func:`_kron` says;
* ``full``: ``ΔW = diff`` (and ``diff_b`` on the bias);
* then ``W' = W + w·ΔW``; with DoRA's magnitude ``m``: ``V = W + ΔW``, ``D = m · V / ‖V‖`` (the norm per output
  row when ``m`` is shaped ``(out, ...)``, per input column when it is ``(1, in, ...)``, as LyCORIS writes it),
  ``W' = W + w·(D − W)``.

Several LoRAs in one job are applied in order. :func:`patched` keeps a host copy of every weight it changes
and copies it back when the job ends, whatever happens, so the base model is bit for bit the same again.

**Fused attention** (a model's ``speed.fuse_qkv``, :mod:`workers.patching.attention`): diffusers' fused
attention computes q, k, v with ``to_qkv`` (self-attention) or k, v with ``to_kv`` (cross-attention), built from
the separate layers' weights when the model is fused; a LoRA names (and patches) the separate layers. The worker
makes the separate weights views into the fused ones (:func:`workers.patching.attention.share_fused_storage`),
so patching them patches the fused layer. Where they are not views (a pipeline fused by diffusers' own
``fuse_qkv_projections()``), every fused layer whose parts changed is rebuilt from them in place after
patching (:func:`workers.patching.attention.refresh_fused_projections`), and kept and restored like any patched
weight. Either way the LoRA takes effect whether the model is
fused or not, in place, on the same parameters: a compiled UNet reads the new weights without recompiling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.contract.limits import LORA_WEIGHT_RANGE, ModelType
from workers.patching.attention import refresh_fused_projections
from workers.submodels.diffusers_names import COMPONENT_PREFIXES, modern_key
from workers.submodels.files import FileFormatError, find_weights_file, read_weights
from workers.submodels.ldm_names import ldm_module_names
from workers.submodels.spec import Loaded, SubmodelError, SubmodelKind, SubModelSpec

PEFT_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
PEFT_METADATA_KEY = "lora_adapter_metadata"

#: ``part -> (kind, role)``; ``kind`` None: the part goes with any kind.
PARTS: dict[str, tuple[str | None, str]] = {
    "lora_down.weight": ("lora", "down"), "lora_up.weight": ("lora", "up"), "lora_mid.weight": ("lora", "mid"),
    "lora_A.weight": ("lora", "down"), "lora_B.weight": ("lora", "up"),
    "hada_w1_a": ("loha", "w1_a"), "hada_w1_b": ("loha", "w1_b"),
    "hada_w2_a": ("loha", "w2_a"), "hada_w2_b": ("loha", "w2_b"),
    "lokr_w1": ("lokr", "w1"), "lokr_w1_a": ("lokr", "w1_a"), "lokr_w1_b": ("lokr", "w1_b"),
    "lokr_w2": ("lokr", "w2"), "lokr_w2_a": ("lokr", "w2_a"), "lokr_w2_b": ("lokr", "w2_b"),
    "diff": ("full", "diff"), "diff_b": ("full", "diff_b"),
    "alpha": (None, "alpha"), "dora_scale": (None, "dora"),
    "lora_magnitude_vector": (None, "dora"), "lora_magnitude_vector.weight": (None, "dora"),
}
#: Parts of formats A1111 or ComfyUI know and this engine does not apply: refused, named.
UNSUPPORTED_PARTS: dict[str, str] = {
    "oft_blocks": "OFT", "oft_diag": "OFT", "oft_R.weight": "OFT", "boft_R": "BOFT",
    "hada_t1": "LoHa with Tucker cores", "hada_t2": "LoHa with Tucker cores", "lokr_t2": "LoKr with a Tucker core",
    "w_norm": "GLoRA", "a1.weight": "GLoRA",
}
#: The pipeline components a LoRA can patch, by the name prefixes files give them.
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
DOTTED_PREFIXES = COMPONENT_PREFIXES
SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.")


@dataclass(frozen=True)
class LoraLayer:
    """One layer of a file: its kind and its parts by role (``down``, ``up``, ``w1_a``, ``alpha``, ...)."""

    kind: str
    parts: dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoraFile:
    """A LoRA-family file as read from disk: its layers by the file's own name for them, and its header."""

    layers: dict[str, LoraLayer]
    metadata: dict[str, str]
    source: str
    formats: tuple[str, ...] = field(default_factory=tuple)

    @property
    def layer_count(self) -> int:
        return len(self.layers)


# --- reading ----------------------------------------------------------------------------------------------


def _split(key: str) -> tuple[str, str] | None:
    """``(layer, part)`` of a key, by the longest known part it ends with; None when none fits."""
    for part in sorted((*PARTS, *UNSUPPORTED_PARTS), key=len, reverse=True):
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    return None


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA-family file (or a diffusers LoRA folder) into its layers. Raises :class:`FileFormatError`
    for a file that is not one, or holds a part of an unsupported format (named)."""
    file = find_weights_file(path, PEFT_WEIGHT_NAMES)
    content, header = read_weights(file)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not content:
        raise FileFormatError(f"{file.name} holds {type(content).__name__}, not a LoRA state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        raise FileFormatError(f"{file.name} is not a flat tensor state dict, so not a LoRA "
                              "(an A1111 embedding or hypernetwork?)")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    kinds: dict[str, set[str]] = {}
    for key, tensor in content.items():
        split = _split(modern_key(key))  # diffusers' older layouts in today's peft names; messages name the key
        if split is None:
            raise FileFormatError(f"{file.name}: key {key!r} is no part of a LoRA, LoHa, LoKr or full-diff layer")
        layer, part = split
        if part in UNSUPPORTED_PARTS:
            raise FileFormatError(f"{file.name} is a {UNSUPPORTED_PARTS[part]} network ({key}); not supported")
        kind, role = PARTS[part]
        grouped.setdefault(layer, {})[role] = tensor
        if kind is not None:
            kinds.setdefault(layer, set()).add(kind)
    layers = {}
    for name, parts in grouped.items():
        found = kinds.get(name, set())
        if len(found) != 1:
            what = "no weights" if not found else f"parts of several kinds ({', '.join(sorted(found))})"
            raise FileFormatError(f"{file.name}: layer {name} has {what}")
        (kind,) = found
        _check_parts(file.name, name, kind, parts)
        layers[name] = LoraLayer(kind, parts)
    formats = tuple(sorted({layer.kind for layer in layers.values()}
                           | ({"dora"} if any("dora" in layer.parts for layer in layers.values()) else set())))
    return LoraFile(layers=layers, metadata=dict(header or {}), source=str(file), formats=formats)


_REQUIRED = {"lora": ({"down", "up"},), "loha": ({"w1_a", "w1_b", "w2_a", "w2_b"},),
             "lokr": ({"w1"}, {"w1_a", "w1_b"}), "full": ({"diff"},)}


def _check_parts(file: str, layer: str, kind: str, parts: dict[str, torch.Tensor]) -> None:
    if not any(required <= parts.keys() for required in _REQUIRED[kind]):
        raise FileFormatError(f"{file}: {kind} layer {layer} lacks parts (has {', '.join(sorted(parts))})")
    if kind == "lokr" and not ({"w2"} <= parts.keys() or {"w2_a", "w2_b"} <= parts.keys()):
        raise FileFormatError(f"{file}: lokr layer {layer} lacks its second factor")


# --- names --------------------------------------------------------------------------------------------------


def _patchable(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@dataclass
class _Index:
    """The modules of one pipeline a file's names can point at."""

    modules: dict[str, dict[str, torch.nn.Module]]           # component -> dotted name -> module
    underscored: dict[str, dict[str, str]]                    # component -> kohya name -> dotted name

    @classmethod
    def of(cls, pipe: Any) -> _Index:
        modules, underscored = {}, {}
        for component in set(KOHYA_PREFIXES.values()):
            model = getattr(pipe, component, None)
            if model is None:
                continue
            mods = _patchable(model)
            if component != "unet":
                # transformers 5's CLIP text models have no ``text_model`` level in their module tree, while
                # checkpoints and LoRA files (and transformers 4) name their layers ``text_model.encoder...``
                mods |= {f"text_model.{name}": m for name, m in mods.items() if not name.startswith("text_model.")}
            modules[component] = mods
            names = {name.replace(".", "_"): name for name in mods}
            if component == "unet":
                for name, ldm in ldm_module_names(mods, model.config).items():
                    names.setdefault(ldm.replace(".", "_"), name)
            underscored[component] = names
        return cls(modules, underscored)


def _resolve(index: _Index, layer: str) -> tuple[str, str] | None:
    """``(component, dotted module name)`` a file's layer name points at, or None."""
    for prefix, component in KOHYA_PREFIXES.items():
        if layer.startswith(prefix):
            name = index.underscored.get(component, {}).get(layer[len(prefix):])
            return (component, name) if name is not None else None
    for prefix, component in DOTTED_PREFIXES.items():
        if layer.startswith(prefix):
            name = layer[len(prefix):]
            return (component, name) if name in index.modules.get(component, {}) else None
    return None


#: What a file may be made for, and the pipelines (:func:`_pipe_family`) that fits.
FAMILY_FITS = {"SDXL": ("SDXL",), "SD 1.x": ("SD 1.x",), "SD 2.x": ("SD 2.x",),
               "SD 1.x or 2.x": ("SD 1.x", "SD 2.x"), "FLUX": (), "SD 3": (), "FLUX or SD 3": ()}
#: The metadata fields trainers name the base model in: kohya's, and the model-spec standard's
#: (``modelspec.architecture``: ``stable-diffusion-v1/lora``, ``stable-diffusion-xl-v1-base/lora``...).
FAMILY_METADATA = ("ss_base_model_version", "modelspec.architecture")
#: The spellings found in the wild (``sd_v1``, ``sd_1.5``, ``SD1.5``, ``sd_v2_768_v``, ``sdxl_base_v1-0``,
#: ``stable-diffusion-v1``, ``flux-1-dev``...), compared lower-cased without spaces, dots, dashes and underscores:
#: ``(contains, family)`` then ``(starts with, family)``, in order.
FAMILY_WORDS = (("flux", "FLUX"), ("sd3", "SD 3"), ("stablediffusion3", "SD 3"), ("xl", "SDXL"), ("pony", "SDXL"))
FAMILY_PREFIXES = (("stablediffusionv2", "SD 2.x"), ("sdv2", "SD 2.x"), ("sd2", "SD 2.x"),
                   ("stablediffusionv1", "SD 1.x"), ("sdv1", "SD 1.x"), ("sd1", "SD 1.x"))
#: Layer-name prefixes that only transformer models' LoRAs have (kohya's FLUX names; diffusers' ``transformer.``).
FLUX_MARKERS = ("lora_unet_double_blocks_", "lora_unet_single_blocks_")
TRANSFORMER_MARKERS = ("transformer.", "lora_transformer_")


def _family(lora: LoraFile) -> str | None:
    """The family a file is made for (a key of :data:`FAMILY_FITS`), key evidence first: layer names only a
    FLUX, SD 3 or SDXL LoRA has, or kohya's single text encoder ``lora_te_`` (SD 1.x or 2.x), win over what the
    metadata says (which a trainer may get wrong); the metadata decides when the keys do not, and tells SD 1.x
    from 2.x."""
    keys = _family_by_keys(lora.layers)
    said = _family_by_metadata(lora.metadata)
    if keys is None or (keys == "SD 1.x or 2.x" and said in FAMILY_FITS[keys]):
        return said  # the keys say nothing, or the metadata narrows them to SD 1.x or 2.x
    return keys


def _family_by_keys(layers: dict[str, LoraLayer]) -> str | None:
    names = list(layers)
    if any(name.startswith(FLUX_MARKERS) for name in names):
        return "FLUX"
    if any(name.startswith(TRANSFORMER_MARKERS) for name in names):
        return "FLUX or SD 3"
    if any(name.startswith(SDXL_MARKERS) for name in names):
        return "SDXL"
    if any(name.startswith("lora_te_") for name in names):
        return "SD 1.x or 2.x"
    return None


def _family_by_metadata(metadata: dict[str, str]) -> str | None:
    for field_name in FAMILY_METADATA:
        said = "".join(ch for ch in metadata.get(field_name, "").split("/")[0].lower() if ch.isalnum())
        if not said:
            continue
        for word, family in FAMILY_WORDS:
            if word in said:
                return family
        for prefix, family in FAMILY_PREFIXES:
            if said.startswith(prefix):
                return family
    v2 = metadata.get("ss_v2", "").lower()  # kohya's older flag
    return "SD 2.x" if v2 == "true" else "SD 1.x" if v2 == "false" else None


def _pipe_family(pipe: Any) -> str:
    """SDXL (two text encoders), SD 2.x (OpenCLIP's 1024-wide context) or SD 1.x."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "SDXL"
    return "SD 2.x" if pipe.unet.config.get("cross_attention_dim") == 1024 else "SD 1.x"


# --- the math -------------------------------------------------------------------------------------------------


def _peft_scale(lora: LoraFile, layer: str, component: str, rank: int) -> float:
    """alpha/rank for a diffusers/peft layer, from its ``lora_adapter_metadata`` (1 without one)."""
    raw = lora.metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return 1.0
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return 1.0
    module = layer.split(".", 1)[1] if "." in layer else layer
    alpha = meta.get(f"{component}.lora_alpha", rank)
    for pattern, value in (meta.get(f"{component}.alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = value
    rank_used = rank
    for pattern, value in (meta.get(f"{component}.rank_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            rank_used = value
    if meta.get(f"{component}.use_rslora"):
        return float(alpha) / math.sqrt(rank_used)
    return float(alpha) / rank_used


def _alpha_scale(parts: dict[str, torch.Tensor], rank: int | None) -> float:
    if rank is None or "alpha" not in parts:
        return 1.0
    return float(parts["alpha"]) / rank


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.flatten(1) @ b.flatten(1)


class ShapeMismatch(ValueError):
    """A layer's tensors make a weight of other dimensions than the model's layer: made for another base model."""


class UnknownLayout(ValueError):
    """A layer's tensors are no layout of its kind that Atelier knows (say the factor shapes)."""


def delta(layer: LoraLayer, shape: torch.Size, *, peft_scale: float | None = None,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """ΔW of ``layer`` for a weight of ``shape`` (float32, on ``device``), scale included, the job's weight not.

    Raises :class:`ShapeMismatch` when the layer's tensors make a weight of other dimensions (another base
    model's layer), :class:`UnknownLayout` when they are no layout Atelier knows."""
    p = {role: t.to(device=device, dtype=torch.float32) for role, t in layer.parts.items() if role != "dora"}
    if layer.kind == "lora":
        down, up = p["down"], p["up"]
        rank = down.shape[0]
        scale = peft_scale if peft_scale is not None else _alpha_scale(layer.parts, rank)
        if "mid" in p:  # Tucker: up (out, r), mid (r, r, kh, kw), down (r, in)
            d = torch.einsum("oa,abhw,bi->oihw", up.flatten(1), p["mid"], down.flatten(1))
        else:
            d = _matmul(up, down)
    elif layer.kind == "loha":
        rank = p["w1_b"].shape[0]
        scale = _alpha_scale(layer.parts, rank)
        d = _matmul(p["w1_a"], p["w1_b"]) * _matmul(p["w2_a"], p["w2_b"])
    elif layer.kind == "lokr":
        d, scale = _kron(layer, p, shape)
    else:  # full
        scale, d = 1.0, p["diff"]
    # the same number of values and of output channels: a linear delta fits a 1x1 conv and back (SDXL
    # LoRAs write proj_in/proj_out as linear layers where SD 1.x has 1x1 convs), nothing else is reshaped
    if d.numel() != math.prod(shape) or d.shape[0] != shape[0]:
        raise ShapeMismatch(f"makes {tuple(d.shape)}, the layer is {tuple(shape)}")
    return d.reshape(shape) * scale


def _kron(layer: LoraLayer, p: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, float]:
    """A LoKr layer's ``kron(w1, w2)`` and its scale. The factorisation is told by ``w2``'s shape, as A1111 and
    ComfyUI tell it:

    * per kernel: ``w2`` (c, d, kh, kw), a full factor of a convolution: ``ΔW[o, i] = w1[o // c, i // d] · w2[o % c,
      i % d]`` kernel by kernel (the Kronecker product with ``w1`` as (a, b, 1, 1));
    * flattened: ``w2`` a matrix (c, e), full or ``w2_a @ w2_b``: the Kronecker product of the two matrices,
      ``(a·c, b·e)``, is the layer's weight flattened to ``(out, in·kh·kw)`` and reshaped to the layer's shape.
      ``b`` need not divide ``in``: sd-scripts' LyCORIS factors ``in·kh·kw`` as a whole (e.g. ``w1`` (20, 60),
      ``w2`` (16, 48) for a 320x320x3x3 convolution). When it does, this equals the per-kernel product of ``w2``
      reshaped to (c, e / kh·kw, kh, kw), the layout LyCORIS writes for a decomposed ``w2`` today.

    ``scale = alpha / dim`` with ``dim`` the rank of the decomposed factor (``w2``'s when both are), as LyCORIS
    defines it; 1 when both factors are full or the file has no alpha. Raises :class:`UnknownLayout` for factors
    that are neither."""
    rank = None
    if "w1" in p:
        w1 = p["w1"]
    else:
        w1, rank = _matmul(p["w1_a"], p["w1_b"]), p["w1_b"].shape[0]
    if "w2" in p:
        w2 = p["w2"]
    else:
        w2, rank = _matmul(p["w2_a"], p["w2_b"]), p["w2_b"].shape[0]
    scale = _alpha_scale(layer.parts, rank)
    if w1.dim() == 2 and w2.dim() == 4 and (len(shape) == 2 or tuple(w2.shape[2:]) == tuple(shape[2:])):
        return torch.kron(w1[:, :, None, None], w2), scale
    if w1.dim() == 2 and w2.dim() == 2:
        return torch.kron(w1, w2), scale
    raise UnknownLayout(f"LoKr factors w1 {_dims(w1)} and w2 {_dims(w2)} are no factorisation Atelier knows of a"
                        f" {_dims(shape)} weight (per kernel: w1 (a, b) and w2 (c, d, kh, kw); flattened: two"
                        " matrices)")


def _dims(t: torch.Tensor | torch.Size) -> str:
    return "x".join(map(str, t.shape if isinstance(t, torch.Tensor) else t))


def _dora(weight: torch.Tensor, update: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA: ``m · V / ‖V‖`` with ``V = W + ΔW``, the norm per output row or per input column."""
    v = weight + update
    m = magnitude.to(device=v.device, dtype=torch.float32)
    out_channels, in_channels = v.shape[0], v.shape[1]
    if m.numel() == out_channels and (m.dim() == 1 or m.shape[0] == out_channels):
        norm = v.reshape(out_channels, -1).norm(dim=1).reshape(out_channels, *[1] * (v.dim() - 1))
        m = m.reshape(out_channels, *[1] * (v.dim() - 1))
    elif m.numel() == in_channels:
        norm = v.transpose(0, 1).reshape(in_channels, -1).norm(dim=1).reshape(1, in_channels, *[1] * (v.dim() - 2))
        m = m.reshape(1, in_channels, *[1] * (v.dim() - 2))
    else:
        raise ValueError(f"DoRA magnitude of shape {tuple(magnitude.shape)} fits neither side of {tuple(v.shape)}")
    return m * v / (norm + torch.finfo(torch.float32).eps)


# --- applying ----------------------------------------------------------------------------------------------------


@dataclass
class _Patch:
    module: torch.nn.Module
    layer: LoraLayer
    name: str
    peft_scale: float | None


def _plan(pipe: Any, index: _Index, model_code: str, lora: LoraFile) -> list[_Patch]:
    """Every layer of ``lora`` resolved to a module of ``pipe`` and checked, before anything is touched."""
    family, ours = _family(lora), _pipe_family(pipe)
    if family is not None and ours not in FAMILY_FITS[family]:
        raise SubmodelError(model_code, f"LoRA made for {family}; this main model is {ours}")
    patches, unknown = [], []
    for name, layer in lora.layers.items():
        target = _resolve(index, name)
        if target is None:
            unknown.append(name)
            continue
        component, module_name = target
        module = index.modules[component][module_name]
        peft_scale = None
        if name.startswith(tuple(DOTTED_PREFIXES)) and layer.kind == "lora":
            peft_scale = _peft_scale(lora, name, component, layer.parts["down"].shape[0])
            if "alpha" in layer.parts:
                peft_scale = _alpha_scale(layer.parts, layer.parts["down"].shape[0])
        try:
            delta(layer, module.weight.shape, peft_scale=peft_scale, device="meta")
        except ShapeMismatch as e:  # its dimensions are another model's
            raise SubmodelError(model_code, f"LoRA layer {name} does not fit {component}.{module_name}: {e};"
                                            " made for another base model?") from e
        except UnknownLayout as e:
            raise SubmodelError(model_code, f"LoRA layer {name} ({component}.{module_name}): {e}") from e
        except (RuntimeError, KeyError) as e:  # its own tensors do not multiply: not the base model's fault
            shapes = ", ".join(f"{role} {_dims(t)}" for role, t in sorted(layer.parts.items()) if t.dim())
            raise SubmodelError(model_code, f"LoRA layer {name}: its {layer.kind} tensors ({shapes}) do not make"
                                            " one weight together: a corrupt file or a layout Atelier does not"
                                            " know") from e
        patches.append(_Patch(module, layer, name, peft_scale))
    if unknown:
        hint = f" (it looks made for {family})" if family else ""
        raise SubmodelError(model_code, f"LoRA: {len(unknown)} of its {lora.layer_count} layers name no layer of"
                                        f" this {ours} model{hint}, e.g. {unknown[0]}")
    return patches


@contextmanager
def patched(pipe: Any, loras: list[tuple[str, LoraFile, float]]) -> Iterator[None]:
    """Apply ``(model_code, lora, weight)`` LoRAs to ``pipe``'s weights for the ``with`` block, in order; put
    every changed weight back, bit for bit, when it ends (also on error).

    Every file is resolved and checked first: :class:`SubmodelError` naming the model for a file made for
    another family, a layer that names no module or does not fit; nothing is changed then."""
    index = _Index.of(pipe)
    plans = [(code, _plan(pipe, index, code, lora), float(weight)) for code, lora, weight in loras]
    saved: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    def keep(param: torch.nn.Parameter) -> None:
        if id(param) not in saved:
            saved[id(param)] = (param, param.detach().to("cpu", copy=True))

    try:
        with torch.no_grad():
            for _, patches, weight in plans:
                for patch in patches:
                    _apply(patch, weight, keep)
            unet = getattr(pipe, "unet", None)
            if unet is not None and saved:
                refresh_fused_projections(unet, set(saved), keep)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved.values():
                param.copy_(original)


def _apply(patch: _Patch, weight: float, keep) -> None:
    w = patch.module.weight
    keep(w)
    base = w.detach().to(torch.float32)
    update = delta(patch.layer, w.shape, peft_scale=patch.peft_scale, device=w.device)
    if "dora" in patch.layer.parts:
        new = base + weight * (_dora(base, update, patch.layer.parts["dora"]) - base)
    else:
        new = base + weight * update
    w.copy_(new.to(w.dtype))
    diff_b = patch.layer.parts.get("diff_b")
    if diff_b is not None and patch.module.bias is not None:
        b = patch.module.bias
        keep(b)
        b.copy_((b.detach().to(torch.float32) + weight * diff_b.to(b.device, torch.float32)).to(b.dtype))


# --------------------------------------------------------------------------------------- the kind

def _check_weight(spec: SubModelSpec, weight: float) -> None:
    low, high = LORA_WEIGHT_RANGE
    if not low <= weight <= high:
        raise SubmodelError(spec.model_code, f"LoraWeight must be within {low:g}..{high:g}, got {weight:g}")


@contextmanager
def _applied(pipe: Any, items: list[Loaded], **_options: Any) -> Iterator[None]:
    """A job's LoRAs, merged into the weights in the job's order with their weights (one :func:`patched`)."""
    with patched(pipe, [(item.spec.model_code, item.data, item.weight) for item in items]):
        yield


#: LoRAs (and the LyCORIS family): merged into the weights first, before any other kind.
LORA = SubmodelKind(ModelType.LORA, read=read_lora, apply=_applied, order=10, preferred_names=PEFT_WEIGHT_NAMES,
                    check=_check_weight)
