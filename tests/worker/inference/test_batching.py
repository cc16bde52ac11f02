"""BatchSize N as few pipeline calls (issue 15): image i from its own generator seeded seed + i, chunks of
``speed.images_per_call`` images, a single image exactly the call it always was; on the tiny demo
checkpoints, on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from app.contract.registry import SpeedOptions
from support.models import garment, load_folder
from workers.demo.model import ensure_demo_model, ensure_demo_model_sd15
from workers.inference.compose import inpaint_mask, pad_to_multiple, paste_back
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models.speed import apply_speed

STEPS = 3
#: How far image i of a batched call may be from the single-image run with its seed, in grey levels: the
#: documented tolerance (docs/API.md "Seeds"). Batched kernels round differently; the draws are the same.
MAX_DIFF = 2
MEAN_DIFF = 0.05


def generate(pipe, comp, seed, batch_size=1, on_step=None, background=None):
    images = run_inpaint(pipe, comp, "a woman in a dress", "blurry",
                         Sampling(seed=seed, batch_size=batch_size, steps=STEPS, guidance_scale=7.5, on_step=on_step,
                                  background=background, refer_strength=0.5))
    return [np.asarray(image).astype(int) for image in images]


@contextmanager
def unet_batches(pipe) -> Iterator[list[int]]:
    """The batch size of every UNet call inside the ``with`` block (2 per image: classifier-free guidance)."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: sizes.append(int(args[0].shape[0])))
    try:
        yield sizes
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def pipe9(tmp_path_factory):
    pipe = load_folder(ensure_demo_model(tmp_path_factory.mktemp("demo") / "demo-inpaint"))
    apply_speed(pipe, SpeedOptions(max_batch=3), "cpu")
    return pipe


@pytest.fixture(scope="module")
def pipe4(tmp_path_factory):
    return load_folder(ensure_demo_model_sd15(tmp_path_factory.mktemp("demo4") / "demo-sd15"))


def test_a_single_image_is_the_pipeline_call_it_always_was(pipe9):
    """BatchSize 1: one image, one generator, PIL output, then the paste-back: bit for bit."""
    comp = garment(67, 45)
    padded = pad_to_multiple(comp, 8)
    stock = pipe9(prompt="a woman in a dress", negative_prompt="blurry", image=padded.image,
                  mask_image=inpaint_mask(padded), height=padded.height, width=padded.width, strength=1.0,
                  num_inference_steps=STEPS, guidance_scale=7.5, num_images_per_prompt=1,
                  generator=torch.Generator("cpu").manual_seed(21), output_type="pil").images[0]
    expected = np.asarray(paste_back(stock.crop((0, 0, comp.width, comp.height)), comp))
    [image] = generate(pipe9, comp, seed=21)
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("model", ["pipe9", "pipe4"])
def test_image_i_of_a_batch_matches_the_single_run_with_seed_plus_i(model, request):
    pipe = request.getfixturevalue(model)
    comp = garment(72, 56)
    with unet_batches(pipe) as sizes:
        batch = generate(pipe, comp, seed=300, batch_size=3)
    assert sizes == [6] * STEPS  # one call for the three images
    for i, image in enumerate(batch):
        [single] = generate(pipe, comp, seed=300 + i)
        diff = np.abs(image - single)
        assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (i, diff.max(), diff.mean())
        np.testing.assert_array_equal(image[comp.keep], np.asarray(comp.image)[comp.keep])
    assert np.abs(batch[0] - batch[1])[~comp.keep].mean() > 5  # each image has its own seed


def test_a_batch_with_a_background_reference_holds_each_image_to_its_own_noise(pipe9):
    comp = garment(64, 64)
    background = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    batch = generate(pipe9, comp, seed=8, batch_size=2, background=background)
    for i, image in enumerate(batch):
        [single] = generate(pipe9, comp, seed=8 + i, background=background)
        assert np.abs(image - single).max() <= MAX_DIFF


def test_a_batch_larger_than_a_call_is_split_and_counts_its_progress(pipe9):
    comp = garment(64, 48)
    progress: list[tuple[int, int]] = []
    with unet_batches(pipe9) as sizes:
        batch = generate(pipe9, comp, seed=50, batch_size=5, on_step=lambda step, total: progress.append((step, total)))
    assert sizes == [6] * STEPS + [4] * STEPS  # max_batch 3: calls of 3 and 2 images
    assert progress == [(3 * s, 5 * STEPS) for s in range(1, STEPS + 1)] + \
        [(9 + 2 * s, 5 * STEPS) for s in range(1, STEPS + 1)]
    for i in (0, 3, 4):  # the first image of each call, and the last one
        [single] = generate(pipe9, comp, seed=50 + i)
        assert np.abs(batch[i] - single).max() <= MAX_DIFF
    assert len({image.tobytes() for image in batch}) == 5
