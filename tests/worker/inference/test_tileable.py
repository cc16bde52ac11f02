"""Tileable (GenerateImages): circular padding makes the demo pipeline draw on a torus, so its images tile without a
seam; the padding modes are put back afterwards (the cached pipeline other jobs share is unchanged).

The wrapped edges are compared through the property that defines a seamless texture: the image drawn from latents
shifted circularly is the image shifted circularly (here by 16 and 32 pixels: the wrap boundary of one is an
interior line of the other, drawn as any interior line). A pipeline with the usual zero padding fails the same
comparison at its edges. (The demo UNet is random, so a statistic of pixel differences would compare noise with
noise; equivariance is exact.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.contract.jobs import ImagesJobMessage, JobMessage
from app.contract.registry import FaceOptions
from support.models import load_folder, main_entry
from workers.demo.model import ensure_demo_model
from workers.inference.compose import NEUTRAL_GREY, prepare_blank
from workers.inference.inpaint import Sampling, run_inpaint
from workers.inference.tileable import CIRCULAR, circular_padding
from workers.jobs.generate import face_strength, passes_of, tileable

SIZE = 64
SHIFT = (2, 4)  # latent pixels (x, y): 16 and 32 image pixels (the demo UNet halves its latents once)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_folder(ensure_demo_model(tmp_path_factory.mktemp("models") / "demo-inpaint"))


def _modes(pipe) -> list[str]:
    return [m.padding_mode for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


def _draw(pipe, latents: torch.Tensor) -> np.ndarray:
    out = pipe(prompt="a seamless texture", image=Image.new("RGB", (SIZE, SIZE), NEUTRAL_GREY),
               mask_image=Image.new("L", (SIZE, SIZE), 255), height=SIZE, width=SIZE, num_inference_steps=4,
               guidance_scale=5.0, latents=latents, output_type="np")
    return out.images[0]


def _shift_error(pipe) -> tuple[float, float]:
    """(largest, typical) difference between the image of shifted latents and the shifted image, in 0..1."""
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(11))
    dx, dy = SHIFT
    drawn = _draw(pipe, latents)
    shifted = _draw(pipe, torch.roll(latents, shifts=(dy, dx), dims=(2, 3)))
    diff = np.abs(shifted - np.roll(drawn, shift=(8 * dy, 8 * dx), axis=(0, 1)))
    return float(diff.max()), float(np.abs(np.diff(drawn, axis=1)).mean())


def test_circular_padding_is_a_torus_and_is_put_back(pipe):
    before = _modes(pipe)
    assert CIRCULAR not in before
    plain_error, plain_scale = _shift_error(pipe)
    with circular_padding(pipe.unet, pipe.vae) as changed:
        assert changed == len(before) and set(_modes(pipe)) == {CIRCULAR}
        error, scale = _shift_error(pipe)
    assert _modes(pipe) == before
    # seamless: shifting the latents shifts the image, wrap boundary included, to float rounding
    assert error < 1e-4, error
    # the usual padding draws edges unlike the interior: the same comparison fails by a visible amount
    assert plain_error > 0.05 and plain_error > 100 * error, (plain_error, error)
    assert scale > 0.01 and plain_scale > 0.01  # neither image is flat (the comparison compares something)


def test_modes_put_back_after_an_error_and_results_unchanged(pipe):
    comp = prepare_blank(SIZE, SIZE)
    sampling = Sampling(seed=5, steps=3, guidance_scale=5.0, output="np")
    first = run_inpaint(pipe, comp, "texture", "", sampling)[0]
    with pytest.raises(RuntimeError), circular_padding(pipe.unet, pipe.vae):
        raise RuntimeError("a job failing mid-way")
    assert CIRCULAR not in _modes(pipe)
    assert np.array_equal(run_inpaint(pipe, comp, "texture", "", sampling)[0], first)
    with circular_padding(pipe.unet, pipe.vae, None):
        tiled = run_inpaint(pipe, comp, "texture", "", sampling)[0]
    assert not np.array_equal(tiled, first)  # the padding does change what the model draws


def test_prepare_blank_redraws_everything():
    comp = prepare_blank(40, 24)
    assert comp.image.size == (40, 24) and not comp.keep.any() and comp.figure is None and comp.blend is None
    assert set(comp.image.getdata()) == {NEUTRAL_GREY}


def test_a_tileable_job_is_one_pass_without_face_redraw():
    """A size that GenerateFromMannequin's engine draws in two passes (upscaled, refined in tiles: both would put edges
    back) is drawn in one for a Tileable job, and its faces are left as drawn."""
    entry = main_entry("m", demo="inpaint").model_copy(update={"faces": FaceOptions(refine=True)})
    fields = dict(task_uid="u" * 21, main_model="m", seed=1, width=2048, height=2048, batch_size=1)
    plain, tiled = ImagesJobMessage(**fields), ImagesJobMessage(**fields, tileable=True)
    assert passes_of(entry, plain).two and passes_of(entry, plain).tiles
    one = passes_of(entry, tiled)
    assert not one.two and not one.tiles and one.draw == one.final == (2048, 2048)
    assert one.refine_steps * one.refine_calls == 0
    assert tileable(tiled) and not tileable(plain) and not tileable(JobMessage(**fields, mannequin_image="a" * 64))
    assert face_strength(entry, plain) is not None and face_strength(entry, tiled) is None


def test_a_compiled_module_runs_eagerly_within_the_block():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    net.compile(backend="eager")
    compiled = net._compiled_call_impl
    assert compiled is not None
    with circular_padding(net):
        assert net._compiled_call_impl is None and net[0].padding_mode == CIRCULAR
    assert net._compiled_call_impl is compiled and net[0].padding_mode == "zeros"
