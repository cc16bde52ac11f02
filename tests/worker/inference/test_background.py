"""Image2Image: a background reference held with a per-pixel strength (differential diffusion), on the demo
checkpoints (random UNet, reconstructing VAE), 9-channel and 4-channel, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from PIL import Image

from support.models import load_folder
from workers.demo.model import ensure_demo_model, ensure_demo_model_sd15
from workers.inference.compose import Composition, fit_background, prepare, redraw_strength, with_background
from workers.inference.inpaint import (
    Sampling,
    latent_strength,
    reference_latents,
    run_inpaint,
    start_steps,
)

STEPS = 8
WIDTH, HEIGHT = 80, 64
FEATHER = 4  # paste_back's default seam


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"inpaint": ensure_demo_model(root / "demo-inpaint"), "sd15": ensure_demo_model_sd15(root / "demo-sd15")}


@pytest.fixture(scope="module", params=["inpaint", "sd15"])
def pipe(request, models):
    """Each demo kind: the 9-channel inpainting UNet and the 4-channel base (inpainted by latent blending)."""
    pipe = load_folder(models[request.param])
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.in_channels == (9 if request.param == "inpaint" else 4)
    return pipe


@pytest.fixture(scope="module")
def euler_pipe(models):
    pipe = load_folder(models["inpaint"])
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.init_noise_sigma > 1  # latents live in sigma space, unlike DDIM's
    return pipe


def reference() -> Image.Image:
    """A smooth background of another size and aspect ratio than the output (cover-cropped to it)."""
    yy, xx = np.mgrid[0:90, 0:120]
    pixels = np.stack([40 + 150 * xx / 120, 60 + 120 * yy / 90, np.full(xx.shape, 170.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


REFERENCE = reference()
FITTED = np.asarray(fit_background(REFERENCE, WIDTH, HEIGHT)).astype(int)


def photo_mannequin() -> Composition:
    """An opaque photo (noise) with a garment in the middle: no alpha, everything else is background."""
    rng = np.random.default_rng(5)
    mannequin = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (30, 20, 50, 44))
    return prepare(mannequin, mask, WIDTH, HEIGHT)


def cutout_mannequin() -> Composition:
    """An RGBA cut-out: an opaque figure (x 16..64) on a transparent background, the garment inside it."""
    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    pixels[..., 3] = 0
    pixels[4:60, 16:64, 3] = 255
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (28, 16, 52, 40))
    comp = prepare(Image.fromarray(pixels, mode="RGBA"), mask, WIDTH, HEIGHT)
    assert comp.figure is not None and comp.figure.sum() == 56 * 48
    return comp


def grown(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by ``px`` pixels (chessboard distance), i.e. with its feather band."""
    out = mask.copy()
    for _ in range(px):
        step = out.copy()
        step[1:] |= out[:-1]
        step[:-1] |= out[1:]
        out = step.copy()
        out[:, 1:] |= step[:, :-1]
        out[:, :-1] |= step[:, 1:]
    return out


def generate(pipe, comp, refer_strength=None, seed=3, batch_size=1, background=REFERENCE, on_step=None):
    kwargs = {} if refer_strength is None else {"background": background, "refer_strength": refer_strength}
    images = run_inpaint(pipe, comp, "a woman in a dress", "blurry",
                         Sampling(seed=seed, batch_size=batch_size, steps=STEPS, guidance_scale=7.5, on_step=on_step,
                                  **kwargs))
    arrays = [np.asarray(image).astype(int) for image in images]
    for array in arrays:  # the clothes are bit-exact in every case
        assert array.shape == (comp.height, comp.width, 3)
        np.testing.assert_array_equal(array[comp.keep], np.asarray(comp.image)[comp.keep])
    return arrays


def distance(image: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(image - FITTED)[where].mean())


# --- behaviour ----------------------------------------------------------------------------------------

def test_background_moves_towards_the_reference_as_refer_strength_rises(pipe):
    comp = photo_mannequin()
    background = ~grown(comp.keep, FEATHER)
    distances = [distance(generate(pipe, comp, r)[0], background) for r in (0.0, 0.5, 0.9, 1.0)]
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 60  # ignored: drawn from noise by the random UNet
    assert distances[2] < 12  # s = 0.1: one DDIM step from a lightly noised reference
    assert distances[3] == 0


def test_refer_strength_one_keeps_the_whole_background_exactly(pipe):
    comp = photo_mannequin()
    [image] = generate(pipe, comp, 1.0)
    # without alpha everything outside the clothes is background: the result is the starting image itself
    np.testing.assert_array_equal(image, np.asarray(with_background(comp, REFERENCE).image))


def test_refer_strength_zero_gives_exactly_the_images_without_a_background(pipe):
    for comp in (photo_mannequin(), cutout_mannequin()):
        without = generate(pipe, comp, batch_size=2)
        ignored = generate(pipe, comp, 0.0, batch_size=2)
        for a, b in zip(without, ignored):
            np.testing.assert_array_equal(a, b)


def test_a_cutout_figure_is_redrawn_while_the_background_is_held(pipe):
    comp = cutout_mannequin()
    background = ~comp.figure & ~comp.keep
    figure = comp.figure & ~comp.keep
    figure_core = figure & ~grown(~figure, FEATHER)  # away from the seams
    free, held, exact = (generate(pipe, comp, r)[0] for r in (0.0, 0.9, 1.0))

    # ReferStrength 1: the background is the reference, bit for bit, up to the figure's outline
    np.testing.assert_array_equal(exact[background], FITTED[background])
    # ... and the figure is drawn at full strength: as far from the reference as without any reference
    assert distance(exact, figure_core) > 60
    assert distance(exact, figure_core) > 0.7 * distance(free, figure_core)
    # the seam into the figure blends the reference with the generated person
    band = figure & grown(background, FEATHER) & ~grown(background, FEATHER - 1)
    assert band.any() and 0 < distance(exact, band) < distance(exact, figure_core)

    # ReferStrength 0.9: the background stays close to the reference away from the figure, the figure not
    far_background = background & ~grown(comp.figure, 8)
    assert distance(held, far_background) < 12 < 60 < distance(held, figure_core)
    assert distance(free, far_background) > 60


def test_refer_strength_one_without_alpha_differs_from_one_with_a_figure(pipe):
    """The same pixels are held or redrawn depending only on the figure (the alpha channel)."""
    cutout = cutout_mannequin()
    [with_figure] = generate(pipe, cutout, 1.0)
    figure = cutout.figure & ~cutout.keep
    [without_figure] = generate(pipe, Composition(cutout.image, cutout.keep, None), 1.0)
    np.testing.assert_array_equal(without_figure[figure], FITTED[figure])
    assert distance(with_figure, figure) > 40


def test_same_seed_gives_the_same_images_and_batches_match_single_runs(pipe):
    comp = cutout_mannequin()
    batch = generate(pipe, comp, 0.5, seed=40, batch_size=2)
    again = generate(pipe, comp, 0.5, seed=40, batch_size=2)
    for i in range(2):
        np.testing.assert_array_equal(batch[i], again[i])
        [single] = generate(pipe, comp, 0.5, seed=40 + i)  # batched: within a grey level (test_batching.py)
        assert np.abs(batch[i].astype(int) - single).max() <= 1
    background = ~comp.figure & ~comp.keep
    assert np.abs(batch[0] - batch[1])[background].mean() > 5  # the held background is noised per seed


def test_progress_counts_every_step_with_a_background(pipe):
    calls = []
    generate(pipe, photo_mannequin(), 0.5, batch_size=2, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(2 * step, 2 * STEPS) for step in range(1, STEPS + 1)]  # both images in one call


@pytest.mark.parametrize("size", [(67, 45), (40, 72)])
def test_any_size_and_any_reference_shape(pipe, size):
    """Sizes that are not multiples of 8 are padded (the reference too) and cropped back."""
    keep = np.zeros((size[1], size[0]), bool)
    keep[10:20, 10:30] = True
    comp = Composition(Image.new("RGB", size, (90, 30, 200)), keep, None)
    tall = Image.new("RGB", (30, 200), (10, 200, 60))
    [image] = generate(pipe, comp, 1.0, background=tall)
    assert image.shape == (size[1], size[0], 3)
    assert (image[~keep] == (10, 200, 60)).all()


def test_euler_scheduler_holds_the_reference_in_sigma_space(euler_pipe):
    """Euler latents are x0 + sigma * noise (and its initial latents are scaled by init_noise_sigma): the
    reference must be noised by the scheduler, not rescaled, for the held background to come out right."""
    comp = photo_mannequin()
    background = ~grown(comp.keep, FEATHER)
    distances = [distance(generate(euler_pipe, comp, r)[0], background) for r in (0.0, 0.5, 0.9, 1.0)]
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[2] < 12 and distances[3] == 0
    for a, b in zip(generate(euler_pipe, comp, batch_size=2), generate(euler_pipe, comp, 0.0, batch_size=2)):
        np.testing.assert_array_equal(a, b)


def test_the_unet_sees_the_reference_noised_to_each_step_until_the_pixel_starts(models):
    """White box, DDIM, 9 channels: a background latent pixel of strength 0.5 enters steps 1..N/2 as
    add_noise(x0, noise, t_k) (x0 = VAE latents x scaling_factor, noise = randn from seed), then is free."""
    pipe = load_folder(models["inpaint"])
    comp = photo_mannequin()
    inputs: list[torch.Tensor] = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0][:1, :4].clone()))
    try:
        generate(pipe, comp, 0.5, seed=21)
    finally:
        handle.remove()
    assert len(inputs) == STEPS

    start = with_background(comp, REFERENCE)
    x0 = reference_latents(pipe, start.image)
    assert pipe.vae.config.scaling_factor != 1  # so forgetting it would show
    generator = torch.Generator("cpu").manual_seed(21)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    latent_map = latent_strength(redraw_strength(start, 0.5), comp.keep, pipe.vae_scale_factor)
    held = torch.from_numpy(latent_map == np.float32(0.5))[None, None].expand_as(x0)
    assert held.float().mean() > 0.5
    timesteps = pipe.scheduler.timesteps
    for k in range(1, STEPS):
        expected = pipe.scheduler.add_noise(x0, noise, timesteps[k : k + 1])
        close = torch.isclose(inputs[k], expected, atol=1e-5)
        if k <= STEPS // 2:
            assert close[held].all(), k
        else:
            assert close[held].float().mean() < 0.01, k
    # step 0: pure noise (the pipeline's own: the same seed, the same draw)
    torch.testing.assert_close(inputs[0], noise)


# --- helpers ------------------------------------------------------------------------------------------

def test_redraw_strength_map():
    comp = cutout_mannequin()
    strength = redraw_strength(comp, 0.75)
    assert (strength[comp.keep] == 0).all()
    assert (strength[comp.figure & ~comp.keep] == 1).all()
    assert (strength[~comp.figure] == np.float32(0.25)).all()
    photo = photo_mannequin()
    assert (redraw_strength(photo, 0.75)[~photo.keep] == np.float32(0.25)).all()
    with pytest.raises(ValueError, match="refer_strength"):
        redraw_strength(photo, 1.5)


def test_latent_strength_lets_the_figure_win_and_frees_clothes_only_blocks():
    strength = np.full((16, 24), 0.25, np.float32)
    keep = np.zeros((16, 24), bool)
    strength[3, 3] = 1.0  # one figure pixel in block (0, 0)
    keep[8:16, 8:16] = True  # block (1, 1): all clothes
    strength[keep] = 0
    keep[0:8, 16:20] = True  # block (0, 2): half clothes, half background
    strength[keep] = 0
    out = latent_strength(strength, keep, 8)
    np.testing.assert_array_equal(out, [[1.0, 0.25, 0.25], [0.25, 1.0, 0.25]])
    with pytest.raises(ValueError, match="blocks"):
        latent_strength(strength[:, :20], keep[:, :20], 8)


def test_start_steps_round_half_up():
    np.testing.assert_array_equal(start_steps(np.array([1.0, 0.5, 0.1, 0.0, 0.9375], np.float32), 8),
                                  [0, 4, 7, 8, 1])
    np.testing.assert_array_equal(start_steps(np.array([0.5, 0.1], np.float32), 5), [3, 5])


def test_refer_strength_out_of_range_is_refused(pipe):
    with pytest.raises(ValueError, match="refer_strength"):
        run_inpaint(pipe, photo_mannequin(), "", "",
                    Sampling(seed=0, steps=STEPS, guidance_scale=7.5, background=REFERENCE, refer_strength=-0.1))
