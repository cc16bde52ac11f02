"""The worker runtime end to end in-process: real jobs (run_job) against the real Redis task store, real demo
models loaded through the production loaders into the one model cache."""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from app.contract.jobs import ControlUnitRef, JobMessage
from app.contract.settings import Settings
from support.api import example_inputs, stored
from support.models import load_folder
from workers.demo.control import ensure_demo_controlnet
from workers.demo.model import ensure_demo_model, ensure_demo_model_sd15
from workers.jobs.generate import run_job
from workers.lifecycle.stored import open_input
from workers.models.loading import load_controlnet
from workers.models.sizes import measure_bytes
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def two_of_each(tmp_path_factory) -> dict[str, Path]:
    """Two main models (9- and 4-channel) and two ControlNets (other weights), as folders on disk."""
    d = tmp_path_factory.mktemp("models")
    main_a = ensure_demo_model(d / "main-a")
    return {"main-a": main_a, "main-b": ensure_demo_model_sd15(d / "main-b", seed=1),
            "cn-a": ensure_demo_controlnet(d / "cn-a", seed=0, base_model=main_a),
            "cn-b": ensure_demo_controlnet(d / "cn-b", seed=1, base_model=main_a)}


def runtime_for(tmp_path: Path, redis_url: str, folders: dict[str, Path], budget: int) -> WorkerRuntime:
    models = [{"ModelCode": code, "Name": code, "ModelType": "Main", "source": {"path": str(folders[code])},
               "defaults": {"steps": 2}} for code in ("main-a", "main-b")]
    models += [{"ModelCode": code, "Name": code, "ModelType": "ControlModel", "source": {"path": str(folders[code])}}
               for code in ("cn-a", "cn-b")]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url, device="cpu",
                        model_cache_bytes=budget, progress_interval_s=0)
    return WorkerRuntime.build(settings)


def test_a_budget_for_one_pipeline_serves_jobs_alternating_two_models_and_two_controlnets(
        tmp_path, redis_url, two_of_each, caplog):
    pipelines = [measure_bytes(load_folder(two_of_each[code])) for code in ("main-a", "main-b")]
    controlnets = [measure_bytes(load_controlnet(two_of_each[code], "cpu", torch.float32)) for code in ("cn-a", "cn-b")]
    budget = max(pipelines) + max(controlnets)  # one pipeline with its ControlNet; never two pipelines
    assert budget < sum(pipelines)
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget)
    man, mask = example_inputs()
    mannequin, clothes = stored(rt, man), stored(rt, mask)
    caplog.set_level(logging.INFO)
    caplog.clear()  # from here on: only what the jobs log
    plan = [("main-a", "cn-a"), ("main-b", "cn-b"), ("main-a", "cn-b"), ("main-b", "cn-a"), ("main-a", "cn-a")]
    for main, controlnet in plan:
        uid, _ = rt.store.create("pk-runtime", None, "GenerateFromMannequin", 3, 0)
        unit = ControlUnitRef(image=mannequin, preprocessor=None, resolution=512, control_model=controlnet,
                              control_weight=1.0, starting_step=0.0, ending_step=1.0)
        run_job(rt, JobMessage(task_uid=uid, main_model=main, seed=3, width=64, height=64, batch_size=1,
                               mannequin_image=mannequin, clothes_mask=clothes, control_units=[unit]).to_wire())
        rec = rt.store.get(uid)
        assert rec.status == "Finished", (main, controlnet, rec.error_code, rec.error_message)
        assert {label for label, _ in rt.cache.cached("device")} == {main, controlnet}
        assert rt.cache.used_bytes("device") <= budget and rt.cache.held() == []
    assert rt.cache.stats.peak_bytes["device"] <= budget  # also right after every load
    # a model the next job uses again stays (cn-b in job 3, cn-a in job 5); every other one is reloaded
    stats = rt.cache.stats
    assert (stats.loads, stats.hits, stats.evictions) == (8, 2, 6)
    evicted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evicting")]
    assert len(evicted) == 6 and all("to make room for" in m for m in evicted)
    harmless = ("were passed to AutoencoderTiny", "Expected types for vae")
    assert not [r for r in caplog.records if any(h in r.getMessage() for h in harmless)]
    timing_lines = [r.getMessage() for r in caplog.records if " finished: " in r.getMessage()]
    assert len(timing_lines) == len(plan)
    for line in timing_lines:
        for phase in ("queue wait", "load", "inference", "store"):
            assert f"{phase} " in line, line


def test_a_job_that_fails_releases_its_models(tmp_path, redis_url, two_of_each):
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget=2**31)
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-runtime", None, "GenerateFromMannequin", 3, 0)
    unit = ControlUnitRef(image="f" * 64, preprocessor=None, resolution=512, control_model="cn-a",
                          control_weight=1.0, starting_step=0.0, ending_step=1.0)  # its image is missing
    run_job(rt, JobMessage(task_uid=uid, main_model="main-a", seed=3, width=64, height=64, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask),
                           control_units=[unit]).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Error" and rec.error_code == 230
    assert rt.cache.held() == []


def _generate(rt: WorkerRuntime, mannequin: str, clothes: str, seed: int, **job) -> Image.Image:
    uid, _ = rt.store.create("pk-runtime", None, "GenerateFromMannequin", seed, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main-a", seed=seed, width=64, height=64, batch_size=1,
                           mannequin_image=mannequin, clothes_mask=clothes, **job).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    return Image.open(io.BytesIO(rt.storage.read_result(uid, rec.images[0]))).convert("RGB")


def test_the_next_job_on_the_same_photo_and_mask_reuses_their_composition(tmp_path, redis_url, two_of_each):
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget=2**31)
    man, mask = example_inputs()
    mannequin, clothes = stored(rt, man), stored(rt, mask)
    first = _generate(rt, mannequin, clothes, seed=3)
    assert (rt.compositions.hits, rt.compositions.misses) == (0, 1)
    again = _generate(rt, mannequin, clothes, seed=3)  # the same task again: the same image, from the cache
    assert (rt.compositions.hits, rt.compositions.misses) == (1, 1)
    assert np.array_equal(np.asarray(again), np.asarray(first))
    _generate(rt, mannequin, clothes, seed=4)
    assert rt.compositions.hits == 2  # another seed, same inputs and geometry
    _generate(rt, mannequin, clothes, seed=4, invert_mask=True)
    _generate(rt, mannequin, clothes, seed=4, resize_mode="CropAndResize")
    _generate(rt, stored(rt, man.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), clothes, seed=4)
    assert (rt.compositions.hits, rt.compositions.misses) == (2, 4)  # each other geometry or photo is its own
    comp = rt.compositions.get((mannequin, clothes, 64, 64, JobMessage.model_fields["resize_mode"].default, False))
    with pytest.raises(ValueError):  # shared between jobs: nobody may change it
        comp.keep[0, 0] = True


def test_without_a_composition_cache_every_job_composes(tmp_path, redis_url, two_of_each):
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget=2**31)
    uncached = WorkerRuntime.build(rt.settings.model_copy(update={"composition_cache_bytes": 0}))
    man, mask = example_inputs()
    mannequin, clothes = stored(rt, man), stored(rt, mask)
    assert uncached.compositions is None
    assert np.array_equal(np.asarray(_generate(uncached, mannequin, clothes, seed=5)),
                          np.asarray(_generate(rt, mannequin, clothes, seed=5)))


@pytest.mark.parametrize("interval, writes", [(0, 2), (3600, 0)])
def test_progress_is_written_at_most_every_interval_and_finished_says_every_step_ran(
        tmp_path, redis_url, two_of_each, interval, writes):
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget=2**31)
    rt = WorkerRuntime.build(rt.settings.model_copy(update={"progress_interval_s": interval}))
    written = []
    set_progress = rt.store.set_progress
    rt.store.set_progress = lambda uid, step, total: (written.append((step, total)), set_progress(uid, step, total))
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-runtime", None, "GenerateFromMannequin", 3, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main-a", seed=3, width=64, height=64, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask)).to_wire())
    rec = rt.store.get(uid)
    # the demo's 2 steps: each written when the interval allows it (0: every step; an hour: none, the first
    # write waits an interval after the run starts), and the Finished task says all of them ran
    assert written == [(1, 2), (2, 2)][:writes]
    assert rec.status == "Finished" and (rec.step, rec.total_steps) == (2, 2)


def test_a_stored_photo_is_read_upright_by_its_exif_orientation(tmp_path, redis_url, two_of_each):
    rt = runtime_for(tmp_path, redis_url, two_of_each, budget=2**31)
    photo = Image.new("RGB", (40, 20), (200, 10, 10))
    photo.paste((10, 200, 10), (0, 0, 10, 20))  # green on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show it rotated 90 degrees clockwise
    buf = io.BytesIO()
    photo.save(buf, format="PNG", exif=exif)
    data = buf.getvalue()
    key = rt.storage.put_input(hashlib.sha256(data).hexdigest(), data)
    upright = open_input(rt, key)
    assert upright.size == (20, 40) and upright.getpixel((10, 2)) == (10, 200, 10)  # the left edge is now on top
