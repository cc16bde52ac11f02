"""A1111 hypernetworks in every form A1111 writes (layer structures, activations, layer norm, activate_output,
dropout keys, NovelAI's old keys, several widths, strengths), applied by the production path
``apply_submodels`` to tiny SD 1.5 and SDXL pipelines and compared with an oracle: a copy of the UNet whose
attention ``to_k`` / ``to_v`` are fed ``context + net(context) * strength`` by networks that
``support.hypernetwork_files`` builds itself from the file, as A1111 does.

Like A1111 (the hypernetwork is looked up by the width of the attention's context, which is ``x`` itself in
self-attention), every attention layer whose ``to_k`` width the file covers is patched, self-attention
included, unless ``hypernetwork_self_attention=False``. In the tiny SD 1.5 UNet the 32-wide self-attention
layers share the cross-attention context width 32 and the mid block's self-attention is 64 wide; in the tiny
SDXL UNet every attention layer is 64 wide.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from support.hypernetwork_files import A1111_ACTIVATIONS, oracle_networks, write_hypernetwork
from support.models import load_folder
from support.tiny import build_sd15, build_sdxl
from workers.submodels.apply import apply_submodels, read_submodel
from workers.submodels.spec import SubmodelError, SubModelSpec

SD15_WIDTH = 32   # tiny SD 1.5: cross-attention context (and most self-attention) width
SDXL_WIDTH = 64   # tiny SDXL: every attention layer
ATOL = 1e-5


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hn-matrix")


@pytest.fixture(scope="module")
def sd15(root):
    return _model(load_folder(build_sd15(root / "sd15", in_channels=9)))


@pytest.fixture(scope="module")
def sdxl(root):
    return _model(load_folder(build_sdxl(root / "sdxl"), family="sdxl"))


def _model(pipe) -> dict:
    inputs = _unet_inputs(pipe.unet)
    return {"pipe": pipe, "inputs": inputs, "base": _run(pipe.unet, inputs), "snapshot": _snapshot(pipe)}


def _unet_inputs(unet) -> dict:
    """Fixed inputs: a batch of 2 (uncond + cond, as the pipelines run it) of an 8x8 latent."""
    cfg = unet.config
    g = torch.Generator().manual_seed(1234)
    inputs = {"sample": torch.randn(2, cfg.in_channels, 8, 8, generator=g), "timestep": torch.tensor([10, 600]),
              "encoder_hidden_states": torch.randn(2, 7, cfg.cross_attention_dim, generator=g)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=g),
                                       "time_ids": torch.randn(2, 6, generator=g) * 100}
    return inputs


@torch.no_grad()
def _run(unet, inputs) -> torch.Tensor:
    return unet(**inputs, return_dict=False)[0]


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks")


def _modules(pipe) -> dict[str, nn.Module]:
    return {name: c for name, c in pipe.components.items() if isinstance(c, nn.Module)}


def _snapshot(pipe) -> dict:
    snap = {}
    for cname, component in _modules(pipe).items():
        for name, t in [*component.named_parameters(), *component.named_buffers()]:
            snap[f"{cname}.{name}"] = (id(t), t.detach().clone())
        for name, m in component.named_modules():
            snap[f"{cname}.{name}#module"] = (type(m), id(m), m.training,
                                              tuple(dict(getattr(m, d)) for d in _HOOK_DICTS))
    return snap


def _assert_untouched(model) -> None:
    """Parameters and buffers bit-identical (same objects), module tree and every hook as before, and the
    UNet gives the base output bit for bit."""
    pipe, before = model["pipe"], model["snapshot"]
    now = _snapshot(pipe)
    assert now.keys() == before.keys()
    for key, value in before.items():
        if key.endswith("#module"):
            assert now[key] == value, f"{key}: module or hooks changed"
        else:
            assert now[key][0] == value[0], f"{key}: another tensor object"
            assert now[key][1].dtype == value[1].dtype and torch.equal(now[key][1], value[1]), f"{key} changed"
    for d in ("_global_forward_pre_hooks", "_global_forward_hooks"):
        assert not getattr(nn.modules.module, d), d
    assert torch.equal(_run(pipe.unet, model["inputs"]), model["base"])


# ------------------------------------------------------------------------------------------- oracle

class _FedLinear(nn.Module):
    """``linear(x')`` where ``x'`` is ``x`` passed through each ``x + net(x) * strength`` in turn."""

    def __init__(self, linear: nn.Module, chain: list[tuple[nn.Module, float]]):
        super().__init__()
        self.linear, self.nets, self.strengths = linear, nn.ModuleList(n for n, _ in chain), [s for _, s in chain]

    def forward(self, x):
        for net, strength in zip(self.nets, self.strengths):
            x = x + net(x) * strength
        return self.linear(x)


def _oracle_unet(unet, hypernetworks: list[tuple[Path, float]], self_attention: bool = True):
    """A deep copy of ``unet`` with A1111's hypernetworks (file, strength), in order, in front of ``to_k`` and
    ``to_v`` of each attention whose context width a file covers; the number of attention layers patched."""
    oracle = copy.deepcopy(unet)
    networks = [(oracle_networks(path), strength) for path, strength in hypernetworks]
    patched = 0
    for attn in [m for m in oracle.modules() if isinstance(m, Attention)]:
        if not (self_attention or attn.is_cross_attention):
            continue
        width = attn.to_k.in_features
        chain = [(nets[width], strength) for nets, strength in networks if width in nets]
        if chain:
            attn.to_k = _FedLinear(attn.to_k, [(k, s) for (k, _), s in chain])
            attn.to_v = _FedLinear(attn.to_v, [(v, s) for (_, v), s in chain])
            patched += 1
    return oracle, patched


def _spec(path: Path, weight: float = 1.0, code: str | None = None) -> SubModelSpec:
    return SubModelSpec(model_code=code or path.stem, model_type="HyperNetwork", path=path, weight=weight)


def _check(model, hypernetworks: list[tuple[Path, float]], self_attention: bool = True,
           min_patched: int = 1) -> None:
    """Production (``apply_submodels``) equals the oracle, differs from the base, and leaves no trace."""
    pipe, inputs = model["pipe"], model["inputs"]
    oracle, patched = _oracle_unet(pipe.unet, hypernetworks, self_attention)
    assert patched >= min_patched
    expected = _run(oracle, inputs)
    specs = [_spec(path, strength, f"hn-{i}") for i, (path, strength) in enumerate(hypernetworks)]
    with apply_submodels(pipe, specs, read_submodel, hypernetwork_self_attention=self_attention):
        hooked = sum(1 for m in pipe.unet.modules() if isinstance(m, Attention) and m.to_k._forward_pre_hooks)
        got = _run(pipe.unet, inputs)
    assert hooked == patched, "production patched other attention layers than A1111 would"
    effect = (expected - model["base"]).abs().max().item()
    assert effect > 1000 * ATOL, f"the hypernetwork hardly changes the output ({effect})"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    _assert_untouched(model)


# ------------------------------------------------------------------------------------------- the rows

LAYOUTS = {  # id: write_hypernetwork arguments (for the tiny SD 1.5 width unless widths given)
    "121-relu-a1111-defaults": {"layer_structure": (1, 2, 1), "activation_func": "relu"},
    "11-linear": {"layer_structure": (1, 1), "activation_func": "linear", "activate_output": True},
    "11-tanh-activated-output": {"layer_structure": (1, 1), "activation_func": "tanh", "activate_output": True},
    "1-1.5-1-tanh-layer-norm": {"layer_structure": (1, 1.5, 1), "activation_func": "tanh", "is_layer_norm": True},
    "1-1.3-1-elu-activated-output": {"layer_structure": (1, 1.3, 1), "activation_func": "elu",
                                     "activate_output": True},  # int(32 * 1.3) = 41 features
    "1221-leakyrelu-norm-output-dropout": {"layer_structure": (1, 2, 2, 1), "activation_func": "leakyrelu",
                                           "is_layer_norm": True, "activate_output": True,
                                           "dropout_structure": (0, 0.3, 0.3, 0), "use_dropout": True},
    "1221-swish-dropout-flags": {"layer_structure": (1, 2, 2, 1), "activation_func": "swish",
                                 "use_dropout": True, "keys": "flags"},  # -> [0, 0.3, 0, 0]
    "1221-sigmoid-norm-dropout-flags-last": {"layer_structure": (1, 2, 2, 1), "activation_func": "sigmoid",
                                             "is_layer_norm": True, "use_dropout": True,
                                             "last_layer_dropout": True, "keys": "flags"},  # [0, .3, .3, 0]
    "121-gelu-norm-dropout-structure": {"activation_func": "gelu", "is_layer_norm": True,
                                        "dropout_structure": (0, 0.1, 0), "use_dropout": True},
    "1-0.5-2-1-mish": {"layer_structure": (1, 0.5, 2, 1), "activation_func": "mish", "is_layer_norm": True},
    "activation-none-output-on": {"activation_func": None, "activate_output": True},
    "metadata-missing-activates-output": {"activation_func": "relu", "activate_output": False,
                                          "omit": ("activate_output", "is_layer_norm", "dropout_structure",
                                                   "use_dropout", "last_layer_dropout", "weight_initialization")},
    "nai-old-keys": {"activation_func": None, "keys": "nai"},
    "glu-never-built": {"layer_structure": (1, 1), "activation_func": "glu"},  # last step, output not activated
    "widths-32-64-768": {"activation_func": "relu", "is_layer_norm": True, "widths": (32, 64, 768)},
}


@pytest.mark.parametrize("row", list(LAYOUTS))
def test_sd15_layouts_match_a1111(sd15, root, row):
    args = dict(LAYOUTS[row])
    widths = args.pop("widths", (SD15_WIDTH,))
    path = write_hypernetwork(root / "sd15-layouts" / f"{row}.pt", widths, seed=len(row), **args)
    _check(sd15, [(path, 1.0)], min_patched=11 if 64 in widths else 10)


@pytest.mark.parametrize("activation", list(A1111_ACTIVATIONS))
def test_every_a1111_activation_matches(sd15, root, activation):
    """[1, 2, 1] with the output activated too, so the activation runs on both steps."""
    path = write_hypernetwork(root / "activations" / f"{activation}.pt", (SD15_WIDTH,), seed=3,
                              activation_func=activation, activate_output=True)
    _check(sd15, [(path, 1.0)], min_patched=10)


@pytest.mark.parametrize("strength", [0.5, -1.0, 2.0])
def test_strength_multiplies_the_network(sd15, root, strength):
    path = write_hypernetwork(root / "strength.pt", (SD15_WIDTH,), seed=5, layer_structure=(1, 1.5, 1),
                              activation_func="silu", is_layer_norm=True)
    _check(sd15, [(path, strength)])


def test_strength_zero_is_the_base_exactly(sd15, root):
    path = write_hypernetwork(root / "zero.pt", (SD15_WIDTH,), seed=6, activation_func="relu")
    with apply_submodels(sd15["pipe"], [_spec(path, 0.0)], read_submodel):
        assert torch.equal(_run(sd15["pipe"].unet, sd15["inputs"]), sd15["base"])
    _assert_untouched(sd15)


def test_cross_attention_only_leaves_self_attention_alone(sd15, root):
    path = write_hypernetwork(root / "cross-only.pt", (SD15_WIDTH, 64), seed=7, activation_func="elu",
                              is_layer_norm=True)
    _check(sd15, [(path, 1.0)], self_attention=False, min_patched=10)


def test_two_hypernetworks_chain_in_order(sd15, root):
    first = write_hypernetwork(root / "chain-1.pt", (SD15_WIDTH,), seed=8, activation_func="relu")
    second = write_hypernetwork(root / "chain-2.pt", (SD15_WIDTH, 64), seed=9, layer_structure=(1, 1.5, 1),
                                activation_func="tanh", is_layer_norm=True, activate_output=True)
    _check(sd15, [(first, 0.7), (second, -0.4)], min_patched=11)


SDXL_ROWS = {
    "121-relu": ({"activation_func": "relu"}, 1.0),
    "1-1.5-1-swish-norm-output": ({"layer_structure": (1, 1.5, 1), "activation_func": "swish", "is_layer_norm": True,
                                   "activate_output": True}, 1.0),
    "1221-gelu-dropout": ({"layer_structure": (1, 2, 2, 1), "activation_func": "gelu",
                           "dropout_structure": (0, 0.3, 0.3, 0), "use_dropout": True}, 1.0),
    "nai-old-keys": ({"activation_func": None, "keys": "nai"}, 1.0),
    "11-softsign-strength-minus-1": ({"layer_structure": (1, 1), "activation_func": "softsign",
                                      "activate_output": True}, -1.0),
}


@pytest.mark.parametrize("row", list(SDXL_ROWS))
def test_sdxl_layouts_match_a1111(sdxl, root, row):
    args, strength = SDXL_ROWS[row]
    path = write_hypernetwork(root / "sdxl" / f"{row}.pt", (SDXL_WIDTH,), seed=len(row), **args)
    _check(sdxl, [(path, strength)], min_patched=16)


# ------------------------------------------------------------------------------------------- refusals

REFUSED = {  # id: (model, write_hypernetwork arguments, metadata then set, self_attention, words in the message)
    # A1111 could not have built these networks: the files hold relu networks' weights
    "unknown-activation": ("sd15", {}, {"activation_func": "swishy"}, True, ["unsupported activation", "'swishy'"]),
    "threshold": ("sd15", {}, {"activation_func": "threshold"}, True, ["'threshold'", "cannot be built"]),
    "multiheadattention": ("sd15", {}, {"activation_func": "multiheadattention"}, True, ["cannot be built"]),
    # A1111's UI writes these (at creation, before the first training step fails)
    "glu-inside": ("sd15", {"activation_func": "glu"}, {}, True, ["'glu'", "fails on a context"]),
    "glu-on-output": ("sd15", {"layer_structure": (1, 1), "activation_func": "glu", "activate_output": True}, {},
                      True, ["'glu'", "width 32 into one of width 16"]),
    # another family
    "sd15-file-on-sdxl": ("sdxl", {"widths": (SD15_WIDTH,)}, {}, True, ["widths [32] match no attention", "[64]"]),
    "real-sd15-widths": ("sd15", {"widths": (768, 320, 640, 1280)}, {}, True, ["match no attention layer"]),
    "sdxl-file-on-sd15-cross-only": ("sd15", {"widths": (SDXL_WIDTH,)}, {}, False, ["match no attention layer"]),
    # broken files
    "weights-without-the-layer-norm": ("sd15", {}, {"is_layer_norm": True}, True,
                                       ["does not fit", "linear.3.weight"]),
    "dropout-probability-1": ("sd15", {"layer_structure": (1, 2, 2, 1), "dropout_structure": (0, 0.9, 0, 0)},
                              {"dropout_structure": [0, 1.0, 0, 0]}, True, ["probability of 1 or more"]),
    "layer-structure-not-from-1": ("sd15", {}, {"layer_structure": [2, 1]}, True, ["must start and end with 1"]),
    "layer-structure-a-string": ("sd15", {}, {"layer_structure": "1, 2, 1"}, True, ["not a list of numbers"]),
}


@pytest.mark.parametrize("row", list(REFUSED))
def test_unusable_files_are_refused_naming_the_problem_and_nothing_stays_applied(sd15, sdxl, root, row):
    """A good hypernetwork before the bad one in the list: nothing stays applied, the pipeline is the base."""
    family, args, metadata, self_attention, words = REFUSED[row]
    model = {"sd15": sd15, "sdxl": sdxl}[family]
    width = SD15_WIDTH if family == "sd15" else SDXL_WIDTH
    args = dict(args)
    bad = write_hypernetwork(root / "refused" / f"{row}.pt", args.pop("widths", (width,)), seed=2, **args)
    if metadata:
        data = torch.load(bad, weights_only=True)
        data.update(metadata)
        torch.save(data, bad)
    if not any("match no attention" in word for word in words):  # refused when read, the pipeline untouched
        with pytest.raises(SubmodelError, match=words[-1]):
            read_submodel(_spec(bad, code="bad-hn"))
    good = write_hypernetwork(root / "refused" / f"good-{family}.pt", (width,), seed=1, is_layer_norm=True)
    with pytest.raises(SubmodelError) as info:
        with apply_submodels(model["pipe"], [_spec(good, code="good-hn"), _spec(bad, code="bad-hn")], read_submodel,
                             hypernetwork_self_attention=self_attention):
            pytest.fail("the job must not run")
    message = str(info.value)
    assert info.value.model_code == "bad-hn" and message.startswith("submodel bad-hn: ") and "\n" not in message
    for word in words:
        assert word in message, message
    _assert_untouched(model)
