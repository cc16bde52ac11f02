"""The face detector (workers/faces/detect.py: MTCNN with the weights of facenet-pytorch's wheel) on real photos of
people (tests/data/faces, public domain): each face found where it is, with its landmarks, in reading order; none
in a photo without one; through the worker's model cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.faces import FACES, photo, pixels
from workers.faces.detect import LANDMARKS, Face, faces_of, load_face_detector, reading_order
from workers.models.cache import ModelCache
from workers.models.kinds import WorkerModels


@pytest.fixture(scope="module")
def detector():
    return load_face_detector("cpu")


@pytest.mark.parametrize("name", sorted(FACES))
def test_every_face_of_a_real_photo_is_found_where_it_is(detector, name):
    size, centres = FACES[name]
    img = photo(name)
    assert img.size == size
    faces = detector.detect(img)
    assert len(faces) == len(centres), faces
    for face, (x, y) in zip(faces, centres, strict=True):  # reading order: left to right
        cx, cy = face.center
        assert abs(cx - x) <= 15 and abs(cy - y) <= 15, (name, face.center, (x, y))
        assert 60 <= face.size <= 150 and 0.6 <= face.width / face.height <= 1.0  # a face box, taller than wide
        assert face.score > 0.99
        left, top, right, bottom = face.box
        assert all(left <= px <= right and top <= py <= bottom for px, py in face.landmarks)
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks  # upright faces
        assert lx < nx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
        assert face.landmark("nose") == (nx, ny) and len(LANDMARKS) == 5


def test_the_same_faces_from_the_pixels_as_from_the_image(detector):
    assert detector.detect(pixels("two_people.jpg")) == detector.detect(photo("two_people.jpg"))


def test_a_photo_without_a_face_has_none(detector):
    rng = np.random.default_rng(3)
    assert detector.detect(Image.new("RGB", (320, 240), (128, 128, 128))) == []
    assert detector.detect(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) == []
    # the background of the two-people photo, a curtain and a chandelier, without its people
    assert detector.detect(pixels("two_people.jpg")[:, 230:420]) == []


def test_a_grey_or_rgba_image_is_read_as_rgb(detector):
    img = photo("astronaut.jpg")
    rgba = img.convert("RGBA")
    assert [f.box for f in detector.detect(rgba)] == [f.box for f in detector.detect(img)]
    assert len(detector.detect(img.convert("L"))) == 1


def _face(x: float, y: float, score: float = 0.99) -> Face:
    return Face(box=(x, y, x + 40, y + 50), score=score, landmarks=((x + 10, y + 20),) * 5)


def test_reading_order_is_left_to_right_then_top_to_bottom():
    a, b, c = _face(10, 200), _face(10, 30), _face(300, 5)
    assert reading_order([c, a, b]) == [b, a, c]


def test_what_the_detector_answers_becomes_faces_above_the_score():
    """MTCNN's answer with numpy 2: object arrays, and (None, [None], None) for an image without a face."""
    boxes = np.array([[300.0, 10, 340, 60], [20, 12, 60, 60], [100, 0, 140, 50]], dtype=object)
    probs = np.array([0.999, 0.95, 0.81], dtype=object)
    points = np.array([[[310.0, 30]] * 5, [[30.0, 30]] * 5, [[110.0, 20]] * 5], dtype=object)
    faces = faces_of(boxes, probs, points, min_score=0.9)
    assert [f.box for f in faces] == [(20.0, 12.0, 60.0, 60.0), (300.0, 10.0, 340.0, 60.0)]
    assert [f.score for f in faces] == [0.95, 0.999] and faces[0].landmarks == ((30.0, 30.0),) * 5
    assert all(isinstance(v, float) for f in faces for v in f.box)
    assert len(faces_of(boxes, probs, points, min_score=0.8)) == 3
    assert faces_of(None, np.array([None], dtype=object), None, min_score=0.9) == []


def test_the_detector_is_one_model_cache_entry_kept_on_the_host_of_a_cpu_worker(tmp_path: Path):
    cache = ModelCache(device_bytes=2**30, host_bytes=2**30)
    models = WorkerModels(cache, device="cpu", dtype=torch.float32, models_dir=tmp_path)
    with cache.lease() as held:
        first = models.face_detector(held)
        assert models.face_detector(held) is first and cache.stats.kind("face_detector").hits == 1
        assert [label for label, _ in cache.cached("host")] == ["face-detector"]
        assert 1_000_000 < cache.used_bytes("host") < 4_000_000  # its three networks, about 2 MB of float32
        assert first.device == torch.device("cpu") and len(first.detect(photo("biden.jpg"))) == 1
