"""workers/models/loading.py on tiny random-weight models built here, on the CPU: diffusers folders (9-channel
inpainting, 4-channel base, SDXL with two text encoders), a single-file checkpoint in the original
(LDM/CompVis) key layout with its config folder, external VAEs, schedulers, and the errors a deployment
meets (missing files, corrupt or truncated checkpoints, wrong family, mismatched config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from app.contract.registry import ModelEntry, ModelSource, Registry
from workers.models.cache import ModelLoadError
from workers.models.device import resolve_dtype
from workers.models.loading import (
    estimate_bytes,
    load_main_pipeline,
    load_vae,
    read_safetensors_header,
)
from workers.models.sizes import measure_bytes

SIZE = 64
STEPS = 2


# --- tiny models, built here ---------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def make_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges (one token per character), loaded from files the way
    checkpoints are (the constructor with file paths silently makes a 2-token tokenizer)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=77, pad_token="<|endoftext|>")
    assert len(tok) == len(tokens)
    return tok


def _text_config(tok: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def make_vae() -> AutoencoderKL:
    """4 levels (scale factor 8) like SD's; channels change between levels (shortcut convs) and the mid
    block has attention, so the single-file key mapping is exercised in full."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=SIZE)


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def build_sd15(folder: Path, in_channels: int, seed: int = 0) -> Path:
    """A tiny SD 1.5-shaped diffusers folder: SD 1.5's block layout (cross-attention blocks first, a plain
    block last) with 3 levels and 2 layers per block, a 9-channel (inpainting) or 4-channel (base) UNet."""
    torch.manual_seed(seed)
    tok = make_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8)
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    pipe = cls(vae=make_vae(), text_encoder=CLIPTextModel(_text_config(tok)), tokenizer=tok, unet=unet,
               scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL inpainting folder: two CLIP text encoders (the second with a projection), a UNet with
    SDXL's text-time conditioning (cross-attention dim = 32 + 32, pooled 32 + 6 x 8 time ids)."""
    torch.manual_seed(seed)
    tok = make_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLInpaintPipeline(
        vae=make_vae(), text_encoder=CLIPTextModel(_text_config(tok)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, projection_dim=32)), tokenizer=tok,
        tokenizer_2=tok, unet=unet, scheduler=scheduler, requires_aesthetics_score=False)
    pipe.save_pretrained(folder)
    return folder


# --- diffusers -> original (LDM/CompVis) single-file layout -----------------------------------------
# The inverse of diffusers' convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint /
# convert_ldm_clip_checkpoint (diffusers/loaders/single_file_utils.py), written for any number of levels and
# layers per block, the way diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py does it for
# SD 1.5's fixed shape.

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for diffusers_name, ldm_name in table.items():
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name):]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    lpb, levels = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}
    for b in range(levels):
        for j in range(lpb):
            prefixes[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{b * (lpb + 1) + j + 1}.0."
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{b * (lpb + 1) + j + 1}.1."
        for j in range(lpb + 1):
            prefixes[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{b * (lpb + 1) + j}.0."
            prefixes[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{b * (lpb + 1) + j}.1."
        if b < levels - 1:
            prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{(b + 1) * (lpb + 1)}.0.op."
            slot = 2 if "CrossAttn" in config["up_block_types"][b] else 1
            prefixes[f"up_blocks.{b}.upsamplers.0."] = f"output_blocks.{b * (lpb + 1) + lpb}.{slot}."
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":
        fixed.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        prefix = next(p for p in prefixes if key.startswith(p))
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = _rename_first(rest, _RESNET_TO_LDM)
        out[prefixes[prefix] + rest] = value
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    prefixes = {}
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        p = next(p for p in prefixes if key.startswith(p))
        rest = key[len(p):]
        if ".attentions." in p:
            rest = _rename_first(rest, _VAE_ATTN_TO_LDM)
            if value.ndim == 2:  # the original attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        elif ".resnets." in p:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        out[prefixes[p] + rest] = value
    return {prefix + k: v for k, v in out.items()}


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items()}


def save_single_file(folder: Path, file: Path, config_dir: Path) -> tuple[Path, Path]:
    """Write the diffusers SD 1.x folder ``folder`` as one original-layout checkpoint ``file`` (.safetensors or
    .ckpt) plus ``config_dir``: the folder without its weights (what ``from_single_file(config=)`` reads)."""
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    checkpoint = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
                  **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
                  **clip_to_ldm(pipe.text_encoder.state_dict())}
    checkpoint = {k: v.detach().clone().contiguous() for k, v in checkpoint.items()}
    if file.suffix == ".safetensors":
        save_file(checkpoint, file)
    else:
        torch.save({"state_dict": checkpoint}, file)
    if not config_dir.exists():
        shutil.copytree(folder, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return file, config_dir


# --- helpers ------------------------------------------------------------------------------------------


def entry(source: dict, family: str = "sd15", code: str = "m", **defaults) -> ModelEntry:
    return ModelEntry.model_validate({"ModelCode": code, "Name": code, "ModelType": "Main", "family": family,
                                      "source": source, "defaults": defaults})


def load(e: ModelEntry, base: Path, demo_dir: Path | None = None):
    registry = Registry([e], base)
    return load_main_pipeline(registry.get(e.model_code), registry, "cpu", torch.float32, demo_dir or base)


def inpaint(pipe, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = pipe(prompt="a red dress", negative_prompt="blurry", image=image, mask_image=mask, height=SIZE,
               width=SIZE, strength=1.0, num_inference_steps=STEPS, guidance_scale=5.0, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images[0]


def assert_same_weights(a, b) -> None:
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loading")
    build_sd15(root / "sd15-inpaint", in_channels=9)
    build_sd15(root / "sd15-base", in_channels=4, seed=1)
    return root


@pytest.fixture(scope="module")
def single_file(models) -> tuple[Path, Path]:
    return save_single_file(models / "sd15-inpaint", models / "tiny-inpaint.safetensors", models / "inpaint-config")


@pytest.fixture(scope="module")
def inpaint_pipe(models):
    return load(entry({"path": "sd15-inpaint"}), models)


# --- folders ---------------------------------------------------------------------------------------------


def test_a_9_channel_inpainting_folder_loads_and_inpaints(inpaint_pipe):
    assert type(inpaint_pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert inpaint_pipe.unet.config.in_channels == 9
    assert inpaint_pipe.unet.dtype == torch.float32 and inpaint_pipe.device.type == "cpu"
    image = inpaint(inpaint_pipe)
    assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()


def test_a_4_channel_base_folder_loads_as_an_inpainting_pipeline(models):
    pipe = load(entry({"path": str(models / "sd15-base")}), Path("/nonexistent"))
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 4
    assert inpaint(pipe).shape == (SIZE, SIZE, 3)


def test_the_progress_bar_is_disabled(inpaint_pipe):
    assert inpaint_pipe._progress_bar_config == {"disable": True}


def test_the_configured_scheduler_replaces_the_checkpoints_keeping_its_settings(models):
    pipe = load(entry({"path": "sd15-inpaint"}, scheduler="DPMSolverMultistepScheduler"), models)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.beta_end == 0.012 and pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert inpaint(pipe).shape == (SIZE, SIZE, 3)
    assert type(load(entry({"path": "sd15-inpaint"}), models).scheduler).__name__ == "DDIMScheduler"


def test_a_tiny_sdxl_inpainting_folder_loads_by_family_and_inpaints(tmp_path):
    build_sdxl(tmp_path / "sdxl")
    pipe = load(entry({"path": "sdxl"}, family="sdxl", scheduler="EulerAncestralDiscreteScheduler"), tmp_path)
    assert type(pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    assert pipe.text_encoder_2 is not None and type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert inpaint(pipe).shape == (SIZE, SIZE, 3)
    with pytest.raises(ModelLoadError, match=r"model m could not be loaded: registry says family sd15 .*"
                                             r"StableDiffusionXLInpaintPipeline"):
        load(entry({"path": "sdxl"}, family="sd15"), tmp_path)


def test_an_sd15_folder_labelled_sdxl_is_refused(models):
    with pytest.raises(ModelLoadError, match=r"registry says family sdxl but model folder .* \(sd15\)"):
        load(entry({"path": "sd15-inpaint"}, family="sdxl"), models)


def test_the_demo_source_builds_and_loads_the_demo_model(tmp_path):
    pipe = load(entry({"demo": "sd15"}), tmp_path, demo_dir=tmp_path / "demos")
    assert (tmp_path / "demos" / "demo-sd15" / "model_index.json").is_file()
    assert pipe.unet.config.in_channels == 4


# --- single-file checkpoints -----------------------------------------------------------------------------------


def test_the_single_file_is_in_the_original_layout(single_file):
    keys = set(read_safetensors_header(single_file[0]))
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.", "down_blocks.")) for k in keys)
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.output_blocks.2.1.conv.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
            "first_stage_model.decoder.up.3.upsample.conv.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"} <= keys
    assert not list(single_file[1].rglob("*.safetensors"))  # the config folder holds no weights


def test_a_single_file_checkpoint_loads_and_equals_its_folder(single_file, models, inpaint_pipe):
    file, config = single_file
    pipe = load(entry({"file": file.name, "config": config.name}), models)
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert_same_weights(pipe, inpaint_pipe)
    np.testing.assert_array_equal(inpaint(pipe), inpaint(inpaint_pipe))


def test_a_ckpt_single_file_loads_too(models, tmp_path):
    file, config = save_single_file(models / "sd15-base", tmp_path / "tiny-base.ckpt", tmp_path / "base-config")
    pipe = load(entry({"file": str(file), "config": str(config)}), tmp_path)
    folder_pipe = load(entry({"path": str(models / "sd15-base")}), tmp_path)
    assert_same_weights(pipe, folder_pipe)


def test_a_single_file_with_another_channel_count_than_its_config_is_refused(single_file, models, tmp_path):
    _, base_config = save_single_file(models / "sd15-base", tmp_path / "x.safetensors", tmp_path / "base-config")
    with pytest.raises(ModelLoadError, match=r"9-channel UNet but its config folder .* describes 4 channels"):
        load(entry({"file": str(single_file[0]), "config": str(base_config)}), tmp_path)


def test_a_single_file_without_config_never_downloads(single_file, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(ModelLoadError, match=r"no `config:` folder and the configs of .*stable-diffusion-inpainting"
                                             r" .* not in the local Hugging Face cache"):
        load(entry({"file": str(single_file[0])}), tmp_path)


# --- errors ------------------------------------------------------------------------------------------------------


def test_a_corrupt_safetensors_file_gives_a_clear_error(models, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(ModelLoadError, match=r"model m could not be loaded: corrupt checkpoint: bad.safetensors"
                                             r" is not a safetensors file") as info:
        load(entry({"file": "bad.safetensors", "config": str(models / "sd15-inpaint")}), tmp_path)
    assert info.value.model_code == "m"


def test_a_truncated_safetensors_file_gives_a_clear_error(single_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(single_file[0].read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match="cut.safetensors is truncated"):
        load(entry({"file": str(cut), "config": str(single_file[1])}), tmp_path)


def test_corrupt_weights_inside_a_folder_give_a_model_load_error(models, tmp_path):
    folder = shutil.copytree(models / "sd15-base", tmp_path / "broken")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage" * 100)
    with pytest.raises(ModelLoadError, match=r"model m could not be loaded: path=.*broken: \w+"):
        load(entry({"path": "broken"}), tmp_path)


@pytest.mark.parametrize(("source", "message"), [
    ({"path": "nowhere"}, r"model folder .*nowhere does not exist"),
    ({"file": "nowhere.safetensors", "config": "cfg"}, r"checkpoint file .*nowhere.safetensors does not exist"),
])
def test_missing_files_give_clear_errors(tmp_path, source, message):
    with pytest.raises(ModelLoadError, match=message):
        load(entry(source), tmp_path)


def test_a_folder_that_is_not_a_diffusers_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is not a diffusers folder"):
        load(entry({"path": "empty"}), tmp_path)


# --- external VAEs ---------------------------------------------------------------------------------------------


def test_external_vaes_load_from_folders_pipeline_folders_and_single_files(models, tmp_path):
    torch.manual_seed(5)
    kl = make_vae()
    kl.save_pretrained(tmp_path / "kl")
    tiny = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    tiny.save_pretrained(tmp_path / "tiny")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(kl.state_dict(), kl.config, prefix="").items()},
              tmp_path / "kl.safetensors")

    def vae(source: dict):
        return load_vae(ModelSource.model_validate(source), "cpu", torch.float32, family="sd15")

    from_folder = vae({"path": str(tmp_path / "kl")})
    assert type(from_folder) is AutoencoderKL
    assert type(vae({"path": str(tmp_path / "tiny")})) is AutoencoderTiny
    from_pipeline = vae({"path": str(models / "sd15-inpaint")})  # its vae/ subfolder
    assert from_pipeline.config.block_out_channels == [8, 16, 16, 16]
    from_file = vae({"file": str(tmp_path / "kl.safetensors"), "config": str(tmp_path / "kl")})
    for key, value in kl.state_dict().items():
        assert torch.equal(from_file.state_dict()[key], value), key
        assert torch.equal(from_folder.state_dict()[key], value), key
    with pytest.raises(ModelLoadError, match=r"vae:sd15 could not be loaded: .*neither a VAE folder"):
        vae({"path": str(tmp_path)})


# --- sizes and dtypes ------------------------------------------------------------------------------------------


def test_size_estimates_match_the_loaded_size(models, single_file, inpaint_pipe):
    measured = measure_bytes(inpaint_pipe)
    for source in ({"path": str(models / "sd15-inpaint")}, {"file": str(single_file[0])}):
        estimate = estimate_bytes(ModelSource.model_validate(source), torch.float32)
        assert abs(estimate - measured) / measured < 0.01, (source, estimate, measured)
    half = estimate_bytes(ModelSource(path=models / "sd15-inpaint"), torch.float16)
    assert abs(half - measured / 2) / measured < 0.01


def test_dtype_resolution():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bfloat16", "cuda:1") == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("fp8", "cuda")
