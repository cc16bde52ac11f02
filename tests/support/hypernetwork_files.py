"""A1111 hypernetwork files for the tests, and the oracle that reads them back, both written here with
plain ``torch.nn`` layers from A1111's ``modules/hypernetworks/hypernetwork.py`` (independent of
``workers/submodels/hypernetwork.py``).

A1111 builds, per context width and for k and v alike, ``nn.Sequential`` ``linear``: for each step ``i`` of
the layer structure ``Linear(int(w * ls[i]), int(w * ls[i + 1]))``, then the activation (not for "linear" or
None, nor on the last step unless ``activate_output``), then ``LayerNorm`` if ``is_layer_norm``, then
``Dropout`` where ``dropout_structure[i + 1] > 0``; it computes ``x + linear(x) * multiplier``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

#: A1111's ``activation_dict``: its own seven names ("swish" is Hardswish there) and the classes of
#: ``torch.nn.modules.activation`` by lowercased name, each built without arguments. Written out.
A1111_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "celu": nn.CELU, "gelu": nn.GELU, "hardshrink": nn.Hardshrink, "hardsigmoid": nn.Hardsigmoid,
    "hardswish": nn.Hardswish, "hardtanh": nn.Hardtanh, "logsigmoid": nn.LogSigmoid, "logsoftmax": nn.LogSoftmax,
    "mish": nn.Mish, "prelu": nn.PReLU, "relu6": nn.ReLU6, "rrelu": nn.RReLU, "selu": nn.SELU, "silu": nn.SiLU,
    "softmax": nn.Softmax, "softmax2d": nn.Softmax2d, "softmin": nn.Softmin, "softplus": nn.Softplus,
    "softshrink": nn.Softshrink, "softsign": nn.Softsign, "tanhshrink": nn.Tanhshrink,
}

#: names in A1111's dict whose networks A1111 cannot build without arguments, or that change the width
UNUSABLE_ACTIVATIONS = {"threshold": nn.Threshold, "multiheadattention": nn.MultiheadAttention, "glu": nn.GLU}

NAI_KEYS = {"linear.0.weight": "linear1.weight", "linear.0.bias": "linear1.bias",
            "linear.1.weight": "linear2.weight", "linear.1.bias": "linear2.bias"}


def a1111_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's ``parse_dropout_structure``, for files that have only the two flags."""
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]


def a1111_network(width: int, layer_structure, activation_func, is_layer_norm: bool, activate_output: bool,
                  dropout_structure) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = len(layer_structure) - 2
    for i in range(len(layer_structure) - 1):
        n_out = int(width * layer_structure[i + 1])
        layers.append(nn.Linear(int(width * layer_structure[i]), n_out))
        if activation_func not in ("linear", None) and (i < last or activate_output):
            layers.append(A1111_ACTIVATIONS.get(activation_func, UNUSABLE_ACTIVATIONS.get(activation_func))())
        if is_layer_norm:
            layers.append(nn.LayerNorm(n_out))
        if dropout_structure[i + 1] > 0:
            layers.append(nn.Dropout(p=dropout_structure[i + 1]))
    return nn.Sequential(*layers)


def _randomize(net: nn.Sequential, generator: torch.Generator) -> None:
    """Weights large enough that every layer visibly matters (A1111's "Normal" init is nearly zero)."""
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(layer.in_features))
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.2)
            elif isinstance(layer, nn.LayerNorm):
                layer.weight.copy_(1 + torch.randn(layer.weight.shape, generator=generator) * 0.3)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.3)
            elif isinstance(layer, nn.PReLU):
                layer.weight.copy_(0.25 + torch.randn(layer.weight.shape, generator=generator) * 0.1)


def write_hypernetwork(path: Path, widths, *, seed: int = 0, layer_structure=(1, 2, 1), activation_func="relu",
                       is_layer_norm: bool = False, activate_output: bool = False, dropout_structure=None,
                       use_dropout: bool = False, last_layer_dropout: bool = False, keys: str = "a1111",
                       omit: tuple[str, ...] = (), **extra) -> Path:
    """Write ``path`` as A1111's ``Hypernetwork.save`` does: per width a (k, v) pair of the state dicts of
    :func:`a1111_network` (random weights from ``seed``; k and v differ) and the metadata keys.

    ``keys``: "a1111"; "flags" (an older A1111 file: ``use_dropout`` / ``last_layer_dropout`` and no
    ``dropout_structure``); "nai" (NovelAI's ``linear1/linear2`` keys and no metadata at all). ``omit``
    drops metadata keys; ``extra`` adds or overrides some (written as given, e.g. a wrong structure)."""
    if dropout_structure is None:
        dropout_structure = a1111_dropout_structure(layer_structure, use_dropout, last_layer_dropout)
    generator = torch.Generator().manual_seed(seed)
    data: dict = {}
    for width in widths:
        pair = []
        for _ in "kv":
            net = a1111_network(width, layer_structure, activation_func, is_layer_norm, activate_output,
                                dropout_structure)
            _randomize(net, generator)
            state = {f"linear.{k}": v.clone() for k, v in net.state_dict().items()}
            if keys == "nai":
                state = {NAI_KEYS[k]: v for k, v in state.items()}
            pair.append(state)
        data[int(width)] = tuple(pair)
    if keys != "nai":
        data.update({
            "step": 120, "name": Path(path).stem, "layer_structure": list(layer_structure),
            "activation_func": activation_func, "is_layer_norm": is_layer_norm, "weight_initialization": "Normal",
            "sd_checkpoint": "a1b2c3d4", "sd_checkpoint_name": "some-checkpoint", "activate_output": activate_output,
            "use_dropout": use_dropout, "dropout_structure": list(dropout_structure),
            "last_layer_dropout": last_layer_dropout, "optional_info": None,
        })
        if keys == "flags":
            del data["dropout_structure"]
    for key in omit:
        data.pop(key, None)
    data.update(extra)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return Path(path)


def oracle_networks(path: Path) -> dict[int, tuple[nn.Sequential, nn.Sequential]]:
    """The (k, v) networks A1111's ``Hypernetwork.load`` makes of the file at ``path``, in eval mode."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    layer_structure = data.get("layer_structure", [1, 2, 1])
    dropout_structure = data.get("dropout_structure", None)
    if dropout_structure is None:
        dropout_structure = a1111_dropout_structure(layer_structure, data.get("use_dropout", False),
                                                    data.get("last_layer_dropout", False))
    networks = {}
    for width, pair in data.items():
        if type(width) is not int:
            continue
        built = []
        for state in pair:
            net = a1111_network(width, layer_structure, data.get("activation_func", None),
                                data.get("is_layer_norm", False), data.get("activate_output", True), dropout_structure)
            renamed = {({v: k for k, v in NAI_KEYS.items()}.get(k, k)).removeprefix("linear."): v
                       for k, v in state.items()}
            net.load_state_dict(renamed, strict=True)
            built.append(net.eval().requires_grad_(False))
        networks[width] = (built[0], built[1])
    return networks
