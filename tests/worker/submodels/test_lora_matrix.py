"""The LoRA conformance matrix: every submodel format that A1111 and ComfyUI load, built by code for the tiny
SD 1.5-layout and SDXL-layout models, applied by ``apply_submodels`` and compared with an independent oracle
(tests/support/lora_files.py: the deltas merged by hand into deep copies of the base modules) at the UNet's
and the text encoders' outputs; the base comes back bit for bit after every row. Formats Atelier does not
support, and files made for another model family, are refused whole.

Only the public API is used: ``apply_submodels`` with ``SubModelSpec``, and ``SubmodelError``."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from support.lora_files import (
    TE_KINDS,
    UNET_KINDS,
    Layer,
    LoraFile,
    components,
    dora_tensors,
    full_tensors,
    ldm_module_names,
    loha_tensors,
    lokr_tensors,
    lora_tensors,
    oracle_components,
    targets,
    tucker_tensors,
    write_kohya,
    write_peft,
)
from support.models import load_folder
from support.probes import probe, relative_error, snapshot
from support.tiny import build_sd15, build_sdxl
from workers.submodels.apply import apply_submodels
from workers.submodels.spec import SubmodelError, SubModelSpec

# engine vs oracle, as a fraction of the largest output value: the model is float32 on the CPU and a file's
# fp16/bf16 tensors are upcast the same way on both sides, so one tolerance serves every row
TOLERANCE = 1e-5
# a row's outputs must move at least this much (same measure) away from the base's where it patches
CHANGED = 1e-3

LINEAR_KINDS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj")
CONV_KINDS = ("proj_in", "conv1", "conv2")  # 1x1 and 3x3 convolutions on SD 1.5
NON_SQUARE_KINDS = ("ff.net.0.proj", "ff.net.2", "time_emb_proj")
NON_SQUARE_TE_KINDS = ("mlp.fc1", "mlp.fc2")


# --------------------------------------------------------------------------------------------- fixtures

@dataclass
class Model:
    family: str
    pipe: object
    state: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def _model(folder: Path, family: str) -> Model:
    pipe = load_folder(folder, family=family)
    return Model(family, pipe, snapshot(pipe), probe({c: getattr(pipe, c) for c in components(pipe)}))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Model]:
    root = tmp_path_factory.mktemp("lora-matrix-models")
    return {"sd15": _model(build_sd15(root / "tiny-sd15", in_channels=9), "sd15"),
            "sdxl": _model(build_sdxl(root / "tiny-sdxl"), "sdxl")}


def spec(code: str, path: Path, weight: float = 1.0) -> SubModelSpec:
    return SubModelSpec(model_code=code, model_type="LoRA", path=path, weight=weight)


def assert_is_base(model: Model) -> None:
    """Every parameter and buffer bit-identical to the base's, and the outputs too."""
    now = snapshot(model.pipe)
    assert now.keys() == model.state.keys()
    different = [k for k, v in model.state.items() if now[k].dtype != v.dtype or not torch.equal(now[k], v)]
    assert not different, f"{len(different)} tensors differ from the base, e.g. {different[:5]}"
    outputs = probe({c: getattr(model.pipe, c) for c in components(model.pipe)})
    for key, value in model.outputs.items():
        assert torch.equal(outputs[key], value), f"{key}: the output differs from the base's"


# --------------------------------------------------------------------------------------------- rows

Build = Callable[[Model, Path], list[tuple[LoraFile, float]]]


@dataclass(frozen=True)
class Row:
    id: str
    family: str
    build: Build


def _layers(model: Model, make, unet_kinds=(), te_kinds=(), seed: int = 0, **kw) -> list[Layer]:
    return [Layer(c, m, make(w, (seed, c, m), **kw)) for c, m, w in targets(model.pipe, unet_kinds, te_kinds)]


def kohya(make=lora_tensors, unet_kinds=UNET_KINDS, te_kinds=TE_KINDS, names: str = "diffusers",
          weight: float = 1.0, header: bool = True, **kw) -> Build:
    """One kohya-named file (diffusers or LDM UNet names) of ``make``'s layers on every module of the kinds."""
    def build(model: Model, folder: Path):
        layers = _layers(model, make, unet_kinds, te_kinds, **kw)
        ldm = ldm_module_names(model.pipe.unet) if names == "ldm" else None
        return [(write_kohya(folder / "lora.safetensors", layers, model.family, ldm, header=header), weight)]
    return build


def peft(alphas: dict[str, float] | None, unet_kinds=UNET_KINDS, te_kinds=TE_KINDS, weight: float = 1.0,
         make=lora_tensors, seed: int = 0) -> Build:
    """One diffusers/peft file; ``alphas``: each component's metadata ``lora_alpha`` (None: no metadata)."""
    def build(model: Model, folder: Path):
        layers = [Layer(c, m, make(w, (seed, c, m), alpha=alphas and alphas[c], peft=True), alphas and alphas[c])
                  for c, m, w in targets(model.pipe, unet_kinds, te_kinds)]
        return [(write_peft(folder / "pytorch_lora_weights.safetensors", layers, alphas is not None), weight)]
    return build


def together(*parts: tuple[Build, float]) -> Build:
    """Several files in one job, each at its weight, in this order."""
    def build(model: Model, folder: Path):
        jobs = []
        for i, (part, weight) in enumerate(parts):
            [(file, _)] = part(model, folder / f"part{i}")
            jobs.append((file, weight))
        return jobs
    return build


def _te_kind(kind: str) -> str:
    return kind.rsplit(".", 1)[-1]


ROWS = [
    # kohya LoRA / LoCon, diffusers names: one layer kind at a time, then all of them together
    *[Row(f"kohya-diffusers-unet-{kind}", "sd15", kohya(unet_kinds=[kind], te_kinds=())) for kind in UNET_KINDS],
    *[Row(f"kohya-diffusers-te-{_te_kind(kind)}", "sd15", kohya(unet_kinds=(), te_kinds=[kind])) for kind in TE_KINDS],
    Row("kohya-diffusers-all-alpha", "sd15", kohya()),
    Row("kohya-diffusers-all-no-alpha", "sd15", kohya(alpha=None)),
    Row("kohya-diffusers-all-fp16", "sd15", kohya(dtype=torch.float16)),
    Row("kohya-diffusers-all-bf16", "sd15", kohya(dtype=torch.bfloat16)),
    Row("kohya-diffusers-all-rank8-alpha16", "sd15", kohya(rank=8, alpha=16.0)),
    Row("kohya-diffusers-all-weight-0.5", "sd15", kohya(weight=0.5)),
    Row("kohya-diffusers-all-weight--1", "sd15", kohya(weight=-1.0)),
    # any subset of the text encoder's attention projections
    Row("kohya-te-q-only", "sd15", kohya(unet_kinds=(), te_kinds=["self_attn.q_proj"])),
    Row("kohya-te-k-only", "sd15", kohya(unet_kinds=(), te_kinds=["self_attn.k_proj"])),
    Row("kohya-te-q-and-v", "sd15", kohya(unet_kinds=(), te_kinds=["self_attn.q_proj", "self_attn.v_proj"])),
    # kohya, LDM names (input_blocks / middle_block / output_blocks, in_layers_2 / out_layers_3 / emb_layers_1 /
    # skip_connection)
    Row("kohya-ldm-sd15", "sd15", kohya(unet_kinds=(*UNET_KINDS, "conv_shortcut"), names="ldm")),
    Row("kohya-ldm-sd15-fp16-no-alpha-no-header", "sd15", kohya(names="ldm", dtype=torch.float16, alpha=None,
                                                                 header=False)),
    Row("kohya-ldm-sdxl", "sdxl", kohya(unet_kinds=(*UNET_KINDS, "conv_shortcut"), names="ldm")),
    Row("kohya-ldm-sdxl-bf16", "sdxl", kohya(names="ldm", dtype=torch.bfloat16, rank=8, alpha=4.0)),
    Row("kohya-sdxl-te1-te2-only", "sdxl", kohya(unet_kinds=(), te_kinds=TE_KINDS, names="ldm")),
    Row("kohya-diffusers-sdxl-no-header", "sdxl", kohya(header=False)),
    # LyCORIS LoHa
    Row("locon-tucker-conv3x3", "sd15", kohya(tucker_tensors, ("conv1", "conv2"), te_kinds=())),
    Row("full-diff", "sd15", kohya(full_tensors, (*LINEAR_KINDS, *CONV_KINDS), ("self_attn.q_proj", "mlp.fc1"))),
    Row("full-diff-sdxl-ldm-fp16", "sdxl", kohya(full_tensors, names="ldm", dtype=torch.float16)),
    Row("loha-linear", "sd15", kohya(loha_tensors, LINEAR_KINDS)),
    Row("loha-conv", "sd15", kohya(loha_tensors, CONV_KINDS, te_kinds=())),
    Row("loha-sdxl-ldm-fp16", "sdxl", kohya(loha_tensors, names="ldm", dtype=torch.float16)),
    # LyCORIS LoKr, each factor full or decomposed, linear and conv layers in each file (every file has an alpha:
    # with both factors full it must be ignored, scale 1)
    *[Row(f"lokr-w1-{w1}-w2-{w2}", "sd15", kohya(lokr_tensors, (*LINEAR_KINDS, *CONV_KINDS), w1=w1, w2=w2))
      for w1 in ("full", "decomposed") for w2 in ("full", "decomposed")],
    # convolutions in the flattened layout (sd-scripts' LyCORIS): w1 (a, b), w2 (c, e) with b * e = in * kh * kw
    # and b not dividing in, so no per-kernel reading exists; text encoder and linear UNet layers in the same file
    *[Row(f"lokr-flattened-conv-w1-{w1}-w2-{w2}", "sd15",
          kohya(lokr_tensors, (*LINEAR_KINDS, *CONV_KINDS), w1=w1, w2=w2, layout="flattened"))
      for w1 in ("full", "decomposed") for w2 in ("full", "decomposed")],
    Row("lokr-flattened-conv-no-alpha-fp16", "sd15", kohya(lokr_tensors, CONV_KINDS, te_kinds=(), w2="decomposed",
                                                           layout="flattened", alpha=None, dtype=torch.float16)),
    Row("lokr-flattened-sdxl-ldm", "sdxl", kohya(lokr_tensors, names="ldm", w2="decomposed", layout="flattened")),
    Row("lokr-decomposed-no-alpha", "sd15", kohya(lokr_tensors, (*LINEAR_KINDS, *CONV_KINDS), w1="full",
                                                  w2="decomposed", alpha=None)),
    Row("lokr-sdxl-ldm", "sdxl", kohya(lokr_tensors, names="ldm", w1="full", w2="decomposed")),
    # DoRA
    Row("dora-linear-out", "sd15", kohya(dora_tensors, LINEAR_KINDS, orientation="out")),
    Row("dora-linear-in", "sd15", kohya(dora_tensors, NON_SQUARE_KINDS, NON_SQUARE_TE_KINDS, orientation="in")),
    # (1, in) magnitudes on square layers (out == in): the shape, not the element count, gives the orientation,
    # as ComfyUI decides it (dora_scale.shape[0] == out) and LyCORIS writes it (wd_on_out=False)
    Row("dora-linear-in-square", "sd15", kohya(dora_tensors, ("to_q", "to_out.0"), ("self_attn.q_proj",),
                                               orientation="in")),
    Row("dora-conv-out", "sd15", kohya(dora_tensors, CONV_KINDS, (), orientation="out")),
    Row("dora-conv-in", "sd15", kohya(dora_tensors, ("conv1",), (), orientation="in")),
    Row("dora-linear-out-weight-0.5", "sd15", kohya(dora_tensors, LINEAR_KINDS, weight=0.5, orientation="out")),
    Row("dora-sdxl-ldm", "sdxl", kohya(dora_tensors, names="ldm", orientation="out")),
    Row("peft-dora", "sd15", peft({"unet": 8.0, "text_encoder": 2.0}, LINEAR_KINDS, make=dora_tensors)),
    # diffusers / peft
    Row("peft-metadata-alpha", "sd15", peft({"unet": 8.0, "text_encoder": 2.0})),
    Row("peft-no-metadata", "sd15", peft(None)),
    Row("peft-sdxl", "sdxl", peft({"unet": 2.0, "text_encoder": 16.0, "text_encoder_2": 1.0})),
    # keys win over metadata: a file with kohya's single text encoder whose metadata wrongly says SDXL applies
    Row("kohya-sd15-keys-sdxl-metadata", "sd15", lambda model, folder: [(write_kohya(
        folder / "wrong-metadata.safetensors", _layers(model, lora_tensors, UNET_KINDS, TE_KINDS), "sd15",
        metadata={"ss_base_model_version": "sdxl_base_v1-0"}), 1.0)]),
    # several LoRAs in one job
    Row("two-loras-kohya-and-peft", "sd15", together((kohya(seed=1), 0.7), (peft({"unet": 8.0, "text_encoder": 2.0},
                                                                                seed=2), 0.5))),
    Row("lora-then-dora-same-layers", "sd15", together((kohya(unet_kinds=LINEAR_KINDS, seed=3), 0.8),
                                                       (kohya(dora_tensors, LINEAR_KINDS, seed=4), 0.6))),
    Row("three-formats", "sdxl", together((kohya(loha_tensors, names="ldm", seed=5), 0.5),
                                          (kohya(lokr_tensors, names="ldm", w2="decomposed", seed=6), -0.5),
                                          (kohya(seed=7), 1.5))),
]


def _touched(jobs: list[tuple[LoraFile, float]]) -> set[str]:
    return {layer.component for file, _ in jobs for layer in file.layers}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_a_format_gives_the_oracles_outputs_and_leaves_the_base_bit_for_bit(row, models, tmp_path):
    model = models[row.family]
    jobs = row.build(model, tmp_path)
    expected = probe(oracle_components(model.pipe, jobs))
    specs = [spec(f"row-{i}", file.path, weight) for i, (file, weight) in enumerate(jobs)]
    ran = False
    with apply_submodels(model.pipe, specs):
        got = probe({c: getattr(model.pipe, c) for c in components(model.pipe)})
        ran = True
    assert ran
    assert_is_base(model)
    errors = {key: relative_error(got[key], want) for key, want in expected.items()}
    assert all(e <= TOLERANCE for e in errors.values()), f"engine vs oracle (max error / max value): {errors}"
    touched = _touched(jobs)
    for key, base in model.outputs.items():
        if key.split(".")[0] in touched:
            assert relative_error(expected[key], base) > CHANGED, f"{key}: the row does not change the output"


# --------------------------------------------------------------------------------------------- refusals

def _valid(model: Model, folder: Path) -> SubModelSpec:
    """A plain, valid kohya LoRA that goes first in a refused job: nothing of it may be applied either."""
    [(file, _)] = kohya(unet_kinds=("to_q",), te_kinds=("self_attn.q_proj",), seed=9)(model, folder / "valid")
    return spec("valid", file.path)


def _oft(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    model = models["sd15"]
    tensors = {}
    for _, m, w in targets(model.pipe, ("to_q", "to_v")):
        g = torch.Generator().manual_seed(len(m))
        blocks = 4
        size = w.shape[0] // blocks
        name = "lora_unet_" + m.replace(".", "_")
        tensors[f"{name}.oft_blocks"] = torch.randn(blocks, size, size, generator=g) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    file = write_kohya(folder / "oft.safetensors", [], "sd15", extra=tensors)
    return "sd15", file.path


def _other_family(made_for: str, applied_to: str, header: bool):
    """A kohya LoRA (LDM names, all layer kinds) of the other family's tiny model; without ``header`` only its
    keys (``lora_te_`` vs ``lora_te1_``/``lora_te2_``, the UNet's module names and shapes) tell the family."""
    def make(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
        [(file, _)] = kohya(names="ldm", header=header)(models[made_for], folder / made_for)
        return applied_to, file.path
    return make


def _shape_mismatch(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    model = models["sd15"]
    layers = _layers(model, lora_tensors, ("to_q", "to_k"), ("self_attn.q_proj",))
    # proj_in is a 1x1 convolution on SD 1.5: a 3x3 LoCon delta does not fit it
    [(c, m, w)] = [t for t in targets(model.pipe, ("proj_in",)) if t[1].startswith("down_blocks.0.attentions.0.")]
    g = torch.Generator().manual_seed(3)
    layers.append(Layer(c, m, {"lora_down.weight": torch.randn(4, w.shape[1], 3, 3, generator=g) * 0.1,
                               "lora_up.weight": torch.randn(w.shape[0], 4, 1, 1, generator=g) * 0.1,
                               "alpha": torch.tensor(4.0)}))
    layers += _layers(model, lora_tensors, ("conv1",), seed=1)
    return "sd15", write_kohya(folder / "shape.safetensors", layers, "sd15").path


def _unknown_module(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    model = models["sd15"]
    layers = _layers(model, lora_tensors, ("to_q", "to_k"), ("self_attn.q_proj",))
    g = torch.Generator().manual_seed(4)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_zz"
    extra = {f"{name}.lora_down.weight": torch.randn(4, 32, generator=g) * 0.1,
             f"{name}.lora_up.weight": torch.randn(32, 4, generator=g) * 0.1, f"{name}.alpha": torch.tensor(4.0)}
    return "sd15", write_kohya(folder / "unknown.safetensors", layers, "sd15", extra=extra).path


def _lokr_unknown_factorisation(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    """A LoKr layer on a 3x3 convolution whose second factor is 3-D: no layout LyCORIS writes (nor A1111 reads)."""
    model = models["sd15"]
    [(c, m, w)] = [t for t in targets(model.pipe, ("conv1",)) if t[1].startswith("down_blocks.0.resnets.0.")]
    g = torch.Generator().manual_seed(5)
    out_f, in_f = w.shape[:2]
    layers = [Layer(c, m, {"lokr_w1": torch.randn(2, 2, generator=g), "alpha": torch.tensor(1.0),
                           "lokr_w2": torch.randn(out_f // 2, in_f // 2, 9, generator=g)})]
    return "sd15", write_kohya(folder / "lokr3d.safetensors", layers, "sd15").path


def _inconsistent_ranks(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    """A LoRA layer whose down has rank 5 and up rank 4: the file's own tensors do not multiply."""
    model = models["sd15"]
    [(c, m, w)] = [t for t in targets(model.pipe, ("to_q",))
                   if t[1].startswith("down_blocks.0.attentions.0.transformer_blocks.0.attn1.")]
    g = torch.Generator().manual_seed(6)
    layers = [Layer(c, m, {"lora_down.weight": torch.randn(5, w.shape[1], generator=g),
                           "lora_up.weight": torch.randn(w.shape[0], 4, generator=g), "alpha": torch.tensor(4.0)})]
    return "sd15", write_kohya(folder / "ranks.safetensors", layers, "sd15").path


def _unet_only(made_for: str, applied_to: str, metadata: dict[str, str]):
    """A UNet-only kohya LoRA (diffusers names: its keys say no family) whose metadata names the family in another
    trainer's spelling."""
    def make(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
        model = models[made_for]
        layers = _layers(model, lora_tensors, ("to_q", "to_k"))
        return applied_to, write_kohya(folder / "unet-only.safetensors", layers, made_for, metadata=metadata).path
    return make


def _flux_keys_sd15_metadata(models: dict[str, Model], folder: Path) -> tuple[str, Path]:
    """FLUX layer names (kohya's ``double_blocks`` / ``single_blocks``) in a file whose metadata wrongly says SD 1.5."""
    g = torch.Generator().manual_seed(7)
    extra = {}
    for name in ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"):
        extra |= {f"{name}.lora_down.weight": torch.randn(4, 32, generator=g),
                  f"{name}.lora_up.weight": torch.randn(96, 4, generator=g), f"{name}.alpha": torch.tensor(4.0)}
    return "sd15", write_kohya(folder / "flux.safetensors", [], "sd15", extra=extra,
                               metadata={"ss_base_model_version": "sd_1.5"}).path


def _mentions(*patterns: str, never: str | None = None) -> Callable[[str], bool]:
    return lambda message: (all(re.search(p, message, re.IGNORECASE) for p in patterns)
                            and (never is None or not re.search(never, message, re.IGNORECASE)))


REFUSALS = [
    ("oft", _oft, _mentions(r"\bOFT\b")),
    ("sdxl-lora-on-sd15", _other_family("sdxl", "sd15", True), _mentions(r"SDXL")),
    ("sdxl-lora-on-sd15-no-header", _other_family("sdxl", "sd15", False), _mentions(r"SDXL")),
    ("sd15-lora-on-sdxl", _other_family("sd15", "sdxl", True), _mentions(r"\bSD[ -]?1")),
    ("sd15-lora-on-sdxl-no-header", _other_family("sd15", "sdxl", False), _mentions(r"\bSD[ -]?1")),
    ("3x3-delta-on-1x1-conv", _shape_mismatch, _mentions(r"proj_in", r"another base model")),
    # a layout Atelier does not know, or a file whose tensors do not multiply: named, the base model not blamed
    ("lokr-unknown-factorisation", _lokr_unknown_factorisation,
     _mentions(r"conv1", r"no factorisation", r"w1 2x2", r"w2 \d+x\d+x9", never="another base model")),
    ("lora-ranks-disagree", _inconsistent_ranks,
     _mentions(r"to_q", r"down 5x\d+", r"up \d+x4", r"do not make one weight", never="another base model")),
    # the family from other trainers' metadata spellings when the keys say none; key evidence first
    *[(f"sd15-unet-only-on-sdxl-metadata-{said}", _unet_only("sd15", "sdxl", {field: said}),
       _mentions(r"made for SD 1\.x")) for field, said in (("ss_base_model_version", "sd_1.5"),
                                                            ("ss_base_model_version", "SD1.5"),
                                                            ("modelspec.architecture", "stable-diffusion-v1/lora"))],
    *[(f"sdxl-unet-only-on-sd15-metadata-{said}", _unet_only("sdxl", "sd15", {field: said}),
       _mentions(r"made for SDXL"))
      for field, said in (("ss_base_model_version", "sdxl_base_v1-0"), ("ss_base_model_version", "SDXL 1.0"),
                          ("modelspec.architecture", "stable-diffusion-xl-v1-base/lora"))],
    ("flux-keys-with-sd15-metadata", _flux_keys_sd15_metadata, _mentions(r"made for FLUX")),
    ("one-unknown-module", _unknown_module, _mentions(r"to_zz")),
]


@pytest.mark.parametrize(("name", "make", "says"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_file_atelier_cannot_apply_whole_is_refused_and_nothing_is_applied(name, make, says, models, tmp_path):
    family, path = make(models, tmp_path)
    model = models[family]
    specs = [_valid(model, tmp_path), spec("refused", path)]
    ran = False
    with pytest.raises(SubmodelError) as caught:
        with apply_submodels(model.pipe, specs):
            ran = True
    assert not ran, "the job ran with a refused file"
    error = caught.value
    assert error.model_code == "refused", str(error)
    assert says(error.message), f"the message does not say what is wrong: {error.message!r}"
    assert_is_base(model)
