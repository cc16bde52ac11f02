"""A face redrawn by a real inpainting pipeline (workers/faces/redraw.py: the tiny demo model, loaded by the production
loader) on a real photo of two people: the pixels change near the faces only (nothing farther than the blend
margin), kept pixels stay bit-exact, the crop is drawn at the model's native area by img2img at the face strength,
and the steps of every face are counted as one run."""
from __future__ import annotations

import math

import numpy as np
import pytest

from support.faces import pixels
from support.spies import spy_pipeline_calls
from workers.faces.detect import Face, load_face_detector
from workers.faces.geometry import blend_margin, crop_box, face_box, redraw_size
from workers.faces.redraw import FaceRedraw, face_steps, redraw_face, redraw_faces, sized

NATIVE = (96, 96)
STEPS = 8


@pytest.fixture(scope="module")
def photo_faces() -> tuple[np.ndarray, list[Face]]:
    image = pixels("two_people.jpg")
    faces = load_face_detector("cpu").detect(image)
    assert len(faces) == 2
    return image, faces


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real pipeline call of the test (support.spies)."""
    return spy_pipeline_calls(monkeypatch)


def _redraw(strength: float = 0.5, seed: int = 3) -> FaceRedraw:
    return FaceRedraw(prompt="a portrait photo, detailed face", negative="blurry", strength=strength, steps=STEPS,
                      guidance_scale=5.0, native=NATIVE, seed=seed)


def _near(shape: tuple[int, int], faces: list[Face]) -> np.ndarray:
    """The pixels within the blend margin of a face (chessboard distance, which is at most the Euclidean one)."""
    height, width = shape
    near = np.zeros(shape, dtype=bool)
    for face in faces:
        left, top, right, bottom = face_box(face.box, width, height)
        m = blend_margin(face.box)
        near[max(0, top - m):bottom + m, max(0, left - m):right + m] = True
    return near


def test_the_faces_change_and_nothing_farther_than_the_blend_margin(pipe, photo_faces, calls):
    image, faces = photo_faces
    before = image.copy()
    steps = []
    out, count = redraw_faces(pipe, image, faces, _redraw(), on_step=lambda s, t: steps.append((s, t)))
    assert count == 2 and np.array_equal(image, before)  # the input is not written
    changed = (out != image).any(axis=2)
    assert not (changed & ~_near(changed.shape, faces)).any()
    for face in faces:
        left, top, right, bottom = face_box(face.box, image.shape[1], image.shape[0])
        assert changed[top:bottom, left:right].mean() > 0.9  # the face itself is redrawn
    # each crop drawn at the native area, from itself (img2img) at the face strength
    crops = [crop_box(face.box, image.shape[1], image.shape[0]) for face in faces]
    sizes = [redraw_size(r - left, b - t, NATIVE) for left, t, r, b in crops]
    assert [(c["size"], c["strength"], c["start"]) for c in calls] == [(s, 0.5, s) for s in sizes]
    per_face = face_steps(STEPS, 0.5)
    assert steps == [(k, 2 * per_face) for k in range(1, 2 * per_face + 1)]


def test_kept_pixels_stay_bit_exact_even_on_the_face(pipe, photo_faces):
    image, faces = photo_faces
    keep = np.zeros(image.shape[:2], dtype=bool)
    keep[100:, :] = True                       # the suits, and the chins of both faces
    left, top, right, bottom = face_box(faces[0].box, image.shape[1], image.shape[0])
    keep[top + 20:top + 40, left + 20:left + 50] = True   # and a patch on the first face's eyes
    out, count = redraw_faces(pipe, image, faces, _redraw(), keep=keep)
    assert count == 2
    assert np.array_equal(out[keep], image[keep])
    assert (out != image).any(axis=2)[~keep].any()


def test_a_face_on_kept_pixels_only_or_a_strength_without_a_step_is_left_alone(pipe, photo_faces, calls):
    image, faces = photo_faces
    out, count = redraw_faces(pipe, image, faces, _redraw(strength=0.1))  # int(8 x 0.1) = 0 steps
    assert count == 0 and np.array_equal(out, image) and calls == []
    everything = np.ones(image.shape[:2], dtype=bool)
    work = image.copy()
    assert not redraw_face(pipe, work, faces[0], _redraw(), keep=everything)
    assert np.array_equal(work, image) and calls == []


def test_the_same_seed_redraws_the_same_face(pipe, photo_faces):
    image, faces = photo_faces
    a, _ = redraw_faces(pipe, image, faces[:1], _redraw(seed=5))
    b, _ = redraw_faces(pipe, image, faces[:1], _redraw(seed=5))
    c, _ = redraw_faces(pipe, image, faces[:1], _redraw(seed=6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_faces_of_a_size_are_chosen_by_their_longer_side():
    small = Face(box=(0.0, 0.0, 20.0, 30.0), score=1.0, landmarks=((1.0, 1.0),) * 5)
    large = Face(box=(50.0, 0.0, 250.0, 150.0), score=1.0, landmarks=((60.0, 10.0),) * 5)
    assert sized([small, large], 30, 200) == ([small, large], [])
    assert sized([small, large], 31, 200) == ([large], [small])
    assert sized([small, large], 20, 199) == ([small], [large])
    assert sized([small, large], 20) == ([small, large], [])
    assert face_steps(25, 0.4) == 10 and face_steps(8, 0.1) == 0 and face_steps(8, 1.0) == 8
    assert math.isclose(_redraw(0.5).steps_per_face, 4)
