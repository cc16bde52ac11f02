"""The ResizeImage job (workers/jobs/resize.py), in-process with a real WorkerRuntime against the real Redis task
store and storage: Lanczos to exactly the size asked (4096 wide and back down), RGBA kept, a missing input; with an
Upscaler, the model then Lanczos (its tiles, its Notes, RGBA), not run for a smaller size, and one that cannot be
used ending the task in Error 240 naming it."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.contract.jobs import ResizeJobMessage
from app.contract.settings import get_settings
from support.api import stored
from workers.inference.upscale import resize_image
from workers.jobs.resize import run_resize_job
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def runtime(atelier_env) -> WorkerRuntime:
    return WorkerRuntime.build(get_settings())


def _resize(rt: WorkerRuntime, key: str, width: int, height: int):
    uid, _ = rt.store.create("pk-resize", None, "ResizeImage", 0, 0)
    run_resize_job(rt, ResizeJobMessage(task_uid=uid, image=key, width=width, height=height).to_wire())
    return rt.store.get(uid)


def _result(rt: WorkerRuntime, rec) -> tuple[bytes, Image.Image]:
    data = rt.storage.read_result(rec.uid, rec.images[0])
    return data, Image.open(io.BytesIO(data))


def _photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(11)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, len(mode)), dtype=np.uint8), mode)


def test_up_to_4096_wide_and_back_down(runtime):
    small = _photo(64, 48)
    rec = _resize(runtime, stored(runtime, small), 4096, 3072)
    assert rec.status == "Finished", rec.error_message
    assert rec.images == ["0.png"] and rec.seed == 0 and rec.consumed_points == 1
    assert (rec.step, rec.total_steps) == (1, 1)
    data, big = _result(runtime, rec)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and big.format == "PNG"
    assert (big.size, big.mode) == ((4096, 3072), "RGB")
    assert np.array_equal(np.asarray(big), np.asarray(small.resize((4096, 3072), Image.Resampling.LANCZOS)))

    rec = _resize(runtime, stored(runtime, big), 64, 64)  # down, and stretched: the aspect ratio is not kept
    assert rec.status == "Finished", rec.error_message
    _, back = _result(runtime, rec)
    assert (back.size, back.mode) == ((64, 64), "RGB")
    assert np.array_equal(np.asarray(back), np.asarray(big.resize((64, 64), Image.Resampling.LANCZOS)))


@pytest.mark.parametrize("source_mode", ["RGBA", "LA"])
def test_an_image_with_alpha_stays_rgba(runtime, source_mode):
    rgba = _photo(40, 30, "RGBA")
    source = rgba if source_mode == "RGBA" else rgba.convert("LA")
    rec = _resize(runtime, stored(runtime, source), 100, 64)
    assert rec.status == "Finished", rec.error_message
    _, got = _result(runtime, rec)
    assert (got.size, got.mode) == ((100, 64), "RGBA")
    want = source.convert("RGBA").resize((100, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("source_mode", ["L", "P"])
def test_an_image_without_alpha_becomes_rgb(runtime, source_mode):
    rec = _resize(runtime, stored(runtime, _photo(30, 20).convert(source_mode)), 64, 80)
    assert rec.status == "Finished", rec.error_message
    _, got = _result(runtime, rec)
    assert (got.size, got.mode) == ((64, 80), "RGB")


def test_a_missing_stored_input_ends_in_error_230(runtime):
    rec = _resize(runtime, "f" * 64, 128, 128)
    assert rec.status == "Error" and rec.error_code == 230 and "unreadable (missing)" in rec.error_message
    assert rec.images == []


# --- with an Upscaler (the test deployment's demo-upscaler, priced-upscaler, corrupt-upscaler) --------------------

def _upscale(rt: WorkerRuntime, key: str, width: int, height: int, upscaler: str):
    uid, _ = rt.store.create("pk-resize", None, "ResizeImage", 0, 0)
    run_resize_job(rt, ResizeJobMessage(task_uid=uid, image=key, width=width, height=height,
                                        upscaler=upscaler).to_wire())
    return rt.store.get(uid)


def test_an_upscaler_enlarges_then_lanczos_gives_the_exact_size(runtime):
    small = _photo(40, 30)
    rec = _upscale(runtime, stored(runtime, small), 333, 250, "demo-upscaler")
    assert rec.status == "Finished", rec.error_message
    assert "upscaled by demo-upscaler (x4, 2 times) to 333x250" in rec.notes   # 160x120, 640x480, then down
    _, got = _result(runtime, rec)
    assert (got.size, got.mode) == ((333, 250), "RGB")
    with runtime.models.cache.lease() as lease:
        model = runtime.models.upscaler(lease, runtime.registry.get("demo-upscaler"), runtime.registry)
    want, ran = resize_image(small, 333, 250, model, 512, 32)
    assert ran == 2 and np.array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(small.resize((333, 250), Image.Resampling.LANCZOS)))


def test_an_upscaler_keeps_rgba_and_tiles_by_its_entry(runtime):
    rgba = _photo(50, 36, "RGBA")
    rec = _upscale(runtime, stored(runtime, rgba), 200, 144, "priced-upscaler")    # tile {size: 40, overlap: 16}
    assert rec.status == "Finished", rec.error_message
    assert "upscaled by priced-upscaler (x4) to 200x144" in rec.notes
    _, got = _result(runtime, rec)
    assert (got.size, got.mode) == ((200, 144), "RGBA")
    alpha = rgba.getchannel("A").resize((200, 144), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(got.getchannel("A")), np.asarray(alpha))
    with runtime.models.cache.lease() as lease:
        model = runtime.models.upscaler(lease, runtime.registry.get("priced-upscaler"), runtime.registry)
    assert np.array_equal(np.asarray(got), np.asarray(resize_image(rgba, 200, 144, model, 40, 16)[0]))


def test_an_upscaler_is_not_run_for_a_smaller_size(runtime):
    big = _photo(300, 200)
    rec = _upscale(runtime, stored(runtime, big), 150, 100, "demo-upscaler")
    assert rec.status == "Finished", rec.error_message
    assert ("resized by Lanczos to 150x100: not larger than the image, the Upscaler demo-upscaler did not run"
            in rec.notes)
    _, got = _result(runtime, rec)
    assert np.array_equal(np.asarray(got), np.asarray(big.resize((150, 100), Image.Resampling.LANCZOS)))
    rec = _upscale(runtime, stored(runtime, big), 300, 64, "corrupt-upscaler")   # not loaded: it would not run
    assert rec.status == "Finished", rec.error_message


@pytest.mark.parametrize("code, message", [
    ("corrupt-upscaler", "Model [corrupt-upscaler] could not be loaded"),   # random tensors: spandrel knows none
    ("gone", "Model [gone] not exists"),                                     # removed from models_config since
    ("demo-inpaint", "Model [demo-inpaint] not exists"),                     # not an Upscaler
])
def test_an_upscaler_that_cannot_be_used_ends_in_error_240_naming_it(runtime, code, message):
    rec = _upscale(runtime, stored(runtime, _photo(20, 20)), 128, 128, code)
    assert (rec.status, rec.error_code, rec.error_message) == ("Error", 240, message) and rec.images == []
