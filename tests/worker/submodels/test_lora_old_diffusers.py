"""LoRAs saved by diffusers' older training scripts (``train_text_to_image_lora.py``, ``train_dreambooth_lora.py``
before they moved to peft): their key layouts renamed to today's names (:func:`modern_key`), and conformance rows
that apply such files, written here key by key in those exact layouts and shapes (not by the code under test), to
the tiny SD 1.5-layout model through ``apply_submodels``, compared at the UNet's noise prediction and the text
encoder's hidden states with diffusers' own model-level loaders (``UNet2DConditionModel.load_lora_adapter``,
``StableDiffusionPipeline.load_lora_into_text_encoder``, which convert these layouts themselves) and with the
hand-merged oracle of tests/support/lora_files.py; the base comes back bit for bit after every row.

The layouts (``down`` shown, ``up`` alike), as docs/submodels.md lists them:

* (a) attention processors: ``[unet.]down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.
  to_k_lora.down.weight`` (``to_out_lora`` is ``to_out.0``);
* (b) LoRA-compatible layers: ``unet.<module>.lora.down.weight``;
* the text encoder: ``[text_encoder.]text_model.<module>.lora_linear_layer.down.weight`` and the oldest
  ``text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight`` (``q_proj``...).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from support.lora_files import Layer, LoraFile, components, lora_tensors, oracle_components, targets
from support.models import load_folder
from support.probes import probe, relative_error, snapshot
from support.tiny import build_sd15
from workers.submodels.apply import apply_submodels
from workers.submodels.diffusers_names import modern_key
from workers.submodels.spec import SubmodelError, SubModelSpec

# engine vs oracle, as a fraction of the largest output value (as in test_lora_matrix.py)
TOLERANCE = 1e-5
# a row's outputs must move at least this much (same measure) away from the base's
CHANGED = 1e-3

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
TE_ATTN = "text_model.encoder.layers.0.self_attn"


# --------------------------------------------------------------------------------------------- modern_key

RENAMES = [
    # (a) attention processors, no prefix and with ``unet.``
    (f"{ATTN}.processor.to_k_lora.down.weight", f"unet.{ATTN}.to_k.lora_A.weight"),
    (f"{ATTN}.processor.to_q_lora.up.weight", f"unet.{ATTN}.to_q.lora_B.weight"),
    (f"{ATTN}.processor.to_v_lora.down.weight", f"unet.{ATTN}.to_v.lora_A.weight"),
    (f"{ATTN}.processor.to_out_lora.up.weight", f"unet.{ATTN}.to_out.0.lora_B.weight"),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight",
     "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.to_k_lora.up.weight",
     "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.lora_B.weight"),
    (f"unet.{ATTN}.processor.to_k_lora.down.weight", f"unet.{ATTN}.to_k.lora_A.weight"),
    (f"unet.{ATTN}.processor.to_out_lora.up.weight", f"unet.{ATTN}.to_out.0.lora_B.weight"),
    # (b) LoRA-compatible layers
    (f"unet.{ATTN}.to_k.lora.down.weight", f"unet.{ATTN}.to_k.lora_A.weight"),
    (f"unet.{ATTN}.to_out.0.lora.up.weight", f"unet.{ATTN}.to_out.0.lora_B.weight"),
    ("unet.down_blocks.1.resnets.0.conv1.lora.down.weight", "unet.down_blocks.1.resnets.0.conv1.lora_A.weight"),
    ("unet.mid_block.attentions.0.proj_in.lora.up.weight", "unet.mid_block.attentions.0.proj_in.lora_B.weight"),
    (f"{ATTN}.to_k.lora.down.weight", f"unet.{ATTN}.to_k.lora_A.weight"),
    (f"unet.{ATTN}.to_q.lora_linear_layer.up.weight", f"unet.{ATTN}.to_q.lora_B.weight"),
    # the text encoder: lora_linear_layer, the oldest to_<x>_lora spelling, with and without a prefix
    (f"text_encoder.{TE_ATTN}.q_proj.lora_linear_layer.up.weight", f"text_encoder.{TE_ATTN}.q_proj.lora_B.weight"),
    ("text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_linear_layer.down.weight",
     "text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_A.weight"),
    (f"text_encoder_2.{TE_ATTN}.out_proj.lora_linear_layer.down.weight",
     f"text_encoder_2.{TE_ATTN}.out_proj.lora_A.weight"),
    (f"text_encoder.{TE_ATTN}.to_q_lora.down.weight", f"text_encoder.{TE_ATTN}.q_proj.lora_A.weight"),
    (f"text_encoder.{TE_ATTN}.to_k_lora.up.weight", f"text_encoder.{TE_ATTN}.k_proj.lora_B.weight"),
    (f"text_encoder.{TE_ATTN}.to_v_lora.down.weight", f"text_encoder.{TE_ATTN}.v_proj.lora_A.weight"),
    (f"text_encoder.{TE_ATTN}.to_out_lora.up.weight", f"text_encoder.{TE_ATTN}.out_proj.lora_B.weight"),
    (f"text_encoder.{TE_ATTN}.processor.to_out_lora.down.weight", f"text_encoder.{TE_ATTN}.out_proj.lora_A.weight"),
    (f"{TE_ATTN}.k_proj.lora_linear_layer.down.weight", f"text_encoder.{TE_ATTN}.k_proj.lora_A.weight"),
    (f"{TE_ATTN}.to_out_lora.up.weight", f"text_encoder.{TE_ATTN}.out_proj.lora_B.weight"),
    # today's names without a component prefix get their component's
    (f"{ATTN}.to_k.lora_A.weight", f"unet.{ATTN}.to_k.lora_A.weight"),
    (f"{ATTN}.to_k.alpha", f"unet.{ATTN}.to_k.alpha"),
    ("conv_in.lora.down.weight", "unet.conv_in.lora_A.weight"),
    ("time_embedding.linear_1.lora.up.weight", "unet.time_embedding.linear_1.lora_B.weight"),
    # an unknown part only gets its component's prefix (the reader refuses it, naming the file's key)
    (f"{ATTN}.processor.to_zz_lora.down.weight", f"unet.{ATTN}.processor.to_zz_lora.down.weight"),
]

UNCHANGED = [
    # kohya / A1111 / LyCORIS
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.alpha",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
    "lora_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_a",
    "lora_unet_input_blocks_4_1_proj_in.lokr_w2_b",
    "lora_unet_middle_block_0_in_layers_2.diff",
    "lora_unet_output_blocks_2_1_conv.dora_scale",
    # today's diffusers/peft names
    f"unet.{ATTN}.to_k.lora_A.weight",
    f"unet.{ATTN}.to_out.0.lora_B.weight",
    f"unet.{ATTN}.to_k.lora_magnitude_vector",
    f"text_encoder.{TE_ATTN}.q_proj.lora_A.weight",
    f"text_encoder_2.{TE_ATTN}.v_proj.lora_B.weight",
    f"unet.{ATTN}.to_k.alpha",
    # unknown layouts stay as they are, for the reader to refuse by their own name
    "diffusion_model.input_blocks.1.1.proj_in.lora_down.weight",
    "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
    "something_else.weight",
    "",
]


@pytest.mark.parametrize(("old", "new"), RENAMES, ids=[old for old, _ in RENAMES])
def test_an_old_diffusers_key_gets_todays_peft_name(old, new):
    assert modern_key(old) == new
    assert modern_key(new) == new, "a modern name must be a fixed point"


@pytest.mark.parametrize("key", UNCHANGED, ids=[k or "<empty>" for k in UNCHANGED])
def test_every_other_key_is_returned_unchanged(key):
    assert modern_key(key) == key


# --------------------------------------------------------------------------------------------- fixtures

@dataclass
class Model:
    pipe: object
    state: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def _live(pipe) -> dict[str, torch.Tensor]:
    return probe({c: getattr(pipe, c) for c in components(pipe)})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    pipe = load_folder(build_sd15(tmp_path_factory.mktemp("old-diffusers") / "tiny-sd15", in_channels=9))
    return Model(pipe, snapshot(pipe), _live(pipe))


def assert_is_base(model: Model) -> None:
    now = snapshot(model.pipe)
    assert now.keys() == model.state.keys()
    different = [k for k, v in model.state.items() if now[k].dtype != v.dtype or not torch.equal(now[k], v)]
    assert not different, f"{len(different)} tensors differ from the base, e.g. {different[:5]}"
    outputs = _live(model.pipe)
    for key, value in model.outputs.items():
        assert torch.equal(outputs[key], value), f"{key}: the output differs from the base's"


def spec(code: str, path: Path) -> SubModelSpec:
    return SubModelSpec(model_code=code, model_type="LoRA", path=path, weight=1.0)


# --------------------------------------------------------------------------------------------- the layouts

Name = Callable[[str, str], str]  # (module path in the loaded model, "down" | "up") -> the file's key


def _attention(module: str) -> tuple[str, str]:
    """``(attention module, x)`` of a UNet projection: ``...attn1.to_out.0`` -> ``(...attn1, "out")``."""
    if module.endswith(".to_out.0"):
        return module.removesuffix(".to_out.0"), "out"
    attention, projection = module.rsplit(".", 1)
    return attention, projection.removeprefix("to_")


def _text_model(module: str) -> str:
    """CLIP's module path as files name it (transformers 5 has no ``text_model`` level in the loaded model)."""
    return "text_model." + module.removeprefix("text_model.")


def processor(prefix: str) -> Name:
    """(a): ``<prefix><attention>.processor.to_<x>_lora.<role>.weight``."""
    def name(module: str, role: str) -> str:
        attention, x = _attention(module)
        return f"{prefix}{attention}.processor.to_{x}_lora.{role}.weight"
    return name


def compatible(module: str, role: str) -> str:
    """(b): ``unet.<module>.lora.<role>.weight``."""
    return f"unet.{module}.lora.{role}.weight"


def linear_layer(prefix: str) -> Name:
    """The text encoder's ``<prefix>text_model.<module>.lora_linear_layer.<role>.weight``."""
    return lambda module, role: f"{prefix}{_text_model(module)}.lora_linear_layer.{role}.weight"


def te_processor(module: str, role: str) -> str:
    """The text encoder's oldest ``text_encoder.text_model.<layer>.self_attn.to_<x>_lora.<role>.weight``."""
    attention, projection = _text_model(module).rsplit(".", 1)
    return f"text_encoder.{attention}.to_{projection.removesuffix('_proj')}_lora.{role}.weight"


UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# LoRACompatibleLinear / LoRACompatibleConv: any layer (1x1 and 3x3 convolutions included)
UNET_COMPATIBLE = (*UNET_ATTENTION, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2",
                   "time_emb_proj")
TE_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


@dataclass(frozen=True)
class Part:
    """One component's layers in a file: the layer kinds it covers and how it names a layer's tensors."""

    component: str
    kinds: tuple[str, ...]
    name: Name


@dataclass(frozen=True)
class Row:
    id: str
    parts: tuple[Part, ...]
    #: the ``prefix`` diffusers' ``load_lora_adapter`` is given for the UNet's keys (None: keys with no prefix)
    unet_prefix: str | None = "unet"
    #: put before the text encoder's keys for diffusers' loader, which reads prefixed keys only
    te_prefix: str = ""
    dtype: torch.dtype = torch.float32


ROWS = [
    Row("a-processor-no-prefix", (Part("unet", UNET_ATTENTION, processor("")),), unet_prefix=None),
    Row("a-processor-no-prefix-fp16", (Part("unet", UNET_ATTENTION, processor("")),), unet_prefix=None,
        dtype=torch.float16),
    Row("a-processor-unet-prefix", (Part("unet", UNET_ATTENTION, processor("unet.")),)),
    Row("b-lora-compatible-unet-prefix", (Part("unet", UNET_COMPATIBLE, compatible),)),
    Row("te-lora-linear-layer", (Part("text_encoder", (*TE_ATTENTION, "mlp.fc1", "mlp.fc2"),
                                      linear_layer("text_encoder.")),)),
    Row("te-lora-linear-layer-no-prefix", (Part("text_encoder", TE_ATTENTION, linear_layer("")),),
        te_prefix="text_encoder."),
    Row("te-to-x-lora", (Part("text_encoder", TE_ATTENTION, te_processor),)),
    # what train_dreambooth_lora.py --train_text_encoder wrote: both components in one file
    Row("a-processor-and-te-to-x-lora", (Part("unet", UNET_ATTENTION, processor("unet.")),
                                         Part("text_encoder", TE_ATTENTION, te_processor))),
    Row("b-lora-compatible-and-te-lora-linear-layer", (Part("unet", UNET_COMPATIBLE, compatible),
                                                       Part("text_encoder", TE_ATTENTION,
                                                            linear_layer("text_encoder.")))),
]
SUFFIXES = (".safetensors", ".bin")


@dataclass
class Written:
    path: Path
    by_component: dict[str, dict[str, torch.Tensor]]   # component -> the file's keys and tensors
    layers: list[Layer]                                   # the same, as the hand oracle takes them


def write(model: Model, row: Row, folder: Path, suffix: str) -> Written:
    """The row's file: every layer of its kinds gets a random rank-4 LoRA (no alpha: scale 1), stored under the
    layout's key names; ``.safetensors`` (no metadata) or ``.bin`` (``torch.save`` of the state dict)."""
    by_component: dict[str, dict[str, torch.Tensor]] = {}
    layers = []
    for part in row.parts:
        unet_kinds, te_kinds = (part.kinds, ()) if part.component == "unet" else ((), part.kinds)
        for component, module, weight in targets(model.pipe, unet_kinds, te_kinds):
            tensors = lora_tensors(weight, (row.id, component, module), alpha=None, dtype=row.dtype, peft=True)
            keys = by_component.setdefault(component, {})
            keys[part.name(module, "down")] = tensors["lora_A.weight"]
            keys[part.name(module, "up")] = tensors["lora_B.weight"]
            layers.append(Layer(component, module, tensors))
    state_dict = {k: v for keys in by_component.values() for k, v in keys.items()}
    assert len(state_dict) == 2 * len(layers), "two layers got the same key"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pytorch_lora_weights{suffix}"
    if suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return Written(path, by_component, layers)


def diffusers_oracle(model: Model, row: Row, written: Written) -> dict[str, torch.nn.Module]:
    """Deep copies of the UNet and the text encoder with the file loaded by diffusers' own model-level loaders
    (peft adapters at scale 1, the layouts converted by diffusers)."""
    unet, te = copy.deepcopy(model.pipe.unet), copy.deepcopy(model.pipe.text_encoder)
    if "unet" in written.by_component:
        unet.load_lora_adapter(dict(written.by_component["unet"]), prefix=row.unet_prefix)
    if "text_encoder" in written.by_component:
        state_dict = {row.te_prefix + k: v for k, v in written.by_component["text_encoder"].items()}
        StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, network_alphas=None, text_encoder=te,
                                                            prefix="text_encoder")
    return {"unet": unet, "text_encoder": te}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_an_old_diffusers_lora_gives_diffusers_outputs_and_leaves_the_base_bit_for_bit(row, suffix, model,
                                                                                      tmp_path):
    written = write(model, row, tmp_path, suffix)
    want = probe(diffusers_oracle(model, row, written))
    by_hand = probe(oracle_components(model.pipe, [(LoraFile(written.path, written.layers), 1.0)]))
    ran = False
    with apply_submodels(model.pipe, [spec("old-diffusers", written.path)]):
        got = _live(model.pipe)
        ran = True
    assert ran
    assert_is_base(model)
    for key, base in model.outputs.items():
        if key in written.by_component:
            assert relative_error(want[key], base) > CHANGED, f"{key}: diffusers' loader did not change the output"
        else:
            assert torch.equal(got[key], base), f"{key}: changed by a file that has no layer for it"
    errors = {key: relative_error(got[key], value) for key, value in want.items()}
    assert all(e <= TOLERANCE for e in errors.values()), f"engine vs diffusers (max error / max value): {errors}"
    errors = {key: relative_error(by_hand[key], value) for key, value in want.items()}
    assert all(e <= TOLERANCE for e in errors.values()), f"hand oracle vs diffusers: {errors}"


# --------------------------------------------------------------------------------------------- refusals

def _valid(model: Model, folder: Path) -> SubModelSpec:
    """A valid old-layout file that goes first in a refused job: nothing of it may be applied either."""
    written = write(model, ROWS[0], folder / "valid", ".safetensors")
    return spec("valid", written.path)


def _with_extra(model: Model, folder: Path, extra: dict[str, torch.Tensor], suffix: str = ".safetensors") -> Path:
    """A row's file (layout (a) with ``unet.``) plus ``extra`` keys."""
    written = write(model, ROWS[2], folder, suffix)
    content = {k: v for keys in written.by_component.values() for k, v in keys.items()} | extra
    if suffix == ".safetensors":
        save_file(content, str(written.path))
    else:
        torch.save(content, written.path)
    return written.path


def _unknown_part(model: Model, folder: Path) -> Path:
    # a processor part that does not exist (to_zz_lora): the file is refused at read, naming the key
    return _with_extra(model, folder, {f"{ATTN}.processor.to_zz_lora.down.weight": torch.zeros(4, 32)}, ".bin")


def _unknown_module(model: Model, folder: Path) -> Path:
    # a layer in the (b) layout naming a block the model does not have
    name = "unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_k"
    return _with_extra(model, folder, {f"{name}.lora.down.weight": torch.zeros(4, 32),
                                       f"{name}.lora.up.weight": torch.zeros(32, 4)})


def _shape_mismatch(model: Model, folder: Path) -> Path:
    # a (a)-layout to_k_lora of the wrong width (48 inputs, the layer has 32)
    prefix = f"unet.{ATTN}.processor.to_k_lora"
    return _with_extra(model, folder, {f"{prefix}.down.weight": torch.zeros(4, 48),
                                       f"{prefix}.up.weight": torch.zeros(32, 4)})


REFUSALS = [
    ("unknown-part", _unknown_part, "to_zz_lora"),
    ("unknown-module", _unknown_module, "down_blocks.7"),
    ("shape-mismatch", _shape_mismatch, "attn1.to_k"),
]


@pytest.mark.parametrize(("name", "make", "names"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_an_old_diffusers_file_with_a_key_atelier_cannot_apply_is_refused_naming_it(name, make, names, model,
                                                                                     tmp_path):
    specs = [_valid(model, tmp_path), spec("refused", make(model, tmp_path / name))]
    ran = False
    with pytest.raises(SubmodelError) as caught:
        with apply_submodels(model.pipe, specs):
            ran = True
    assert not ran, "the job ran with a refused file"
    assert caught.value.model_code == "refused", str(caught.value)
    assert names in caught.value.message, caught.value.message
    assert_is_base(model)
