"""A1111 hypernetworks, which diffusers does not know: read from the ``.pt`` format and applied to the
UNet's attention context for one job by forward pre-hooks on ``to_k`` / ``to_v``, removed afterwards.

The file (``torch.save`` of a dict, as A1111's ``Hypernetwork.save`` writes it)::

    {768: (k_state_dict, v_state_dict), 320: (...), ...,   # one pair per context width
     "layer_structure": [1, 2, 1], "activation_func": "relu", "is_layer_norm": False,
     "activate_output": False, "use_dropout": False, "dropout_structure": [0, 0, 0],
     "last_layer_dropout": False, "weight_initialization": "Normal", "name": ..., "step": ..., ...}

Each state dict holds the parameters of an ``nn.Sequential`` called ``linear`` that A1111 builds, for step
``i`` of the layer structure, as: ``Linear(width * ls[i], width * ls[i+1])``; then the activation, unless
it is ``"linear"`` / ``None`` or this is the last step and ``activate_output`` is off; then ``LayerNorm`` if
``is_layer_norm``; then ``Dropout`` if ``dropout_structure[i+1] > 0``. Activations and dropouts have no
parameters but take an index, so e.g. [1, 2, 1] with relu and layer norm has keys ``linear.0`` (Linear),
``linear.2`` (LayerNorm), ``linear.3`` (Linear), ``linear.4`` (LayerNorm). Missing keys in the file give
A1111's defaults (``activate_output`` True, no layer norm, no dropout); the dropout structure, when absent,
is derived from ``use_dropout`` / ``last_layer_dropout`` as A1111 does. Old files with NovelAI's keys
(``linear1.weight`` ... ``linear2.bias``) are renamed as A1111 renames them.

Everything A1111 loads is accepted: any layer structure that starts and ends with 1 (a fractional entry
``x`` gives ``int(width * x)`` features), every activation of :data:`ACTIVATIONS`, layer norm and
``activate_output`` on or off, dropout structures (dropouts do nothing at inference but take indices).
:func:`read_hypernetwork` builds every width's k and v network on the meta device, loads the file's
weights into it strictly and runs it on a meta context, so a file that A1111 could not load or run is
refused when it is read, before any pipeline is touched: an unknown activation, one that cannot be built
without arguments (``threshold``, ``multiheadattention``), one that changes the width (``glu``, where the
structure uses it), weights that do not fit the structure, a dropout probability of 1 or more.

Application, as A1111's attention does it: a module computes ``x + strength * net(x)``, the ``k`` module on
the input of ``to_k`` and the ``v`` module on the input of ``to_v``, in every UNet attention layer whose
context width has a pair in the file. Like A1111 this includes self-attention layers whose width (320, 640,
1280 in SD 1.5) the file covers; pass ``self_attention=False`` to patch cross-attention only.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.contract.limits import ModelType
from workers.submodels.files import FileFormatError, find_weights_file, read_weights
from workers.submodels.spec import Loaded, SubmodelError, SubmodelKind

#: A1111's activation names: its own seven ("swish" is Hardswish there) plus every class of
#: ``torch.nn.modules.activation`` by its lowercased name, built without arguments as A1111 builds them (so
#: softmax, softmin, logsoftmax and softmax2d take their implicit dimension: the batch of a 3-d context).
#: ``threshold`` and ``multiheadattention`` cannot be built so, and ``glu`` halves the width: files using
#: them are refused, as A1111 fails on them.
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    name.lower(): cls for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if cls.__module__ == "torch.nn.modules.activation"
}
ACTIVATIONS.update({
    "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid,
})

# keys of the first hypernetworks (NovelAI's), renamed by A1111 on load
_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


@dataclass(frozen=True)
class HypernetworkFile:
    """A parsed hypernetwork file: its structure and, per context width, the k and v state dicts."""

    layer_structure: tuple[float, ...]
    activation_func: str | None
    is_layer_norm: bool
    activate_output: bool
    dropout_structure: tuple[float, ...]
    layers: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    name: str


def parse_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's dropout structure for files that only have ``use_dropout`` / ``last_layer_dropout``."""
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]


def read_hypernetwork(path: Path) -> HypernetworkFile:
    """Read an A1111 hypernetwork ``.pt`` and check that its networks build, load and run (on the meta
    device). Raises :class:`FileFormatError` when it is not one, or one that A1111 could not use either."""
    file = find_weights_file(path, ())
    content, _ = read_weights(file)
    if not isinstance(content, dict):
        raise FileFormatError(f"{file.name} holds {type(content).__name__}, not an A1111 hypernetwork")
    widths = {k: v for k, v in content.items() if isinstance(k, int) and not isinstance(k, bool)}
    if not widths:
        keys = ", ".join(sorted(map(str, content))[:3])
        raise FileFormatError(f"{file.name} is not an A1111 hypernetwork: no per-width layers (keys: {keys})")
    if content.get("skip_connection") or content.get("upsample_linear"):
        raise FileFormatError(f"{file.name} uses skip connections (a Hypernetwork-MonkeyPatch extension "
                              "format); not supported")
    structure = _numbers(file, "layer_structure", content.get("layer_structure", None) or (1, 2, 1))
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
        raise FileFormatError(f"{file.name}: layer_structure {list(structure)} must start and end with 1")
    dropout = content.get("dropout_structure", None)
    if dropout is None:
        dropout = parse_dropout_structure(structure, bool(content.get("use_dropout", False)),
                                          bool(content.get("last_layer_dropout", False)))
    dropout = _numbers(file, "dropout_structure", dropout)
    # A1111 reads dropout_structure[i + 1] for each step (more entries are ignored), asserting 0 < p < 1 if p > 0
    if len(dropout) < len(structure):
        raise FileFormatError(f"{file.name}: dropout_structure {list(dropout)} does not match layer_structure "
                              f"{list(structure)}")
    dropout = dropout[:len(structure)]
    if any(p >= 1 for p in dropout[1:]):
        raise FileFormatError(f"{file.name}: dropout_structure {list(dropout)} has a probability of 1 or more")
    activation = content.get("activation_func", None)
    if activation is not None and (not isinstance(activation, str) or activation not in ACTIVATIONS):
        raise FileFormatError(f"{file.name}: unsupported activation function {activation!r} (A1111 knows "
                              f"{', '.join(sorted(ACTIVATIONS))})")
    layers = {}
    for width, pair in widths.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(sd, dict) for sd in pair):
            raise FileFormatError(f"{file.name}: entry {width} must be a (k, v) pair of state dicts")
        layers[width] = tuple({_OLD_KEYS.get(k, k): v for k, v in sd.items()} for sd in pair)
    hn = HypernetworkFile(
        layer_structure=structure,
        activation_func=activation,
        is_layer_norm=bool(content.get("is_layer_norm", False)),
        activate_output=bool(content.get("activate_output", True)),
        dropout_structure=dropout,
        layers=layers,
        name=str(content.get("name") or file.stem),
    )
    try:
        check_modules(hn)
    except FileFormatError as e:
        raise FileFormatError(f"{file.name}: {e}") from e
    return hn


def _numbers(file: Path, key: str, value: Any) -> tuple[float, ...]:
    """``value`` as a tuple of finite floats (A1111 writes lists of floats or ints)."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError("a string")
        numbers = tuple(float(x) for x in value)
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"{file.name}: {key} {value!r} is not a list of numbers") from e
    if not all(math.isfinite(x) for x in numbers):
        raise FileFormatError(f"{file.name}: {key} {list(numbers)} has a non-finite entry")
    return numbers


class HypernetworkModule(torch.nn.Module):
    """One k or v network, built as A1111 builds it (``self.linear`` is the ``nn.Sequential``)."""

    def __init__(self, width: int, hn: HypernetworkFile):
        super().__init__()
        structure, steps = hn.layer_structure, len(hn.layer_structure) - 1
        layers: list[torch.nn.Module] = []
        for i in range(steps):
            layers.append(torch.nn.Linear(int(width * structure[i]), int(width * structure[i + 1])))
            if not (hn.activation_func in ("linear", None) or (i >= steps - 1 and not hn.activate_output)):
                layers.append(ACTIVATIONS[hn.activation_func]())
            if hn.is_layer_norm:
                layers.append(torch.nn.LayerNorm(int(width * structure[i + 1])))
            if hn.dropout_structure[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=hn.dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _load_module(width: int, part: str, hn: HypernetworkFile, state: dict[str, Any],
                 meta: bool) -> HypernetworkModule:
    """The ``part`` ("k"/"v") network of ``width`` holding ``state`` (shapes only when ``meta``)."""
    try:
        with torch.device("meta"):
            module = HypernetworkModule(width, hn)
    except (TypeError, ValueError, RuntimeError) as e:
        raise FileFormatError(f"width {width}: a network with activation {hn.activation_func!r}, layer_structure "
                              f"{list(hn.layer_structure)} cannot be built ({_one_line(e)[:200]})") from e
    if meta:
        state = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        expected = sorted(module.state_dict().keys())
        raise FileFormatError(
            f"width {width} {part} network does not fit layer_structure {list(hn.layer_structure)}, "
            f"activation {hn.activation_func!r}, layer norm {hn.is_layer_norm}, dropout "
            f"{list(hn.dropout_structure)}: expected keys {expected}, file has {sorted(map(str, state))} "
            f"({_one_line(e)[:200]})") from e
    return module.eval().requires_grad_(False)


def check_modules(hn: HypernetworkFile) -> None:
    """Build every network of ``hn`` on the meta device with the file's weight shapes and run it on a meta
    context (batch, tokens, width), as the attention feeds it: it must give that shape back. Raises
    :class:`FileFormatError` when a network cannot be built, does not fit the weights, or does not run."""
    for width, pair in hn.layers.items():
        for part, state in zip("kv", pair):
            module = _load_module(width, part, hn, state, meta=True)
            dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
            context = torch.empty(2, 3, width, device="meta", dtype=dtype)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # softmax & co. warn about their implicit dimension
                    shape = tuple(module(context).shape)
            except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as e:
                raise FileFormatError(f"width {width}: the {part} network (activation {hn.activation_func!r}, "
                                      f"layer_structure {list(hn.layer_structure)}) fails on a context of its "
                                      f"width ({_one_line(e)[:200]})") from e
            if shape != tuple(context.shape):
                raise FileFormatError(f"width {width}: the {part} network (activation {hn.activation_func!r}) "
                                      f"turns a context of width {width} into one of width {shape[-1]}, which "
                                      "cannot be added to it")


def build_modules(hn: HypernetworkFile, device, dtype) -> dict[int, tuple[HypernetworkModule, HypernetworkModule]]:
    """The k/v modules per width, weights from ``hn`` (strictly: every key present, none left over), in eval
    mode on ``device``/``dtype``. Raises :class:`FileFormatError` when they cannot be built, do not fit the
    weights or do not run (:func:`check_modules`, done first)."""
    check_modules(hn)
    built = {}
    for width, pair in hn.layers.items():
        k, v = (_load_module(width, part, hn, state, meta=False).to(device=device, dtype=dtype)
                for part, state in zip("kv", pair))
        built[width] = (k, v)
    return built


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _attention_layers(unet) -> list[Any]:
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def _in_width(linear: torch.nn.Module) -> int | None:
    width = getattr(linear, "in_features", None)
    if width is None and hasattr(linear, "base_layer"):
        width = getattr(linear.base_layer, "in_features", None)
    return width


@contextmanager
def hypernetwork_hooks(pipe, model_code: str, hn: HypernetworkFile, strength: float = 1.0,
                       self_attention: bool = True) -> Iterator[int]:
    """Apply ``hn`` with ``strength`` to ``pipe.unet`` for the ``with`` block; yield the number of attention
    layers patched. The hooks are removed on exit, also on error. Raises :class:`SubmodelError` when no
    attention layer has a context width the file covers, or when the file's weights do not fit."""
    unet = pipe.unet
    try:
        modules = build_modules(hn, unet.device, unet.dtype)
    except FileFormatError as e:
        raise SubmodelError(model_code, str(e)) from e
    targets = []
    widths_seen = set()
    for attn in _attention_layers(unet):
        if not (self_attention or attn.is_cross_attention):
            continue
        if getattr(attn, "fused_projections", False):
            raise SubmodelError(model_code, "the UNet's attention projections are fused (fuse_qkv_projections); "
                                            "hypernetworks need separate to_k/to_v")
        width = _in_width(attn.to_k)
        widths_seen.add(width)
        if width in modules:
            targets.append((attn, modules[width]))
    if not targets:
        raise SubmodelError(model_code, f"hypernetwork widths {sorted(hn.layers)} match no attention layer of this "
                                        f"base model (context widths {sorted(w for w in widths_seen if w)}): "
                                        "made for another base model?")
    handles = []
    try:
        if strength != 0:
            for attn, (net_k, net_v) in targets:
                for linear, net in ((attn.to_k, net_k), (attn.to_v, net_v)):
                    handles.append(linear.register_forward_pre_hook(_context_hook(net, float(strength))))
        yield len(targets)
    finally:
        for handle in handles:
            handle.remove()


def _context_hook(net: HypernetworkModule, strength: float):
    def hook(module, args):
        context = args[0]
        return (context + net(context) * strength, *args[1:])

    return hook


# --------------------------------------------------------------------------------------- the kind

@contextmanager
def _applied(pipe: Any, items: list[Loaded], *, hypernetwork_self_attention: bool = True,
             **_options: Any) -> Iterator[None]:
    """A job's hypernetworks, in the job's order, each with its weight as strength."""
    with ExitStack() as stack:
        for item in items:
            stack.enter_context(hypernetwork_hooks(pipe, item.spec.model_code, item.data, item.weight,
                                                   self_attention=hypernetwork_self_attention))
        yield


#: A1111 hypernetworks: hooks on the attention's k/v inputs, last, on separate (unfused) projections.
HYPERNETWORK = SubmodelKind(ModelType.HYPERNETWORK, read=read_hypernetwork, apply=_applied, order=30,
                            separate_attention=True)
