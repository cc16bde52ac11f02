"""Upscalers (workers/inference/upscale.py): spandrel loads a file in a real architecture's layout and says its
scale, refuses what is not super-resolution of RGB images; the tiled application equals the untiled one for a
network whose receptive field fits the overlap (and visibly does not without an overlap); how many applications a
size takes; the exact size asked, up and down; alpha by Lanczos."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from support.api import write_random_safetensors
from workers.demo.upscaler import compact_state_dict, write_demo_upscaler
from workers.inference.upscale import (
    MAX_APPLICATIONS,
    UpscalerFileError,
    enlarge,
    feather,
    lanczos,
    load_upscaler,
    plan_upscale,
    resize_image,
    tile_spans,
    upscale_note,
    upscale_tiled,
)


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """The demo's architecture (Real-ESRGAN Compact: 4 convolutions, 4 pixels of receptive field each way) with
    full-strength random weights, so that any tile seam shows."""
    return load_upscaler(write_demo_upscaler(tmp_path_factory.mktemp("up") / "sharp.safetensors", detail=1.0),
                         "cpu", torch.float32)


def _photo(w: int, h: int, channels: int = 3, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, channels), dtype=np.uint8)


# --- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x4.safetensors", "x4.pth"])
def test_spandrel_recognises_the_demo_layout_and_its_scale(tmp_path, name):
    up = load_upscaler(write_demo_upscaler(tmp_path / name), "cpu", torch.float16)
    assert (up.scale, up.architecture, up.dtype) == (4, "RealESRGAN Compact", torch.float32)  # the CPU: float32
    out = up.run(np.random.default_rng(0).random((3, 10, 7), dtype=np.float32))
    assert out.shape == (3, 40, 28) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_an_x2_file_says_x2(tmp_path):
    assert load_upscaler(write_demo_upscaler(tmp_path / "x2.safetensors", scale=2), "cpu", torch.float32).scale == 2


def test_the_demo_weights_run_what_spandrel_builds(tmp_path):
    """Our runner around spandrel's descriptor gives what the architecture computes: nearest upscale plus the
    pixel-shuffled residual of the convolutions (written here from the state dict alone)."""
    sd = compact_state_dict(detail=1.0)
    up = load_upscaler(write_demo_upscaler(tmp_path / "x4.safetensors", detail=1.0), "cpu", torch.float32)
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    h = x
    for i in range(0, 6, 2):
        h = torch.nn.functional.prelu(torch.nn.functional.conv2d(h, sd[f"body.{i}.weight"], sd[f"body.{i}.bias"],
                                                                 padding=1), sd[f"body.{i + 1}.weight"])
    h = torch.nn.functional.conv2d(h, sd["body.6.weight"], sd["body.6.bias"], padding=1)
    want = (torch.nn.functional.pixel_shuffle(h, 4) + torch.nn.functional.interpolate(x, scale_factor=4)).clamp(0, 1)
    assert np.allclose(up.run(x[0].numpy()), want[0].numpy(), atol=1e-5)


def test_what_is_not_an_upscaler_is_refused_saying_why(tmp_path):
    with pytest.raises(UpscalerFileError, match="recognises no super-resolution architecture"):
        load_upscaler(write_random_safetensors(tmp_path / "random.safetensors"), "cpu", torch.float32)
    restoration = tmp_path / "x1.pth"          # the same layout at scale 1: a denoiser, not an upscaler
    torch.save(compact_state_dict(scale=1), restoration)
    with pytest.raises(UpscalerFileError, match="RealESRGAN Compact model for Restoration, not super-resolution"):
        load_upscaler(restoration, "cpu", torch.float32)
    grey = compact_state_dict()
    grey["body.0.weight"] = grey["body.0.weight"][:, :1]
    grey["body.6.weight"], grey["body.6.bias"] = grey["body.6.weight"][:16], grey["body.6.bias"][:16]
    torch.save(grey, tmp_path / "grey.pth")
    with pytest.raises(UpscalerFileError, match="1-channel images, not RGB"):
        load_upscaler(tmp_path / "grey.pth", "cpu", torch.float32)
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UpscalerFileError, match="cut.safetensors is unreadable"):
        load_upscaler(tmp_path / "cut.safetensors", "cpu", torch.float32)
    with pytest.raises(UpscalerFileError, match="does not exist"):
        load_upscaler(tmp_path / "missing.pth", "cpu", torch.float32)


# --- tiles ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, size, overlap", [(93, 24, 8), (100, 40, 16), (40, 40, 16), (17, 40, 16),
                                                   (1000, 512, 32), (513, 512, 32)])
def test_tiles_cover_the_image_and_their_weights_never_sum_to_zero(length, size, overlap):
    spans = tile_spans(length, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length and len({b - a for a, b in spans}) == 1   # one tile size
    n, tile = len(spans), spans[0][1]
    assert tile <= size and (n == 1 or n * (tile - 1) - (n - 1) * overlap < length)   # no shorter tile would do
    assert all(b0 <= a1 - overlap for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))  # at least overlap
    assert n == 1 or (n - 1) * size - (n - 2) * overlap < length    # nor one tile fewer, of the largest size
    for scale in (1, 4):
        total = np.zeros(length * scale)
        for span in spans:
            total[span[0] * scale: span[1] * scale] += feather(span, length, overlap, scale)
        assert total.min() > 0.05


def test_tiles_are_spread_evenly_rather_than_the_last_one_redoing_its_neighbour():
    assert tile_spans(512, 256, 32) == [(0, 192), (160, 352), (320, 512)]     # 3 tiles of 192, not of 256
    assert tile_spans(1000, 512, 32) == [(0, 355), (322, 677), (645, 1000)]   # two of 512 would cover 992


def test_a_shared_edge_gives_no_weight_to_the_outer_quarter_of_the_overlap():
    w = feather((8, 32), 93, 16, 1)     # interior on both sides: 4 zeros, 8 rising, ..., 8 falling, 4 zeros
    assert list(w[:4]) == [0] * 4 and list(w[-4:]) == [0] * 4 and np.all(np.diff(w[4:12]) > 0)
    assert list(feather((0, 24), 93, 16, 1)[:8]) == [1] * 8          # the image's border is no seam


@pytest.mark.parametrize("size, overlap", [(24, 16), (40, 16), (33, 20)])
def test_tiles_equal_the_untiled_result_when_the_receptive_field_fits_the_overlap(sharp, size, overlap):
    image = _photo(93, 70)
    whole = upscale_tiled(image, sharp.run, 4, 4096, 0, dtype=np.float32)
    tiled = upscale_tiled(image, sharp.run, 4, size, overlap, dtype=np.float32)
    assert tiled.shape == whole.shape == (280, 372, 3)
    assert np.abs(tiled - whole).max() < 1e-5
    as_bytes = upscale_tiled(image, sharp.run, 4, size, overlap)
    assert as_bytes.dtype == np.uint8 and np.abs(as_bytes.astype(int) - upscale_tiled(image, sharp.run, 4, 4096, 0)
                                                 .astype(int)).max() <= 1


def test_without_enough_overlap_the_seams_show(sharp):
    """The test above can fail: tiles that do not overlap give other pixels along every seam."""
    image = _photo(93, 70)
    whole = upscale_tiled(image, sharp.run, 4, 4096, 0, dtype=np.float32)
    assert np.abs(upscale_tiled(image, sharp.run, 4, 24, 0, dtype=np.float32) - whole).max() > 0.05
    assert np.abs(upscale_tiled(image, sharp.run, 4, 24, 8, dtype=np.float32) - whole).max() > 1e-4  # reaches 4 px


def test_tiles_run_one_at_a_time_and_the_callback_sees_each():
    """Any ``run`` works (here a numpy box blur then nearest x2: 1 pixel of receptive field); ``on_tile`` runs
    before every tile (a job's cancellation check)."""
    seen = []

    def run(tile: np.ndarray) -> np.ndarray:
        seen.append(tile.shape)
        padded = np.pad(tile, ((0, 0), (1, 1), (1, 1)), mode="edge")
        blur = sum(padded[:, dy:dy + tile.shape[1], dx:dx + tile.shape[2]] for dy in range(3) for dx in range(3)) / 9
        return blur.repeat(2, axis=1).repeat(2, axis=2)

    image = _photo(50, 30)
    calls = []
    tiled = upscale_tiled(image, run, 2, 20, 8, on_tile=lambda: calls.append(1), dtype=np.float32)
    assert len(calls) == len(seen) == len(tile_spans(30, 20, 8)) * len(tile_spans(50, 20, 8)) == 8
    assert set(seen) == {(3, 19, 19)}      # 30: 2 tiles of 19 overlapping by 8; 50: 4 of 19 (by 8 or 9)
    seen.clear()
    assert np.abs(tiled - upscale_tiled(image, run, 2, 64, 0, dtype=np.float32)).max() < 1e-6


def test_a_model_that_gives_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        upscale_tiled(_photo(10, 10), lambda t: t, 2, 64, 0)


# --- whole images ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, target, scale, sizes", [
    ((64, 48), (4096, 3072), 4, [(256, 192), (1024, 768), (4096, 3072)]),
    ((64, 48), (4096, 3072), 2, [(128, 96), (256, 192), (512, 384), (1024, 768), (2048, 1536), (4096, 3072)]),
    ((100, 100), (150, 150), 4, [(400, 400)]),             # then Lanczos down to the size asked
    ((100, 100), (400, 50), 4, [(400, 400)]),              # one side larger is enough
    ((100, 100), (100, 100), 4, []),                       # not larger: Lanczos alone
    ((500, 400), (64, 64), 4, []),
    ((1, 1), (4096, 4096), 2, [(2 ** i, 2 ** i) for i in range(1, MAX_APPLICATIONS + 1)]),   # at most 8
])
def test_the_model_runs_while_the_image_is_smaller_than_asked(size, target, scale, sizes):
    assert plan_upscale(size, target, scale) == sizes


@pytest.mark.parametrize("target, applied", [((200, 150), 2), ((200, 120), 1), ((173, 91), 1), ((801, 603), 3),
                                             ((40, 30), 0), ((30, 61), 1)])
def test_the_result_is_exactly_the_size_asked(sharp, target, applied):
    out, ran = enlarge(_photo(50, 30), *target, sharp, size=32, overlap=16)
    assert out.shape == (target[1], target[0], 3) and out.dtype == np.uint8 and ran == applied


def test_enlarge_is_the_model_then_lanczos(sharp):
    image = _photo(50, 30)
    out, _ = enlarge(image, 173, 91, sharp, size=32, overlap=16)
    by_model = upscale_tiled(image, sharp.run, 4, 32, 16)
    assert np.array_equal(out, np.asarray(Image.fromarray(by_model).resize((173, 91), Image.Resampling.LANCZOS)))
    plain, ran = enlarge(image, 173, 91, None)
    assert ran == 0 and np.array_equal(plain, np.asarray(Image.fromarray(image).resize((173, 91),
                                                                                        Image.Resampling.LANCZOS)))


def test_an_rgba_image_keeps_its_alpha_resized_by_lanczos(sharp):
    rgba = Image.fromarray(_photo(40, 30, 4), "RGBA")
    out, ran = resize_image(rgba, 150, 100, sharp, size=32, overlap=16)
    assert (out.mode, out.size, ran) == ("RGBA", (150, 100), 1)
    alpha = rgba.getchannel("A").resize((150, 100), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    rgb, _ = enlarge(np.asarray(rgba.convert("RGB")), 150, 100, sharp, size=32, overlap=16)
    assert np.array_equal(np.asarray(out.convert("RGB")), rgb)
    assert resize_image(rgba.convert("LA"), 150, 100, sharp, size=32, overlap=16)[0].mode == "RGBA"
    assert resize_image(rgba.convert("RGB"), 150, 100, sharp, size=32, overlap=16)[0].mode == "RGB"


def test_without_a_model_or_when_not_enlarging_it_is_lanczos(sharp):
    rgba = Image.fromarray(_photo(40, 30, 4), "RGBA")
    for model, size in ((None, (150, 100)), (sharp, (40, 20))):
        out, ran = resize_image(rgba, *size, model)
        assert ran == 0 and np.array_equal(np.asarray(out), np.asarray(lanczos(rgba, *size)))


def test_the_note_names_the_model_its_factor_and_the_size():
    assert upscale_note("demo-upscaler", 4, 1, 1024, 768) == "upscaled by demo-upscaler (x4) to 1024x768"
    assert upscale_note("x2", 2, 3, 800, 600) == "upscaled by x2 (x2, 3 times) to 800x600"
