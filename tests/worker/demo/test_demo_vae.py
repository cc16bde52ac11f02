"""The demo VAE: an ``AutoencoderTiny`` whose weights are set by construction so that it reconstructs images
(8x8 blocks), deterministic, tintable, and usable as an external VAE folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from support.models import load_folder
from workers.demo.model import (
    DEMO_VAE_SCALING_FACTOR,
    MARKER_FILE,
    _seed_parameters,
    build_demo_vae,
    ensure_demo_model,
    ensure_demo_model_sd15,
    ensure_demo_vae,
)
from workers.inference.compose import Composition
from workers.inference.inpaint import Sampling, run_inpaint

#: Reconstruction quality the demo VAE must reach on smooth images, compared at 8x8 block resolution.
BLOCK_PSNR_DB = 40.0


def smooth_images(height: int = 64, width: int = 96) -> dict[str, np.ndarray]:
    """Float RGB images in [0, 1]: gradients, flat blocks (not aligned to the 8x8 grid), a soft wave."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    blocks = np.zeros((height, width, 3))
    blocks[:] = (0.9, 0.2, 0.1)
    blocks[13:45, 21:70] = (0.1, 0.6, 0.95)
    blocks[30:60, 50:90] = (0.5, 0.5, 0.5)
    return {
        "gradient": np.stack([xx, yy, 1 - xx * yy], axis=-1),
        "blocks": blocks,
        "wave": np.stack([0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy), 0.3 + 0.5 * yy, 0.6 - 0.3 * xx], axis=-1),
        "black_white": np.stack([np.where(xx < 0.5, 0.0, 1.0)] * 3, axis=-1),  # the ends of the range
    }


def roundtrip(vae: AutoencoderTiny, image: np.ndarray) -> np.ndarray:
    """decode(encode(x)) in [0, 1], as a pipeline sees it (x in [-1, 1], output clipped)."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        out = vae.decode(vae.encode(x).latents).sample
    return ((out[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)


def block_means(image: np.ndarray, size: int = 8) -> np.ndarray:
    height, width, channels = image.shape
    return image.reshape(height // size, size, width // size, size, channels).mean(axis=(1, 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


@pytest.fixture(scope="module")
def vae() -> AutoencoderTiny:
    return build_demo_vae(0)


def test_the_vae_has_the_stable_diffusion_shape(vae):
    assert isinstance(vae, AutoencoderTiny)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # the pipelines' vae_scale_factor
    assert vae.config.latent_channels == 4
    assert vae.config.scaling_factor == DEMO_VAE_SCALING_FACTOR
    latents = vae.encode(torch.zeros(1, 3, 64, 96)).latents
    assert latents.shape == (1, 4, 8, 12)


@pytest.mark.parametrize("name", list(smooth_images()))
def test_the_vae_reconstructs_smooth_images(vae, name):
    image = smooth_images()[name]
    out = roundtrip(vae, image)
    assert psnr(block_means(out), block_means(image)) > BLOCK_PSNR_DB
    assert np.abs(block_means(out) - block_means(image)).max() < 1 / 255  # under one grey level per block


def test_the_vae_reconstructs_full_resolution_gradients_and_grid_aligned_blocks(vae):
    gradient = smooth_images()["gradient"]
    assert psnr(roundtrip(vae, gradient), gradient) > 25  # within a block a gradient is flattened
    aligned = np.zeros((64, 96, 3))
    aligned[8:40, 16:72] = (0.2, 0.7, 0.4)
    assert psnr(roundtrip(vae, aligned), aligned) > 50


def test_a_random_vae_of_the_same_shape_fails_the_threshold(vae):
    random_vae = AutoencoderTiny.from_config(vae.config)
    _seed_parameters(random_vae, 0)
    for image in smooth_images().values():
        assert psnr(block_means(roundtrip(random_vae, image)), block_means(image)) < 20


def test_the_latents_are_small_and_hold_the_colours(vae):
    """Raw latents are block means of (R, G, B, luminance) - 0.5: inside the decoder's near-linear range."""
    image = smooth_images()["blocks"]
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1
    latents = vae.encode(x).latents[0].detach().numpy()
    assert np.abs(latents).max() <= 0.5 + 1e-6
    expected = block_means(image) - 0.5
    np.testing.assert_allclose(latents[:3].transpose(1, 2, 0), expected, atol=1e-5)
    luminance = block_means(image) @ np.array([0.299, 0.587, 0.114]) - 0.5
    np.testing.assert_allclose(latents[3], luminance, atol=1e-5)


def test_the_build_is_deterministic_and_the_seed_does_not_change_the_function():
    def tensors(model):
        return {name: value.clone() for name, value in model.state_dict().items()}

    first, again, other = build_demo_vae(0), build_demo_vae(0), build_demo_vae(1)
    assert all(torch.equal(a, b) for a, b in zip(tensors(first).values(), tensors(again).values()))
    assert any(not torch.equal(a, b) for a, b in zip(tensors(first).values(), tensors(other).values()))
    image = smooth_images()["wave"]
    np.testing.assert_array_equal(roundtrip(first, image), roundtrip(other, image))


def test_the_tint_scales_the_decoded_colours(vae):
    image = smooth_images()["wave"]
    tinted = roundtrip(build_demo_vae(0, tint=(1.0, 0.85, 0.85)), image)
    plain = roundtrip(vae, image)
    np.testing.assert_allclose(tinted[..., 0], plain[..., 0], atol=1e-6)
    np.testing.assert_allclose(tinted[..., 1:], 0.85 * plain[..., 1:], atol=1e-5)
    with pytest.raises(ValueError, match="tint"):
        build_demo_vae(0, tint=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="tint"):
        build_demo_vae(0, tint=(1.0, 1.0))


# --- the standalone VAE folder --------------------------------------------------------------------------

def test_ensure_demo_vae_writes_a_loadable_folder_once(tmp_path, vae):
    dest = ensure_demo_vae(tmp_path / "vae", tint=(1.0, 0.85, 0.85))
    assert dest == tmp_path / "vae"
    assert sorted(p.name for p in dest.iterdir()) == [MARKER_FILE, "config.json", "diffusion_pytorch_model.safetensors"]
    marker = json.loads((dest / MARKER_FILE).read_text())
    assert marker["kind"] == "atelier-demo-vae" and marker["tint"] == [1.0, 0.85, 0.85]
    loaded = AutoencoderTiny.from_pretrained(dest)
    image = smooth_images()["gradient"]
    np.testing.assert_allclose(roundtrip(loaded, image)[..., 1], 0.85 * roundtrip(vae, image)[..., 1], atol=1e-5)

    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert ensure_demo_vae(dest, tint=(1, 0.85, 0.85)) == dest
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before  # nothing rebuilt
    with pytest.raises(ValueError, match="different demo model"):
        ensure_demo_vae(dest)  # another tint
    with pytest.raises(ValueError, match="different demo model"):
        ensure_demo_model(dest)  # not a pipeline
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temporary build left behind


def test_a_pipeline_decoding_with_the_tinted_vae_shows_it(tmp_path):
    """Swapped into the demo pipeline, the tinted VAE decodes the same latents with less green and blue."""
    pipe = load_folder(ensure_demo_model(tmp_path / "demo"))
    size = (64, 64)
    keep = np.zeros(size, bool)
    keep[24:40, 24:40] = True
    comp = Composition(Image.new("RGB", size, (128, 128, 128)), keep, None)
    background = Image.new("RGB", size, (150, 160, 170))

    def render():
        [image] = run_inpaint(pipe, comp, "a woman", "", Sampling(seed=1, batch_size=1, steps=4, guidance_scale=7.5,
                                                                  background=background, refer_strength=0.9))
        return np.asarray(image).astype(float)[~keep]

    plain = render()
    pipe.vae = AutoencoderTiny.from_pretrained(ensure_demo_vae(tmp_path / "tinted-vae", tint=(1.0, 0.85, 0.85)))
    tinted = render()
    ratios = tinted.mean(axis=0) / plain.mean(axis=0)
    assert abs(ratios[0] - 1) < 0.01 and abs(ratios[1] - 0.85) < 0.01 and abs(ratios[2] - 0.85) < 0.01


@pytest.mark.parametrize("build", [ensure_demo_model, ensure_demo_model_sd15])
def test_the_demo_pipelines_use_the_reconstructing_vae(tmp_path, build):
    folder = build(tmp_path / "demo")
    assert json.loads((folder / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    pipe = load_folder(folder)
    assert pipe.vae_scale_factor == 8
    image = smooth_images()["gradient"]
    assert psnr(block_means(roundtrip(pipe.vae, image)), block_means(image)) > BLOCK_PSNR_DB
