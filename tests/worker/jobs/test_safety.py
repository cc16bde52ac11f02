"""The safety policy of a Main model (``safety:`` in models_config; workers/inference/safety.py, the generate job's
``_screen``), both ways, with tiny real diffusers safety checkers built by code (tests/support/safety.py):

* a checkpoint's own safety checker is never loaded with it (folder, single file with a config folder that has one),
  silently or not, and does not count in its size estimate;
* ``none``: no checker loaded, every image stored as drawn (from a checkpoint whose own checker flags everything);
* ``checker``: run after generation on real jobs (run_job, the real Redis task store, the demo model): nothing
  flagged -> every image stored; all flagged -> Error 506 naming the model, no image stored, never a black one;
  image 2 of 3 flagged -> images 1 and 3 stored exactly as drawn, with the Notes line.
"""
from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image

from app.contract.codes import ErrorCode
from app.contract.jobs import JobMessage
from app.contract.registry import ModelSource, Registry
from app.contract.settings import Settings
from support.api import example_inputs, stored
from support.ldm import save_single_file
from support.models import load_folder, main_entry
from support.safety import FLAG_ALL, FLAG_NONE, add_checker_to_pipeline, build_checker, image_embeddings
from support.tiny import build_sd15
from workers.demo.model import ensure_demo_model
from workers.inference.safety import SafetyCheckerError, load_safety_checker, withheld_note
from workers.jobs.generate import run_job
from workers.models.loading import estimate_bytes, load_main_pipeline, without_safety_checker
from workers.runtime import WorkerRuntime

STEPS = 2
SIZE = (64, 64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("safety")
    demo = ensure_demo_model(d / "demo")
    own = d / "with-own-checker"  # the demo model as a published checkpoint: its own checker flags everything
    shutil.copytree(demo, own)
    add_checker_to_pipeline(own, FLAG_ALL)
    return {"demo": demo, "own": own, "all": build_checker(d / "flags-all", FLAG_ALL),
            "nothing": build_checker(d / "flags-nothing", FLAG_NONE), "partial": d / "flags-image-2"}


@pytest.fixture(scope="module")
def spy_checkers():
    """Every StableDiffusionSafetyChecker built in the test (an observer: construction goes on as usual)."""
    built: list[StableDiffusionSafetyChecker] = []
    original = StableDiffusionSafetyChecker.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StableDiffusionSafetyChecker, "__init__", init)
        yield built


# ------------------------------------------------------------------------------------------- loading

def test_the_fixture_checkpoint_really_carries_a_checker(folders):
    """What diffusers does with the folder when nobody says otherwise: loads its checker (so the next tests mean
    something)."""
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folders["own"], local_files_only=True)
    assert isinstance(pipe.safety_checker, StableDiffusionSafetyChecker) and pipe.feature_extractor is not None


def warnings_of_loading(folder: Path, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe = load_folder(folder)
    return pipe, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_checkpoint_folders_own_checker_is_never_loaded(folders, spy_checkers, caplog):
    _, without = warnings_of_loading(folders["demo"], caplog)
    spy_checkers.clear()
    pipe, warned = warnings_of_loading(folders["own"], caplog)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.config.requires_safety_checker is False
    assert spy_checkers == []  # not even built and thrown away
    assert warned == without  # silently: the same (demo VAE) warnings as the folder without a checker
    # and the model cache does not make room for it
    own, demo = (estimate_bytes(ModelSource(path=folders[k]), torch.float32) for k in ("own", "demo"))
    assert own == demo and own > 0


def test_a_single_files_config_folder_with_a_checker_loads_none(tmp_path, spy_checkers, caplog):
    folder = build_sd15(tmp_path / "sd15", in_channels=9)
    file, config = save_single_file(folder, tmp_path / "tiny.safetensors", tmp_path / "config")
    add_checker_to_pipeline(config, FLAG_ALL)
    entry = main_entry("single", file=str(file), config=str(config))
    spy_checkers.clear()
    with caplog.at_level(logging.WARNING):
        pipe = load_main_pipeline(entry, Registry([entry], tmp_path), "cpu", torch.float32, tmp_path)
    assert pipe.safety_checker is None and pipe.feature_extractor is None and spy_checkers == []
    assert not [r for r in caplog.records if "safety" in r.getMessage().lower()]


def test_each_pipeline_class_gets_the_arguments_that_keep_a_checker_out():
    assert without_safety_checker(StableDiffusionInpaintPipeline) == {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    assert without_safety_checker(StableDiffusionXLInpaintPipeline) == {}  # it has no checker to keep out


def test_a_checker_folder_is_a_checker_or_a_pipeline_with_one(folders, tmp_path):
    flat = load_safety_checker(folders["nothing"], "cpu", torch.float32)
    in_pipeline = load_safety_checker(folders["own"], "cpu", torch.float32)  # safety_checker/ + feature_extractor/
    image = np.full((40, 30, 3), 128, np.uint8)
    assert flat.flags([image, image]) == [False, False] and in_pipeline.flags([image]) == [True]
    with pytest.raises(SafetyCheckerError, match="does not exist"):
        load_safety_checker(tmp_path / "nowhere", "cpu", torch.float32)
    with pytest.raises(SafetyCheckerError, match="holds no safety checker"):
        load_safety_checker(folders["demo"], "cpu", torch.float32)  # a pipeline folder without one
    not_a_checker = tmp_path / "vae"
    shutil.copytree(folders["demo"] / "vae", not_a_checker)
    (not_a_checker / "preprocessor_config.json").write_text("{}")
    with pytest.raises(SafetyCheckerError, match="not a StableDiffusionSafetyChecker"):
        load_safety_checker(not_a_checker, "cpu", torch.float32)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(folders["all"], no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(SafetyCheckerError, match="preprocessor_config.json"):
        load_safety_checker(no_processor, "cpu", torch.float32)


def test_the_checker_reads_flags_and_never_blacks_out_the_images(folders):
    checker = load_safety_checker(folders["all"], "cpu", torch.float32)
    images = [np.full((24, 16, 3), v, np.uint8) for v in (60, 200)]
    before = [image.copy() for image in images]
    assert checker.flags(images) == [True, True] and checker.flags([]) == []
    assert all(np.array_equal(a, b) for a, b in zip(images, before, strict=True))


# ------------------------------------------------------------------------------------------- real jobs

@pytest.fixture()
def rt(tmp_path, redis_url, folders) -> WorkerRuntime:
    def main(code: str, path: Path, safety) -> dict:
        return {"ModelCode": code, "Name": code, "ModelType": "Main", "source": {"path": str(path)},
                "defaults": {"steps": STEPS}, "safety": safety}

    models = [main("plain", folders["own"], "none"),
              main("nothing", folders["demo"], {"policy": "checker", "checker": str(folders["nothing"])}),
              main("strict", folders["demo"], {"policy": "checker", "checker": str(folders["all"])}),
              main("partial", folders["demo"], {"policy": "checker", "checker": str(folders["partial"])}),
              main("broken", folders["demo"], {"policy": "checker", "checker": "no-such-checker"})]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    return WorkerRuntime.build(settings)


def generate(rt: WorkerRuntime, model: str, batch: int):
    """Run a real job on ``model``; its record and stored images."""
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-safety", None, "GenerateFromMannequin", 11, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model=model, seed=11, width=SIZE[0], height=SIZE[1], batch_size=batch,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask)).to_wire())
    rec = rt.store.get(uid)
    images = [np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, name))).convert("RGB"))
              for name in rec.images]
    return rec, images


def withheld(rec) -> list[str]:
    return [note for note in rec.notes if "withheld" in note]


def test_policy_none_loads_no_checker_and_stores_every_image(rt, spy_checkers):
    spy_checkers.clear()
    rec, images = generate(rt, "plain", 2)  # its checkpoint's own checker would flag (and black out) everything
    assert rec.status == "Finished" and len(images) == 2 and withheld(rec) == []
    assert all(image.std() > 1 for image in images)  # drawn, not blacked out
    assert spy_checkers == [] and rt.cache.stats.kind("safety").loads == 0


def test_a_checker_that_flags_nothing_lets_every_image_through(rt):
    rec, images = generate(rt, "nothing", 2)
    assert rec.status == "Finished" and len(images) == 2 and withheld(rec) == []
    assert rec.consumed_points == 2
    generate(rt, "nothing", 1)
    kind = rt.cache.stats.kind("safety")
    assert (kind.loads, kind.hits) == (1, 1)  # loaded once, through the model cache


def test_a_checker_that_flags_everything_ends_the_task_in_error_with_no_image(rt):
    rec, images = generate(rt, "strict", 2)
    assert rec.status == "Error" and rec.error_code == ErrorCode.WITHHELD == 506
    assert rec.error_message == "all 2 image(s) withheld by the safety checker of Model [strict]"
    assert images == [] and rec.images == [] and rec.consumed_points == 0
    assert withheld(rec) == [withheld_note(1, 2), withheld_note(2, 2)]
    assert rt.storage.read_result(rec.uid, "0.png") is None


def test_only_the_flagged_image_of_a_batch_is_withheld(rt, folders):
    """A checker that flags image 2 of 3 only: its one concept is the direction that sets image 2's embedding apart
    from the others', its threshold half-way between image 2's cosine and the closest other's."""
    drawn, images = generate(rt, "nothing", 3)
    assert drawn.status == "Finished" and len(images) == 3
    embeds = image_embeddings(folders["nothing"], images)
    direction = embeds[1] - (embeds[0] + embeds[2]) / 2
    direction /= np.linalg.norm(direction)
    cos = embeds @ direction
    assert cos[1] - max(cos[0], cos[2]) > 0.02, cos  # far enough apart for the checker's 3-decimal rounding
    build_checker(folders["partial"], float(cos[1] + max(cos[0], cos[2])) / 2, direction)

    rec, kept = generate(rt, "partial", 3)
    assert rec.status == "Finished" and rec.error_code == 0
    assert withheld(rec) == ["image 2 of 3 withheld by the safety checker"]
    assert len(kept) == 2 and rec.consumed_points == 2
    assert np.array_equal(kept[0], images[0]) and np.array_equal(kept[1], images[2])  # exactly as drawn


def test_a_checker_that_cannot_be_loaded_is_a_model_error_naming_it(rt):
    rec, images = generate(rt, "broken", 1)
    assert rec.status == "Error" and rec.error_code == 240 and images == []
    assert rec.error_message == "Model [safety:broken] could not be loaded"
