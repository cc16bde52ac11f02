"""The faces of a generation redrawn after its passes (workers/jobs/generate.py ``_refine_faces``, docs/faces.md), in
real jobs: run_job against the real Redis task store, the tiny demo model through the production loader, a spy on
the real pipeline calls.

The demo model draws noise, in which no detector finds a face; so most tests give the worker a stand-in detector
(through ``Loaders``, the seam the model-cache tests use) that reports two faces where the test puts them, and
compare the same job with and without FaceRefine: the images differ near those faces only, never on the clothes.
The last test runs the real detector on a real photo that a generation holds exactly (ReferStrength 1)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app.contract.jobs import JobMessage
from app.contract.settings import Settings
from support.api import stored
from support.faces import photo
from support.spies import spy_pipeline_calls
from workers.demo.model import ensure_demo_model
from workers.faces.detect import Face, load_face_detector
from workers.faces.geometry import blend_margin, crop_box, face_box, redraw_size
from workers.faces.redraw import face_steps
from workers.inference.compose import prepare
from workers.jobs.generate import run_job
from workers.models.kinds import Loaders
from workers.runtime import WorkerRuntime

STEPS = 8
SIZE = NATIVE = (160, 120)
FACES = [Face(box=(30.0, 14.0, 60.0, 50.0), score=0.999, landmarks=((40.0, 28.0),) * 5),
         Face(box=(100.0, 20.0, 128.0, 54.0), score=0.98, landmarks=((110.0, 33.0),) * 5)]


@dataclass
class StandIn:
    """A detector that reports ``faces`` on every image (those scored at least ``min_score``) and counts its calls."""

    faces: list[Face]
    images: list[tuple[int, int]] = field(default_factory=list)

    def detect(self, image, min_score: float = 0.9) -> list[Face]:
        self.images.append(image.shape[:2])
        return [face for face in self.faces if face.score >= min_score]


@pytest.fixture(scope="module")
def main_folder(tmp_path_factory) -> Path:
    return ensure_demo_model(tmp_path_factory.mktemp("models") / "main")


def runtime(tmp_path: Path, redis_url: str, folder: Path, detector, **faces) -> WorkerRuntime:
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(folder)},
               "defaults": {"steps": STEPS, "guidance_scale": 5.0},
               "native": {"width": NATIVE[0], "height": NATIVE[1]}, **({"faces": faces} if faces else {})}]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    return WorkerRuntime.build(settings, loaders=Loaders(face_detector=lambda device: detector))


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real pipeline call of the test (support.spies)."""
    return spy_pipeline_calls(monkeypatch)


def _inputs() -> tuple[Image.Image, Image.Image]:
    """A mannequin photo and its clothes mask: the bottom half, and a patch over the first face's chin."""
    rng = np.random.default_rng(1)
    man = Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (0, 64, SIZE[0], SIZE[1]))
    mask.paste(255, (36, 44, 56, 64))
    return man, mask


def generate(rt: WorkerRuntime, batch: int = 1, **job) -> tuple[object, list[np.ndarray], np.ndarray]:
    man, mask = _inputs()
    uid, _ = rt.store.create("pk-faces", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=SIZE[0], height=SIZE[1], batch_size=batch,
                           positive_prompts=["a woman"], mannequin_image=stored(rt, man),
                           clothes_mask=stored(rt, mask), **job).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    keep = prepare(man, mask, *SIZE, "ResizeAndFill", False).keep
    images = [np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, n))).convert("RGB")) for n in rec.images]
    for image in images:  # the clothes are the mannequin's pixels exactly
        assert np.array_equal(image[keep], np.asarray(man)[keep])
    return rec, images, keep


def _near(faces: list[Face]) -> np.ndarray:
    near = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    for face in faces:
        left, top, right, bottom = face_box(face.box, *SIZE)
        m = blend_margin(face.box)
        near[max(0, top - m):bottom + m, max(0, left - m):right + m] = True
    return near


def test_the_faces_are_redrawn_after_the_passes_and_nothing_else_changes(tmp_path, redis_url, main_folder, calls):
    detector = StandIn(FACES)
    rt = runtime(tmp_path, redis_url, main_folder, detector, prompt="detailed face")
    plain, [without], _ = generate(rt, face_refine=False)
    assert detector.images == [] and len(calls) == 1 and not any("face" in n for n in plain.notes)
    rec, [with_faces], keep = generate(rt)
    assert detector.images == [(SIZE[1], SIZE[0])]
    per_face = face_steps(STEPS, 0.4)  # the default faces.strength
    crops = [crop_box(f.box, *SIZE) for f in FACES]
    assert [(c["size"], c["strength"], c["prompt"]) for c in calls[1:]] == [
        (SIZE, 1.0, "a woman")] + [(redraw_size(r - x, b - y, NATIVE), 0.4, "a woman, detailed face")
                                   for x, y, r, b in crops]
    changed = (with_faces != without).any(axis=2)
    assert not (changed & ~_near(FACES)).any() and not changed[keep].any()
    for face in FACES:
        left, top, right, bottom = face_box(face.box, *SIZE)
        assert changed[top:bottom, left:right][~keep[top:bottom, left:right]].mean() > 0.9
    assert "refined 2 face(s)" in rec.notes
    assert (rec.step, rec.total_steps) == (STEPS + 2 * per_face, STEPS + 2 * per_face)  # TotalSteps grew


def test_the_request_s_strength_and_the_model_s_sizes_and_score(tmp_path, redis_url, main_folder, calls):
    faces = [*FACES, Face(box=(2.0, 2.0, 12.0, 14.0), score=0.99, landmarks=((5.0, 5.0),) * 5),  # 12 px: too small
             Face(box=(70.0, 60.0, 100.0, 96.0), score=0.85, landmarks=((80.0, 70.0),) * 5)]  # below min_score
    rt = runtime(tmp_path, redis_url, main_folder, StandIn(faces), min_size=20, max_size=35)
    rec, _, _ = generate(rt, face_strength=0.75)
    assert [c["strength"] for c in calls] == [1.0, 0.75]  # the second face is 36 px tall: above max_size 35
    assert "refined 1 face(s); left as drawn: 2 face(s) outside 20..35 px" in rec.notes
    assert rec.total_steps == STEPS + face_steps(STEPS, 0.75)


def test_a_model_whose_faces_are_not_refined_unless_the_request_asks(tmp_path, redis_url, main_folder, calls):
    detector = StandIn(FACES)
    rt = runtime(tmp_path, redis_url, main_folder, detector, refine=False)
    rec, _, _ = generate(rt)
    assert detector.images == [] and len(calls) == 1 and rec.total_steps == STEPS
    assert not any("face" in note for note in rec.notes)
    rec, _, _ = generate(rt, face_refine=True, batch=2)  # FaceRefine sent: each image's faces
    assert detector.images == [(SIZE[1], SIZE[0])] * 2 and len(calls) == 2 + 4
    assert "refined 4 face(s)" in rec.notes and rec.total_steps == 2 * STEPS + 4 * face_steps(STEPS, 0.4)


def test_a_strength_that_leaves_no_step_and_a_photo_without_faces(tmp_path, redis_url, main_folder, calls):
    rt = runtime(tmp_path, redis_url, main_folder, StandIn(FACES))
    rec, _, _ = generate(rt, face_strength=0.1)  # int(8 x 0.1) = 0
    assert len(calls) == 1 and "FaceRefine.Strength 0.1 leaves no denoising step of 8: no face redrawn" in rec.notes
    rt = runtime(tmp_path, redis_url, main_folder, StandIn([]))
    rec, _, _ = generate(rt)
    assert len(calls) == 2 and "no face found to refine" in rec.notes and rec.total_steps == STEPS


def test_the_real_detector_finds_the_faces_a_generation_holds_and_leaves_them_exact(tmp_path, redis_url, main_folder,
                                                                                     calls):
    """A cut-out mannequin whose figure is its clothes, on the two-people photo as the background held exactly
    (ReferStrength 1): the image is the photo but for the clothes; the detector finds both faces, which lie on held
    pixels, so nothing is redrawn and the photo stays exact."""
    background = photo("two_people.jpg").resize((320, 188))
    rt = runtime(tmp_path, redis_url, main_folder, load_face_detector("cpu"))
    cutout = Image.new("RGBA", (320, 188), (0, 0, 0, 0))
    cutout.paste((200, 30, 30, 255), (140, 120, 180, 188))
    mask = Image.new("L", (320, 188), 0)
    mask.paste(255, (140, 120, 180, 188))
    uid, _ = rt.store.create("pk-faces", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=320, height=188, batch_size=1,
                           mannequin_image=stored(rt, cutout), clothes_mask=stored(rt, mask),
                           background_image=stored(rt, background), refer_strength=1.0).to_wire())
    rec = rt.store.get(uid)
    assert rec.status == "Finished", rec.error_message
    image = np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, rec.images[0]))).convert("RGB"))
    held = np.ones((188, 320), dtype=bool)
    held[120:, 140:180] = False
    assert np.array_equal(image[held], np.asarray(background)[held])
    assert "refined 0 face(s); left as drawn: 2 face(s) on kept pixels" in rec.notes
    assert [c["strength"] for c in calls] == [1.0, 0.35]  # the two passes (320x188 is above the native area) only
