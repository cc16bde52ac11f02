"""LoRA-family submodel files built by code for the conformance matrix, and an independent oracle of what
applying them means. Written from the formats' definitions (kohya-ss sd-scripts, LyCORIS, peft/diffusers,
A1111 and ComfyUI's merge math), never from Atelier's engine: nothing here imports ``workers.submodels``.

Writers. A :class:`Layer` is one patched module (which component of the pipeline, its module path there, the
tensors the file stores for it). The ``*_tensors`` functions make one layer's tensors in one format with
seeded random values, scaled so that the merged delta is about half as large as the layer's own weight
(the outputs change clearly). :func:`write_kohya` names the layers the way kohya-ss does (``lora_unet_`` /
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the module path with ``.`` -> ``_``, the UNet either in
diffusers' or in the original LDM layout) and :func:`write_peft` the way diffusers' ``save_lora_weights``
does (``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` prefixes, ``lora_A``/``lora_B``, each component's
peft config as JSON under the header key ``lora_adapter_metadata``).

Oracle. :func:`delta` is a layer's weight delta, :func:`merged_weight` the layer's weight after one file at a
user weight ``w`` (float32 math, cast back to the weight's dtype), :func:`oracle_components` deep copies of
a pipeline's UNet and text encoders with every layer of every file merged by hand, in list order:

* LoRA / LoCon: ``dW = alpha / r * (up.flatten(1) @ down.flatten(1))``, ``r = down.shape[0]``, no alpha ->
  ``alpha = r`` (peft: ``alpha`` is the metadata's ``<component>.lora_alpha``);
* LoHa: ``dW = alpha / r * (w1a @ w1b) * (w2a @ w2b)``, ``r = w1b.shape[0]``;
* LoKr: ``dW = scale * kron(w1, w2)``, each factor full or a product of two; ``scale = alpha / r`` with ``r``
  the rank of the decomposed factor (w2's first), 1 when neither is decomposed or there is no alpha;
* DoRA (``dora_scale`` / ``lora_magnitude_vector`` beside a LoRA's tensors): ``V = W + dW``,
  ``D = m * V / ||V||`` (norm over each output row when ``m`` runs along the outputs, over each input column
  when it is shaped ``(1, in, ...)``), ``W' = W + w * (D - W)``; otherwise ``W' = W + w * dW``.
"""
from __future__ import annotations

import copy
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from support.ldm import unet_to_ldm

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

# layer kinds, named by the end of their module path
UNET_KINDS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1",
              "conv2", "time_emb_proj")
TE_KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
            "mlp.fc2")

# how large a layer's delta is, relative to the spread of the layer's weight
DELTA_SIZE = 0.5


@dataclass
class Layer:
    """One module a file patches: ``component`` (pipeline attribute), ``module`` (path inside it), ``tensors``
    (the file's key suffix -> tensor as stored, e.g. ``lora_down.weight``, ``alpha``), ``alpha`` (a peft
    file's metadata ``lora_alpha`` for the component; None when the file has none)."""

    component: str
    module: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None = None


@dataclass
class LoraFile:
    path: Path
    layers: list[Layer]


# --------------------------------------------------------------------------------------------- targets

def components(pipe) -> list[str]:
    return [c for c in COMPONENTS if getattr(pipe, c, None) is not None]


def targets(pipe, unet_kinds: Iterable[str] = (), te_kinds: Iterable[str] = (),
            text_encoders: Iterable[str] | None = None) -> list[tuple[str, str, torch.Tensor]]:
    """``(component, module path, weight)`` of every Linear/Conv2d of the UNet whose path ends with one of
    ``unet_kinds``, and of the text encoders (all of the pipeline's, or ``text_encoders``) with ``te_kinds``."""
    out = []
    unet_kinds, te_kinds = tuple(unet_kinds), tuple(te_kinds)
    encoders = [c for c in components(pipe) if c != "unet"] if text_encoders is None else list(text_encoders)
    for component, kinds in [("unet", unet_kinds)] + [(c, te_kinds) for c in encoders]:
        if not kinds:
            continue
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d) and any(name.endswith("." + k) for k in kinds):
                out.append((component, name, module.weight.detach()))
    return out


def ldm_module_names(unet) -> dict[str, str]:
    """diffusers module path -> original (LDM) module path, for every module of ``unet`` with a weight
    (``down_blocks.0.attentions.0.proj_in`` -> ``input_blocks.1.1.proj_in``), by tests/support/ldm.py."""
    names = {}
    for name, module in unet.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            [key] = unet_to_ldm({f"{name}.weight": weight}, unet.config)
            names[name] = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
    return names


# --------------------------------------------------------------------------------------------- tensors

def _generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, key)).encode()))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def _finish(tensors: dict[str, torch.Tensor], weight: torch.Tensor, free: str, dtype: torch.dtype,
            alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Scale the factor ``free`` (the delta is linear in it) so that the delta's spread is DELTA_SIZE times the
    weight's, then cast every tensor to the file's dtype."""
    d = delta(tensors, weight.shape, alpha)
    tensors[free] = tensors[free] * (DELTA_SIZE * weight.float().std() / d.std())
    return {k: v.to(dtype).contiguous() for k, v in tensors.items()}


def _factor(n: int, at_most: int = 4) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (LyCORIS' factorization, simplified)."""
    return max(f for f in range(1, at_most + 1) if n % f == 0)


def lora_tensors(weight: torch.Tensor, seed, rank: int = 4, alpha: float | None = 2.0,
                 dtype: torch.dtype = torch.float32, peft: bool = False) -> dict[str, torch.Tensor]:
    """kohya LoRA/LoCon (``lora_down.weight`` (r, in[, kh, kw]), ``lora_up.weight`` (out, r[, 1, 1]), ``alpha``)
    or, with ``peft``, ``lora_A.weight`` / ``lora_B.weight`` (``alpha`` then goes to the metadata)."""
    g = _generator(seed, "lora", tuple(weight.shape))
    out_f, in_f, *kernel = weight.shape
    down = _randn(g, rank, in_f, *kernel)
    up = _randn(g, out_f, rank, *[1] * len(kernel))
    if peft:
        return _finish({"lora_A.weight": down, "lora_B.weight": up}, weight, "lora_B.weight", dtype, alpha)
    tensors = {"lora_down.weight": down, "lora_up.weight": up}
    if alpha is not None:
        tensors["alpha"] = torch.tensor(float(alpha))
    return _finish(tensors, weight, "lora_up.weight", dtype)


def dora_tensors(weight: torch.Tensor, seed, orientation: str = "out", rank: int = 4, alpha: float | None = 2.0,
                 dtype: torch.dtype = torch.float32, peft: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA with DoRA's magnitude: kohya/LyCORIS ``dora_scale`` shaped (out, 1[, 1, 1]) (``orientation``
    "out") or (1, in[, 1, 1]) ("in"); with ``peft``, ``lora_magnitude_vector`` shaped (out,). The magnitudes
    are the merged weight's norms times a random factor in 0.5..1.5."""
    tensors = lora_tensors(weight, seed, rank, alpha, torch.float32, peft)
    merged = weight.float() + delta(tensors, weight.shape, alpha if peft else None)
    g = _generator(seed, "dora", tuple(weight.shape), orientation)
    if orientation == "out":
        norm = merged.reshape(weight.shape[0], -1).norm(dim=1)
        shape = (weight.shape[0],) if peft else (weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        assert not peft
        norm = merged.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
        shape = (1, weight.shape[1], *[1] * (weight.dim() - 2))
    magnitude = (norm * (0.5 + torch.rand(norm.shape, generator=g))).reshape(shape)
    tensors["lora_magnitude_vector" if peft else "dora_scale"] = magnitude
    return {k: v.to(dtype).contiguous() for k, v in tensors.items()}


def tucker_tensors(weight: torch.Tensor, seed, rank: int = 4, alpha: float = 2.0,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """LoCon with a Tucker core (kohya/LyCORIS ``lora_mid``): ``lora_down`` (r, in, 1, 1), ``lora_mid``
    (r, r, kh, kw), ``lora_up`` (out, r, 1, 1), ``alpha``; for convolutions with a kernel."""
    g = _generator(seed, "tucker", tuple(weight.shape))
    out_f, in_f, kh, kw = weight.shape
    tensors = {"lora_down.weight": _randn(g, rank, in_f, 1, 1), "lora_mid.weight": _randn(g, rank, rank, kh, kw),
               "lora_up.weight": _randn(g, out_f, rank, 1, 1), "alpha": torch.tensor(float(alpha))}
    return _finish(tensors, weight, "lora_up.weight", dtype)


def full_tensors(weight: torch.Tensor, seed, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """LyCORIS full (``diff``: the delta of the whole weight)."""
    g = _generator(seed, "full", tuple(weight.shape))
    return _finish({"diff": _randn(g, *weight.shape)}, weight, "diff", dtype)


def loha_tensors(weight: torch.Tensor, seed, rank: int = 4, alpha: float = 2.0,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """LyCORIS LoHa: ``hada_w1_a`` (out, r), ``hada_w1_b`` (r, in*kh*kw), ``hada_w2_a``, ``hada_w2_b``, ``alpha``."""
    g = _generator(seed, "loha", tuple(weight.shape))
    out_f, flat_in = weight.shape[0], weight[0].numel()
    tensors = {"hada_w1_a": _randn(g, out_f, rank), "hada_w1_b": _randn(g, rank, flat_in),
               "hada_w2_a": _randn(g, out_f, rank), "hada_w2_b": _randn(g, rank, flat_in),
               "alpha": torch.tensor(float(alpha))}
    return _finish(tensors, weight, "hada_w1_a", dtype)


def _flat_factor(in_f: int, kernel: int) -> int:
    """A divisor ``b`` of ``in * kernel`` for the flattened LoKr layout, one that does not divide ``in`` when there
    is one (so that no per-kernel reading of the factors exists: sd-scripts' LyCORIS writes such files, e.g.
    ``w1`` (20, 60) and ``w2`` (16, 48) for a 320x320x3x3 convolution)."""
    flat = in_f * kernel
    divisors = [f for f in range(2, 65) if flat % f == 0]
    return next((f for f in divisors if in_f % f), divisors[-1] if divisors else 1)


def lokr_tensors(weight: torch.Tensor, seed, w1: str = "full", w2: str = "full", rank: int = 4,
                 alpha: float | None = 2.0, dtype: torch.dtype = torch.float32,
                 layout: str = "per-kernel") -> dict[str, torch.Tensor]:
    """LyCORIS LoKr: ``w1`` (a, b) as ``lokr_w1`` ("full") or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, b)
    ("decomposed"); ``a * c = out``; ``alpha``. ``layout`` (of a convolution; a linear layer has one):

    * "per-kernel": ``w2`` (c, d, kh, kw) as ``lokr_w2``, or ``lokr_w2_a`` (c, r) @ ``lokr_w2_b`` (r, d*kh*kw);
      ``b * d = in``;
    * "flattened": ``w2`` (c, e) as ``lokr_w2`` or ``lokr_w2_a`` (c, r) @ ``lokr_w2_b`` (r, e), with
      ``b * e = in * kh * kw`` and ``b`` not dividing ``in`` (:func:`_flat_factor`)."""
    g = _generator(seed, "lokr", tuple(weight.shape), w1, w2, layout)
    out_f, in_f, *kernel = weight.shape
    k = kernel[0] * kernel[1] if kernel else 1
    a = _factor(out_f)
    c = out_f // a
    if layout == "flattened" and kernel:
        b = _flat_factor(in_f, k)
        cols, full_w2 = in_f * k // b, (c, in_f * k // b)
    else:
        b = _factor(in_f)
        cols, full_w2 = in_f // b * k, (c, in_f // b, *kernel)
    tensors: dict[str, torch.Tensor] = {}
    if w1 == "full":
        tensors["lokr_w1"] = _randn(g, a, b)
    else:
        tensors["lokr_w1_a"], tensors["lokr_w1_b"] = _randn(g, a, 2), _randn(g, 2, b)
    if w2 == "full":
        tensors["lokr_w2"] = _randn(g, *full_w2)
    else:
        tensors["lokr_w2_a"] = _randn(g, c, rank)
        tensors["lokr_w2_b"] = _randn(g, rank, cols)
    if alpha is not None:
        tensors["alpha"] = torch.tensor(float(alpha))
    return _finish(tensors, weight, "lokr_w1" if w1 == "full" else "lokr_w1_a", dtype)


# --------------------------------------------------------------------------------------------- writers

def kohya_name(component: str, module: str, family: str, ldm_names: dict[str, str] | None = None) -> str:
    """kohya-ss's name of a layer: ``lora_unet_`` + the UNet module path (diffusers' layout, or the LDM one
    when ``ldm_names`` is given), ``lora_te_`` (SD 1.x) or ``lora_te1_``/``lora_te2_`` (SDXL) + the
    transformers module path; ``.`` -> ``_``."""
    if component == "unet":
        prefix, body = "lora_unet_", ldm_names[module] if ldm_names is not None else module
    elif family == "sd15":
        assert component == "text_encoder"
        prefix, body = "lora_te_", module
    else:
        prefix, body = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component], module
    return prefix + body.replace(".", "_")


def write_kohya(path: Path, layers: list[Layer], family: str, ldm_names: dict[str, str] | None = None,
                extra: dict[str, torch.Tensor] | None = None, header: bool = True,
                metadata: dict[str, str] | None = None) -> LoraFile:
    """A kohya-ss / LyCORIS ``.safetensors``: ``<kohya name>.<suffix>`` for every layer's tensors, plus ``extra``
    keys as given; kohya's ``ss_*`` training metadata in the header (``ss_base_model_version`` names the
    family), or, without ``header``, no metadata at all (converted and merged files often have none);
    ``metadata``: the header as another trainer writes it, instead."""
    tensors = {f"{kohya_name(layer.component, layer.module, family, ldm_names)}.{suffix}": t
               for layer in layers for suffix, t in layer.tensors.items()}
    tensors.update(extra or {})
    if metadata is None and header:
        metadata = {"ss_network_module": "networks.lora", "ss_output_name": Path(path).stem,
                    "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "sd_v1"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return LoraFile(path, layers)


def peft_metadata(component: str, rank: int, alpha: float, target_modules: list[str]) -> dict:
    """One component's entries of ``lora_adapter_metadata``: its peft ``LoraConfig`` prefixed with the
    component (``unet.r``, ``unet.lora_alpha``, ...), as diffusers' ``save_lora_weights`` writes them."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=sorted(set(target_modules))).to_dict()
    return {f"{component}.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def write_peft(path: Path, layers: list[Layer], with_metadata: bool = True) -> LoraFile:
    """A diffusers/peft ``.safetensors``: ``<component>.<module>.lora_A.weight`` etc.; with ``with_metadata``,
    each component's rank and ``lora_alpha`` (the layers' ``alpha``) in ``lora_adapter_metadata``. Without it,
    the layers' ``alpha`` is cleared (alpha = r)."""
    tensors = {f"{layer.component}.{layer.module}.{suffix}": t
               for layer in layers for suffix, t in layer.tensors.items()}
    metadata = {"format": "pt"}
    if with_metadata:
        entries: dict = {}
        for component in dict.fromkeys(layer.component for layer in layers):
            mine = [layer for layer in layers if layer.component == component]
            [alpha] = {layer.alpha for layer in mine}
            [rank] = {layer.tensors["lora_A.weight"].shape[0] for layer in mine}
            entries.update(peft_metadata(component, rank, alpha, [layer.module for layer in mine]))
        metadata["lora_adapter_metadata"] = json.dumps(entries, indent=2, sort_keys=True)
    else:
        layers = [Layer(layer.component, layer.module, layer.tensors, None) for layer in layers]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return LoraFile(path, layers)


# --------------------------------------------------------------------------------------------- oracle

def delta(tensors: dict[str, torch.Tensor], shape: torch.Size | tuple[int, ...],
          alpha: float | None = None) -> torch.Tensor:
    """The weight delta of one layer (float32), before the user's weight and without DoRA. ``alpha``: a peft
    file's metadata alpha (a stored ``alpha`` tensor takes precedence)."""
    t = {k: v.float() for k, v in tensors.items()}
    if "alpha" in t:
        alpha = float(t["alpha"].item())
    shape = tuple(shape)
    if "diff" in t:  # LyCORIS full: the delta itself
        return t["diff"].reshape(shape)
    if "lora_mid.weight" in t:  # Tucker LoCon, written out as loops over the kernel (independent of einsum)
        up, mid, down = t["lora_up.weight"].flatten(1), t["lora_mid.weight"], t["lora_down.weight"].flatten(1)
        r = down.shape[0]
        scale = 1.0 if alpha is None else alpha / r
        out = torch.zeros(shape)
        for h in range(shape[2]):
            for w in range(shape[3]):
                out[:, :, h, w] = up @ mid[:, :, h, w] @ down
        return out * scale
    down = t.get("lora_down.weight", t.get("lora_A.weight"))
    if down is not None:
        up = t.get("lora_up.weight", t.get("lora_B.weight"))
        r = down.shape[0]
        scale = 1.0 if alpha is None else alpha / r
        return (up.flatten(1) @ down.flatten(1)).reshape(shape) * scale
    if "hada_w1_a" in t:
        r = t["hada_w1_b"].shape[0]
        scale = 1.0 if alpha is None else alpha / r
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return product.reshape(shape) * scale
    if any(k.startswith("lokr_") for k in t):
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
        if "lokr_w2_a" in t:
            r = t["lokr_w2_a"].shape[1]
        elif "lokr_w1_a" in t:
            r = t["lokr_w1_a"].shape[1]
        else:
            r = None
        scale = alpha / r if r is not None and alpha is not None else 1.0
        return _kronecker_by_index(w1, w2, shape) * scale
    raise ValueError(f"no known layer format in {sorted(tensors)}")


def _kronecker_by_index(w1: torch.Tensor, w2: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """LoKr's delta written out element by element (index arithmetic, no ``torch.kron``), as LyCORIS defines it:

    * ``w2`` (c, d, kh, kw), per kernel: ``ΔW[o, i, h, w] = w1[o // c, i // d] · w2[o % c, i % d, h, w]``;
    * ``w2`` a matrix (c, e), flattened: ``F[o, j] = w1[o // c, j // e] · w2[o % c, j % e]`` over the layer's
      weight flattened to (out, in·kh·kw), then given the layer's shape."""
    out = shape[0]
    o = torch.arange(out)
    if w2.dim() == 4:
        c, d = w2.shape[:2]
        i = torch.arange(w2.shape[1] * w1.shape[1])
        per_kernel = w1[(o // c)[:, None], (i // d)[None, :]][:, :, None, None] * w2[(o % c)[:, None], (i % d)[None, :]]
        return per_kernel.reshape(shape)
    c, e = w2.shape
    j = torch.arange(e * w1.shape[1])
    flat = w1[(o // c)[:, None], (j // e)[None, :]] * w2[(o % c)[:, None], (j % e)[None, :]]
    return flat.reshape(shape)


def merged_weight(weight: torch.Tensor, tensors: dict[str, torch.Tensor], w: float,
                  alpha: float | None = None) -> torch.Tensor:
    """The layer's weight after applying one file's layer at user weight ``w``."""
    base = weight.detach().float()
    dw = delta(tensors, weight.shape, alpha)
    magnitude = tensors.get("dora_scale", tensors.get("lora_magnitude_vector"))
    if magnitude is None:
        return (base + w * dw).to(weight.dtype)
    m = magnitude.float()
    v = base + dw
    out_f, in_f = weight.shape[:2]
    ones = [1] * (weight.dim() - 1)
    if m.dim() == 1 or m.shape[0] == out_f != 1:  # one magnitude per output row
        norm = v.reshape(out_f, -1).norm(dim=1).reshape(out_f, *ones)
    else:  # (1, in, ...): one magnitude per input column
        norm = v.transpose(0, 1).reshape(in_f, -1).norm(dim=1).reshape(1, in_f, *ones[1:])
    d = m.reshape(norm.shape) * v / norm
    return (base + w * (d - base)).to(weight.dtype)


def oracle_components(pipe, jobs: list[tuple[LoraFile, float]]) -> dict[str, nn.Module]:
    """Deep copies of the pipeline's UNet and text encoders with every layer of every ``(file, weight)`` of
    ``jobs`` merged into them by hand, one file after the other."""
    copies = {c: copy.deepcopy(getattr(pipe, c)) for c in components(pipe)}
    with torch.no_grad():
        for file, w in jobs:
            for layer in file.layers:
                module = copies[layer.component].get_submodule(layer.module)
                module.weight.copy_(merged_weight(module.weight, layer.tensors, w, layer.alpha))
    return copies
