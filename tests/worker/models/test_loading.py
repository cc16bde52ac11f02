"""workers/models/loading.py on tiny random-weight models built here, on the CPU: diffusers folders (9-channel
inpainting, 4-channel base, SDXL with two text encoders), a single-file checkpoint in the original
(LDM/CompVis) key layout with its config folder, external VAEs, schedulers, and the errors a deployment
meets (missing files, corrupt or truncated checkpoints, wrong family, mismatched config)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
)
from PIL import Image
from safetensors.torch import save_file

from app.contract.registry import ModelEntry, ModelSource, Registry
from support.ldm import save_single_file, vae_to_ldm
from support.tiny import SIZE, build_sd15, build_sdxl, make_vae
from workers.models.cache import ModelLoadError
from workers.models.device import resolve_dtype
from workers.models.loading import (
    estimate_bytes,
    load_main_pipeline,
    load_vae,
    read_safetensors_header,
)
from workers.models.sizes import measure_bytes

STEPS = 2


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


def test_a_hub_source_is_loaded_with_its_revision_and_variant(tmp_path, monkeypatch):
    """The one source kind a worker downloads itself (nothing is reached here: from_pretrained is a spy)."""
    import diffusers

    seen: dict = {}

    def spy(cls, repo, **kwargs):
        seen.update(kwargs, repo=repo)
        raise RuntimeError("the spy stops here")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config",
                        classmethod(lambda cls, repo, **kw: {"_class_name": "StableDiffusionInpaintPipeline"}))
    monkeypatch.setattr(diffusers.StableDiffusionInpaintPipeline, "from_pretrained", classmethod(spy))
    with pytest.raises(ModelLoadError, match=r"hub=o/r \(revision=v1\) \(variant=fp16\): RuntimeError: the spy"):
        load(entry({"hub": "o/r", "revision": "v1", "variant": "fp16"}), tmp_path)
    assert (seen["repo"], seen["revision"], seen["variant"], seen["local_files_only"]) == ("o/r", "v1", "fp16", False)
    assert seen["safety_checker"] is None  # a hub checkpoint's own checker is not loaded either


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
