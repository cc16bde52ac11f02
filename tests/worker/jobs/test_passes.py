"""Native size and refinement (workers/inference/passes.py, the generate job): which passes run, at which sizes,
with which strength, seen by a spy on the real pipeline calls of real jobs (run_job, the real Redis task store,
tiny demo models loaded through the production loaders); the clothes bit-exact at the size asked; the Notes and
the progress of both passes as one count."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app.contract.jobs import ControlUnitRef, JobMessage
from app.contract.settings import Settings
from support.api import example_inputs, stored, write_random_safetensors
from support.spies import spy_pipeline_calls
from workers.demo.control import ensure_demo_controlnet
from workers.demo.model import ensure_demo_model
from workers.demo.upscaler import write_demo_upscaler
from workers.inference.compose import prepare
from workers.inference.passes import plan_passes, tile_grid, tile_weights
from workers.inference.upscale import SuperResolution
from workers.jobs.generate import run_job
from workers.runtime import WorkerRuntime

STEPS = 4
NATIVE = (64, 96)


# ------------------------------------------------------------------------------------------- the arithmetic

@pytest.mark.parametrize("size, native, draw", [
    ((512, 512), (512, 512), (512, 512)),        # the native size: one pass
    ((560, 560), (512, 512), (560, 560)),        # within 1.2x the native area: one pass, as asked
    ((600, 600), (512, 512), (512, 512)),        # beyond: the native area
    ((1024, 1536), (512, 512), (416, 624)),      # the request's aspect ratio, multiples of 8
    ((512, 768), (256, 384), (256, 384)),        # a model's own native size
    ((2048, 1024), (1024, 1024), (1448, 728)),   # SDXL
    ((2560, 128), (512, 512), (2288, 112)),      # never beyond the size asked, each side a multiple of 8
])
def test_the_passes_keep_the_native_area_and_the_aspect_ratio(size, native, draw):
    passes = plan_passes(*size, native, 0.35, 25)
    assert passes.draw == draw and passes.final == size and passes.two == (draw != size)
    assert all(side % 8 == 0 for side in passes.draw) or not passes.two
    if passes.two:
        assert abs(draw[0] * draw[1] / (native[0] * native[1]) - 1) < 0.05
        assert abs(draw[0] / draw[1] - size[0] / size[1]) / (size[0] / size[1]) < 0.05


def test_what_the_notes_say_and_how_many_steps_the_refine_pass_takes():
    assert plan_passes(512, 512, (512, 512), 0.35, 25).note() == "drawn at 512x512"
    two = plan_passes(512, 768, (256, 384), 0.35, 25)
    assert two.note() == "drawn at 256x384, refined at 512x768" and two.refine_steps == 8 and two.refines
    upscale = plan_passes(512, 768, (256, 384), 0.0, 25)
    assert upscale.note() == "drawn at 256x384, upscaled to 512x768" and upscale.refine_steps == 0
    assert plan_passes(512, 512, (512, 512), 0.35, 25).refine_steps == 0
    # a strength that leaves no step of the schedule (diffusers would refuse the call) upscales only
    few = plan_passes(512, 768, (256, 384), 0.35, 2)
    assert few.refine_steps == 0 and not few.refines and few.note() == "drawn at 256x384, upscaled to 512x768"


@pytest.mark.parametrize("size, most, overlap", [
    ((2048, 3072), (1280, 1280), 128), ((2560, 1000), (1280, 1280), 128), ((1281, 64), (1280, 1280), 128),
    ((256, 384), (160, 240), 128), ((4096, 4096), (640, 640), 64), ((2047, 1501), (1000, 704), 128),
])
def test_tiles_cover_the_image_in_reading_order_each_bounded_and_overlapping(size, most, overlap):
    tiles = tile_grid(*size, most, overlap)
    overlap = min(overlap, most[0] // 2, most[1] // 2)
    assert tiles == tuple(sorted(tiles, key=lambda b: (b[1], b[0])))
    cover = np.zeros(size[::-1], bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 <= most[0] and y1 - y0 <= most[1]
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    xs = sorted({(b[0], b[2]) for b in tiles})
    ys = sorted({(b[1], b[3]) for b in tiles})
    for spans in (xs, ys):
        assert all(a1 - b0 >= overlap for (_, a1), (b0, _) in zip(spans, spans[1:]))


def test_tile_weights_ramp_only_towards_the_image_s_interior():
    size = (300, 200)
    inner = tile_weights((100, 50, 228, 178), size, overlap=32)
    assert inner.shape == (128, 128) and inner[64, 64] == 1.0 and inner[0, 64] < 0.05 and inner[64, -1] < 0.05
    corner = tile_weights((0, 0, 128, 128), size, overlap=32)
    assert corner[0, 0] == 1.0 and corner[0, 64] == 1.0 and corner[-1, 64] < 0.05 and corner[64, -1] < 0.05
    whole = tile_weights((0, 0, 300, 200), size, overlap=32)
    assert (whole == 1.0).all()
    assert ((inner >= 0) & (inner <= 1)).all()


def test_a_refine_pass_above_tile_above_times_the_native_area_runs_in_tiles():
    big = plan_passes(2048, 3072, (512, 512), 0.35, 25)
    assert len(big.tiles) == 6 and big.refine_calls == 6 and big.refine_area > 2048 * 3072
    assert big.note() == "drawn at 416x624, refined at 2048x3072 in 6 tiles"
    assert plan_passes(1024, 1536, (512, 512), 0.35, 25).tiles == ()           # within 6.25x: one call
    assert plan_passes(1024, 1536, (512, 512), 0.35, 25, tile_above=4).refine_calls == 2
    assert plan_passes(2048, 3072, (512, 512), 0.0, 25).refine_calls == 0        # upscale only: no call at all


# ------------------------------------------------------------------------------------------- real jobs

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    main = ensure_demo_model(d / "main")
    return {"main": main, "cn": ensure_demo_controlnet(d / "cn", seed=0, base_model=main),
            "up": write_demo_upscaler(d / "4x.safetensors", detail=1.0),
            "bad-up": write_random_safetensors(d / "random.safetensors")}


@pytest.fixture()
def rt(tmp_path, redis_url, folders) -> WorkerRuntime:
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(folders["main"])},
               "defaults": {"steps": STEPS}, "native": {"width": NATIVE[0], "height": NATIVE[1]}},
              {"ModelCode": "cn", "Name": "cn", "ModelType": "ControlModel", "source": {"path": str(folders["cn"])}},
              {"ModelCode": "main-up", "Name": "main-up", "ModelType": "Main", "source": {"path": str(folders["main"])},
               "defaults": {"steps": STEPS}, "native": {"width": NATIVE[0], "height": NATIVE[1]},
               "refine": {"upscaler": "up"}}]
    models += [{"ModelCode": code, "Name": code, "ModelType": "Upscaler", "source": {"file": str(folders[code])},
                "tile": {"size": 40, "overlap": 16}} for code in ("up", "bad-up")]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    return WorkerRuntime.build(settings)


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real pipeline call of the test (support.spies)."""
    return spy_pipeline_calls(monkeypatch)


def generate(rt: WorkerRuntime, width: int, height: int, batch: int = 1, main_model: str = "main", **job):
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-passes", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model=main_model, seed=7, width=width, height=height, batch_size=batch,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask), **job).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    comp = prepare(man, mask, width, height, "ResizeAndFill", False)
    images = [np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, name))).convert("RGB"))
              for name in rec.images]
    for image in images:  # the clothes are the mannequin's pixels exactly, at the size asked
        assert image.shape == (height, width, 3)
        assert np.array_equal(image[comp.keep], np.asarray(comp.image)[comp.keep])
    return rec, images


def test_a_request_within_the_native_area_runs_one_pass_as_asked(rt, calls):
    rec, _ = generate(rt, 64, 96)
    assert [c["size"] for c in calls] == [(64, 96)] and calls[0]["strength"] == 1.0
    assert "drawn at 64x96" in rec.notes and (rec.step, rec.total_steps) == (STEPS, STEPS)


def test_a_larger_request_is_drawn_at_the_native_size_then_refined_at_its_own(rt, calls):
    rec, images = generate(rt, 128, 192, batch=3)
    assert [(c["size"], c["strength"], c["images"]) for c in calls] == [((64, 96), 1.0, 3), ((128, 192), 0.35, 3)]
    assert "drawn at 64x96, refined at 128x192" in rec.notes
    refine_steps = int(STEPS * 0.35)
    assert (rec.step, rec.total_steps) == ((STEPS + refine_steps) * 3, (STEPS + refine_steps) * 3)
    assert len(images) == 3 and not np.array_equal(images[0], images[1])  # image i from seed + i


def test_refine_strength_0_upscales_only(rt, calls):
    rec, _ = generate(rt, 128, 192, refine_strength=0.0)
    assert [c["size"] for c in calls] == [(64, 96)]
    assert "drawn at 64x96, upscaled to 128x192" in rec.notes and rec.step == rec.total_steps == STEPS


def test_the_request_s_refine_strength_overrides_the_model_s(rt, calls):
    rec, _ = generate(rt, 128, 192, refine_strength=0.75)
    assert [(c["size"], c["strength"]) for c in calls] == [((64, 96), 1.0), ((128, 192), 0.75)]
    assert rec.step == rec.total_steps == STEPS + int(STEPS * 0.75)


def test_control_units_apply_in_both_passes_with_their_maps_at_each_pass_s_size(rt, calls):
    unit = ControlUnitRef(image="", preprocessor=None, resolution=512, control_model="cn", control_weight=1.0,
                          starting_step=0.0, ending_step=1.0)
    man, _ = example_inputs()
    unit = unit.model_copy(update={"image": stored(rt, man)})  # the mannequin photo as the control map
    generate(rt, 128, 192, control_units=[unit])
    assert [(c["size"], c["strength"], c["control"]) for c in calls] == [
        ((64, 96), 1.0, [(64, 96)]), ((128, 192), 0.35, [(128, 192)])]


def test_a_large_request_is_refined_in_tiles_with_their_control_maps_the_clothes_exact(rt, calls):
    unit = ControlUnitRef(image="", preprocessor=None, resolution=512, control_model="cn", control_weight=1.0,
                          starting_step=0.0, ending_step=1.0)
    man, _ = example_inputs()
    unit = unit.model_copy(update={"image": stored(rt, man)})
    rec, images = generate(rt, 256, 384, batch=2, control_units=[unit])   # > 6.25 x 64x96: tiles of <= 160x240
    tiles = plan_passes(256, 384, NATIVE, 0.35, STEPS).tiles
    assert len(tiles) == 6
    assert [(c["size"], c["strength"], c["images"], c["control"]) for c in calls] == [
        ((64, 96), 1.0, 2, [(64, 96)])] + [((x1 - x0, y1 - y0), 0.35, 2, [(x1 - x0, y1 - y0)])
                                           for x0, y0, x1, y1 in tiles]
    assert "drawn at 64x96, refined at 256x384 in 6 tiles" in rec.notes
    total = (STEPS + int(STEPS * 0.35) * 6) * 2
    assert (rec.step, rec.total_steps) == (total, total)
    calls.clear()
    _, upscaled_only = generate(rt, 256, 384, batch=2, control_units=[unit], refine_strength=0.0)
    for x0, y0, x1, y1 in tiles:  # every tile redrew its part of the picture
        assert not np.array_equal(images[0][y0:y1, x0:x1], upscaled_only[0][y0:y1, x0:x1])


def test_a_tiled_refine_keeps_a_reference_background_exactly_at_refer_strength_1(rt, calls):
    man, mask = example_inputs()
    background = Image.new("RGB", (256, 384), (10, 120, 200))
    rec, images = generate(rt, 256, 384, background_image=stored(rt, background), refer_strength=1.0,
                           background_resize_mode="JustResize")
    assert len(calls) == 1 + 6 and "in 6 tiles" in rec.notes[0]
    comp = prepare(man, mask, 256, 384, "ResizeAndFill", False)
    assert (images[0][~comp.keep] == (10, 120, 200)).all()   # held exactly across the tiles and their overlaps

# ------------------------------------------------------------------------------------------- an Upscaler between

@pytest.fixture()
def tiles(monkeypatch) -> list[tuple[int, ...]]:
    """The shape of every tile an Upscaler runs on."""
    seen = []
    original = SuperResolution.run

    def spy(self, tile):
        seen.append(tile.shape)
        return original(self, tile)

    monkeypatch.setattr(SuperResolution, "run", spy)
    return seen


@pytest.mark.parametrize("batch", [1, 3])
def test_refine_upscaler_enlarges_pass_1_and_the_clothes_stay_exact(rt, calls, tiles, batch):
    rec, images = generate(rt, 128, 192, batch=batch, refine_upscaler="up")   # generate() checks the clothes
    assert [c["size"] for c in calls] == [(64, 96), (128, 192)]
    assert "drawn at 64x96, refined at 128x192" in rec.notes and "upscaled by up (x4) to 128x192" in rec.notes
    # 64x96 -> 256x384 once, on tiles of at most 40 overlapping by 16 or more: 4 rows of 36 x 2 columns of 40
    assert len(tiles) == 4 * 2 * batch and set(tiles) == {(3, 36, 40)}
    _, lanczos = generate(rt, 128, 192, batch=batch)
    assert not np.array_equal(images[0], lanczos[0])                  # the upscaler made a difference


def test_the_models_refine_upscaler_and_lanczos_over_it(rt, calls, tiles):
    rec, _ = generate(rt, 128, 192, main_model="main-up", refine_strength=0.0)   # upscale only: one pipeline call
    assert [c["size"] for c in calls] == [(64, 96)] and tiles
    assert "drawn at 64x96, upscaled to 128x192" in rec.notes and "upscaled by up (x4) to 128x192" in rec.notes
    tiles.clear()
    rec, _ = generate(rt, 128, 192, main_model="main-up", refine_upscaler="Lanczos")
    assert not tiles and not any(n.startswith("upscaled by") for n in rec.notes)


def test_one_pass_uses_no_upscaler_and_says_so_when_one_was_asked(rt, tiles):
    rec, _ = generate(rt, 64, 96, refine_upscaler="up")
    assert not tiles and "Refine.Upscaler: up not used (drawn in one pass)" in rec.notes
    rec, _ = generate(rt, 64, 96, main_model="main-up")
    assert not any("Upscaler" in n or n.startswith("upscaled") for n in rec.notes)


@pytest.mark.parametrize("code, message", [("bad-up", "Model [bad-up] could not be loaded"),
                                           ("cn", "Model [cn] not exists")])
def test_a_refine_upscaler_that_cannot_be_used_ends_in_error_240(rt, code, message):
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-passes", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=128, height=192, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask),
                           refine_upscaler=code).to_wire())
    rec = rt.store.get(uid)
    assert (rec.status, rec.error_code, rec.error_message) == ("Error", 240, message) and rec.images == []
