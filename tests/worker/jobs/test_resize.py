"""The ResizeImage job (workers/jobs/resize.py), in-process with a real WorkerRuntime against the real Redis task
store and storage: Lanczos to exactly the size asked (4096 wide and back down), RGBA kept, a missing input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.contract.jobs import ResizeJobMessage
from app.contract.settings import get_settings
from support.api import stored
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
