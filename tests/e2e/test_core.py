"""Inference-core properties end to end through the API on the demo deployment: composition
geometry, background reference strength, failures that end one task and not the worker."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import example_inputs, generate_body, png_b64, signed

pytestmark = pytest.mark.slow


def _img(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def _run(stack, **overrides) -> dict:
    out = stack.post(signed(generate_body(**overrides)))
    assert out["RetCode"] == 0, out
    d = stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    return d


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
def test_resize_mode_puts_clothes_where_the_docs_say(live_stack, mode):
    from workers.inference.compose import prepare

    man, mask = example_inputs(64, 80)
    d = _run(live_stack, Width=96, Height=64,
             Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": mode})
    comp = prepare(man, mask, 96, 64, mode)
    out = _img(d["ImgList"][0])
    assert out.shape == (64, 96, 3)
    expected = np.array(comp.image).astype(int)
    assert comp.keep.any()
    assert np.array_equal(out[comp.keep], expected[comp.keep])


def test_width_height_not_multiple_of_8(live_stack):
    d = _run(live_stack, Width=67, Height=93)
    assert _img(d["ImgList"][0]).shape == (93, 67, 3)


def test_four_channel_checkpoint_keeps_clothes(live_stack):
    man, mask = example_inputs()
    d = _run(live_stack, MainModel={"ModelCode": "demo-sd15"}, Width=64, Height=80,
             Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": "JustResize"})
    keep = np.array(mask) > 127
    assert np.array_equal(_img(d["ImgList"][0])[keep], np.array(man).astype(int)[keep])


def test_model_that_fails_to_load_ends_in_error_and_worker_goes_on(live_stack):
    out = live_stack.post(signed(generate_body(MainModel={"ModelCode": "broken"})))
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Error" and d["ErrorCode"] == 240 and "broken" in d["ErrorMessage"]
    assert _run(live_stack)["Status"] == "Finished"


def _background_distance(stack, refer: float | None, bg: Image.Image) -> float:
    man, mask = example_inputs()
    images = [png_b64(man), png_b64(mask), png_b64(bg)]
    extra = {} if refer is None else {"Image2Image": {"ImageIndex": 2, "ReferStrength": refer}}
    d = _run(stack, ImageAndMaskList=images, Width=64, Height=80, Seed=3,
             Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": "JustResize"}, **extra)
    out = _img(d["ImgList"][0])
    far = np.ones(out.shape[:2], bool)
    keep = np.array(mask) > 127
    ys, xs = np.nonzero(keep)
    far[max(ys.min() - 8, 0):ys.max() + 9, max(xs.min() - 8, 0):xs.max() + 9] = False  # away from the seam
    return float(np.abs(out[far] - np.array(bg).astype(int)[far]).mean())


def test_background_distance_falls_as_refer_strength_rises(live_stack):
    bg = Image.new("RGB", (64, 80))
    bg.putdata([(40 + x * 2, 90 + y, 160) for y in range(80) for x in range(64)])
    dists = [_background_distance(live_stack, r, bg) for r in (0.0, 0.5, 0.9, 1.0)]
    assert dists[0] > dists[1] > dists[2] > dists[3], dists
    assert dists[3] == 0.0, "ReferStrength 1 keeps the background"
    assert dists[0] == pytest.approx(_background_distance(live_stack, None, bg)), "0 ignores the reference"


@pytest.fixture()
def external_vae(live_stack, atelier_env, tmp_path_factory):
    """The deployment's models config gains an external sd15 VAE (a demo VAE that decodes with
    green and blue scaled by 0.85) for the duration of one test; gateway and worker re-read it."""
    from pathlib import Path

    from workers.demo.model import ensure_demo_vae

    vae = ensure_demo_vae(tmp_path_factory.mktemp("vae") / "tinted", tint=(1.0, 0.85, 0.85))
    path = Path(atelier_env["ATELIER_MODELS_CONFIG"])
    original = path.read_text()
    path.write_text(original + f"vaes:\n  sd15: {{path: {vae}}}\n")
    yield
    path.write_text(original)


def test_use_main_model_vae_switches_between_checkpoint_and_external_vae(live_stack, external_vae):
    man, mask = example_inputs()
    keep = np.array(mask) > 127
    common = dict(Width=64, Height=80, Seed=9, Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1,
                                                          "ResizeMode": "JustResize"})
    own = _img(_run(live_stack, UseMainModelVAE=True, **common)["ImgList"][0])
    ext = _img(_run(live_stack, UseMainModelVAE=False, **common)["ImgList"][0])
    again = _img(_run(live_stack, UseMainModelVAE=True, **common)["ImgList"][0])
    assert np.array_equal(own, again), "the checkpoint's own VAE is restored after a job with the external one"
    assert np.array_equal(own[keep], ext[keep]), "clothes stay exact with either VAE"
    # the external VAE decodes green and blue x0.85 (red as is) wherever they are not clipped
    assert np.abs(own[..., 0] - ext[..., 0]).max() <= 1
    ys, xs = np.nonzero(keep)
    far = np.ones(keep.shape, bool)
    far[max(ys.min() - 6, 0):ys.max() + 7, max(xs.min() - 6, 0):xs.max() + 7] = False  # beyond the seam band
    unclipped = far & (own[..., 1] > 30) & (own[..., 1] < 200)
    assert unclipped.sum() > 50
    ratio = ext[..., 1][unclipped].sum() / own[..., 1][unclipped].sum()
    assert 0.8 < ratio < 0.9, f"external (tinted) VAE decoded the redrawn area: G ratio {ratio:.3f}"


def test_image2image_resize_mode_fits_the_background_as_asked(live_stack):
    """ReferStrength 1 keeps the reference's pixels: so the background of the result shows how it was fitted.
    The default (CropAndResize) covers the frame and crops the centre; JustResize stretches it."""
    man, mask = example_inputs()
    bg = Image.new("RGB", (128, 64))
    bg.putdata([(x * 2, 40 + y * 3, 255 - x) for y in range(64) for x in range(128)])
    keep = np.array(mask) > 127
    far = np.ones(keep.shape, bool)
    ys, xs = np.nonzero(keep)
    far[max(ys.min() - 8, 0):ys.max() + 9, max(xs.min() - 8, 0):xs.max() + 9] = False

    def background(mode: str | None) -> np.ndarray:
        image2image = {"ImageIndex": 1, "ReferStrength": 1.0, **({"ResizeMode": mode} if mode else {})}
        d = _run(live_stack, ImageAndMaskList=None, ImageList=[png_b64(man), png_b64(bg)], MaskList=[png_b64(mask)],
                 Width=64, Height=80, Seed=3, Image2Image=image2image,
                 Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 0, "ResizeMode": "JustResize"})
        return _img(d["ImgList"][0])

    stretched = np.array(bg.resize((64, 80), Image.Resampling.LANCZOS)).astype(int)
    scaled = np.array(bg.resize((160, 80), Image.Resampling.LANCZOS)).astype(int)  # covers 64x80
    covered = scaled[:, 48:112]  # its centre
    default, just, crop = background(None), background("JustResize"), background("CropAndResize")
    assert np.array_equal(default[far], crop[far])
    assert np.abs(just[far] - stretched[far]).max() <= 1
    assert np.abs(crop[far] - covered[far]).max() <= 1
    assert np.abs(just[far] - crop[far]).mean() > 10
