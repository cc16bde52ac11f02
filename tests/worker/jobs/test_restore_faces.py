"""The RestoreFaces job (workers/jobs/restore_faces.py), in-process with a real WorkerRuntime against the real Redis
task store and storage, the real face detector and the tiny demo model through the production loader, on real photos
of people: every face redrawn and nothing farther than the blend margin changed (bit-exact), alpha kept, a photo
without a face stored unchanged, the Notes, the progress, the seed; a missing input, a model gone from the config."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from app.contract.jobs import RestoreFacesJobMessage
from app.contract.settings import Settings
from support.api import stored
from support.faces import FACES, photo
from support.spies import spy_pipeline_calls
from workers.demo.model import ensure_demo_model
from workers.faces.detect import load_face_detector
from workers.faces.geometry import blend_margin, crop_box, face_box, redraw_size
from workers.faces.redraw import RESTORE_PROMPT, face_steps
from workers.jobs.restore_faces import run_restore_faces_job
from workers.runtime import WorkerRuntime

STEPS = 8
NATIVE = (128, 128)


@pytest.fixture(scope="module")
def rt(tmp_path_factory, redis_url) -> WorkerRuntime:
    base = tmp_path_factory.mktemp("restore")
    main = ensure_demo_model(base / "main")
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(main)},
               "defaults": {"steps": STEPS, "guidance_scale": 5.0}, "TriggerWordList": ["house style"],
               "native": {"width": NATIVE[0], "height": NATIVE[1]}, "faces": {"refine": False}},
              {"ModelCode": "big-faces", "Name": "big", "ModelType": "Main", "source": {"path": str(main)},
               "defaults": {"steps": STEPS}, "native": {"width": NATIVE[0], "height": NATIVE[1]},
               "faces": {"min_size": 120, "prompt": "sharp eyes"}},
              {"ModelCode": "lora", "Name": "lora", "ModelType": "LoRA", "source": {"demo": "lora-kohya"}}]
    config = base / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=base / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    return WorkerRuntime.build(settings)


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real pipeline call of the test (support.spies)."""
    return spy_pipeline_calls(monkeypatch)


def restore(rt: WorkerRuntime, image: Image.Image, strength: float = 0.5, model: str = "main", seed: int = 11):
    uid, _ = rt.store.create("pk-restore", None, "RestoreFaces", seed, 0)
    run_restore_faces_job(rt, RestoreFacesJobMessage(task_uid=uid, image=stored(rt, image), main_model=model,
                                                     strength=strength, seed=seed).to_wire())
    rec = rt.store.get(uid)
    if rec.status != "Finished":
        return rec, None
    assert rec.images == ["0.png"] and rec.seed == seed
    return rec, Image.open(io.BytesIO(rt.storage.read_result(uid, rec.images[0])))


def _near(image: Image.Image) -> np.ndarray:
    """The pixels within the blend margin of a face the detector finds (chessboard distance)."""
    near = np.zeros((image.height, image.width), dtype=bool)
    for face in load_face_detector("cpu").detect(image):
        left, top, right, bottom = face_box(face.box, image.width, image.height)
        m = blend_margin(face.box)
        near[max(0, top - m):bottom + m, max(0, left - m):right + m] = True
    return near


@pytest.mark.parametrize("name", sorted(FACES))
def test_every_face_is_redrawn_and_nothing_farther_than_the_blend_margin_changes(rt, calls, name):
    source = photo(name)
    rec, out = restore(rt, source)
    assert rec.status == "Finished", rec.error_message
    assert (out.size, out.mode) == (source.size, "RGB")
    faces = len(FACES[name][1])
    assert f"restored {faces} face(s)" in rec.notes
    before, after = np.asarray(source), np.asarray(out)
    changed = (before != after).any(axis=2)
    near = _near(source)
    assert np.array_equal(after[~near], before[~near])  # bit-exact away from the faces
    assert changed[near].mean() > 0.5
    per_face = face_steps(STEPS, 0.5)
    assert (rec.step, rec.total_steps) == (faces * per_face, faces * per_face)
    detected = load_face_detector("cpu").detect(source)
    crops = [crop_box(f.box, *source.size) for f in detected]
    assert [(c["size"], c["strength"], c["prompt"]) for c in calls] == [
        (redraw_size(r - x, b - y, NATIVE), 0.5, f"house style, {RESTORE_PROMPT}") for x, y, r, b in crops]


def test_an_rgba_photo_keeps_its_alpha_exactly(rt):
    source = photo("astronaut.jpg").convert("RGBA")
    alpha = Image.linear_gradient("L").resize(source.size)
    source.putalpha(alpha)
    rec, out = restore(rt, source)
    assert rec.status == "Finished", rec.error_message
    assert (out.size, out.mode) == (source.size, "RGBA") and "restored 1 face(s)" in rec.notes
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    near = _near(source.convert("RGB"))
    assert np.array_equal(np.asarray(out)[~near], np.asarray(source)[~near])
    assert (np.asarray(out)[near] != np.asarray(source)[near]).any()


def test_a_photo_without_a_face_is_stored_unchanged(rt, calls):
    source = photo("two_people.jpg").crop((230, 0, 420, 376))  # the curtain between the two men
    rec, out = restore(rt, source)
    assert rec.status == "Finished", rec.error_message
    assert np.array_equal(np.asarray(out), np.asarray(source)) and calls == []
    assert "no face found: the image is unchanged" in rec.notes and (rec.step, rec.total_steps) == (0, 0)
    assert rec.consumed_points == 1


def test_strength_0_and_the_model_s_min_size_and_prompt(rt, calls):
    source = photo("two_people.jpg")
    rec, out = restore(rt, source, strength=0.0)
    assert np.array_equal(np.asarray(out), np.asarray(source)) and calls == []
    assert "RestoreStrength 0 leaves no denoising step of 8: no face redrawn" in rec.notes
    rec, out = restore(rt, source, model="big-faces")  # its faces.min_size 120: the faces are about 115 px tall
    assert np.array_equal(np.asarray(out), np.asarray(source)) and calls == []
    assert "no face of 120 px or more found (2 smaller): the image is unchanged" in rec.notes
    rec, out = restore(rt, source.resize((1280, 752)), model="big-faces")
    assert "restored 2 face(s)" in rec.notes and [c["prompt"] for c in calls] == ["sharp eyes"] * 2


def test_the_same_seed_restores_the_same_faces(rt):
    source = photo("biden.jpg")
    a, b, c = (np.asarray(restore(rt, source, seed=s)[1]) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_missing_input_and_a_model_that_is_no_longer_main(rt):
    uid, _ = rt.store.create("pk-restore", None, "RestoreFaces", 0, 0)
    run_restore_faces_job(rt, RestoreFacesJobMessage(task_uid=uid, image="f" * 64, main_model="main", strength=0.5,
                                                     seed=1).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Error" and rec.error_code == 230 and "unreadable (missing)" in rec.error_message
    rec, _ = restore(rt, photo("biden.jpg"), model="lora")
    assert rec.status == "Error" and rec.error_code == 240 and rec.error_message == "Model [lora] not exists"


def test_the_result_is_a_png_of_the_photo_s_size(rt):
    source = photo("biden.jpg").convert("L")  # a grey photo gives an RGB result
    rec, out = restore(rt, source)
    assert rec.status == "Finished" and out.format == "PNG" and (out.size, out.mode) == (source.size, "RGB")
