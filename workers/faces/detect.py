"""The face detector: MTCNN (Zhang et al. 2016) as facenet-pytorch ships it, its three small networks' weights
(P-Net, R-Net, O-Net, about 2 MB) inside the wheel (``facenet_pytorch/data``, MIT): nothing is downloaded, ever.
docs/faces.md says why this detector and not another.

:func:`load_face_detector` builds it on a device (the worker keeps it in its model cache:
:meth:`workers.models.kinds.WorkerModels.face_detector`); :meth:`FaceDetector.detect` gives the faces of an image
as :class:`Face` values (box, score, five landmarks) in reading order (:func:`reading_order`), the ones the
detector is sure of (``min_score``). Nothing here knows what the faces are for: the redraw of a generation, the
RestoreFaces action, and (issue 24) the alignment of SwitchFace/FaceID read the same values.

Imports torch and facenet-pytorch: only the worker imports this module.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from app.contract.limits import DEFAULT_FACE_MIN_SCORE, FACE_DETECT_MIN_PX

Point = tuple[float, float]

#: The landmarks of a :class:`Face`, in MTCNN's order. "left" and "right" are the image's: ``left_eye`` is the eye
#: nearer the image's left edge (the person's right eye when they face the camera).
LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One face the detector found, in the pixel coordinates of the image it looked at (floats, x to the right,
    y down; the box may reach past the image's edges when the face does).

    Attributes:
        box: ``(left, top, right, bottom)``; MTCNN's box runs from the eyebrows to the chin and between the
            cheeks (hair, ears and neck lie outside it).
        score: the detector's confidence, 0..1.
        landmarks: five ``(x, y)`` points in the order of :data:`LANDMARKS`.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[Point, Point, Point, Point, Point]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """The box's longer side: what a model's ``faces.min_size`` / ``max_size`` are compared with."""
        return max(self.width, self.height)

    @property
    def center(self) -> Point:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def landmark(self, name: str) -> Point:
        """The landmark ``name`` of :data:`LANDMARKS` (``"left_eye"``, ``"nose"``...)."""
        return self.landmarks[LANDMARKS.index(name)]


def reading_order(faces: Iterable[Face]) -> list[Face]:
    """``faces`` sorted left to right by their boxes' left edges, then top to bottom (the order in which a 1-based
    face index, PICPIK's SwitchFace ``RawFaceIndex``, counts them)."""
    return sorted(faces, key=lambda face: (face.box[0], face.box[1]))


def faces_of(boxes, probs, points, min_score: float) -> list[Face]:
    """The faces of one image from MTCNN's ``detect(..., landmarks=True)`` answer (``None``s when it found none;
    object arrays with numpy 2), those scored at least ``min_score``, in reading order."""
    if boxes is None or points is None:
        return []
    boxes, points = np.asarray(boxes, dtype=float).reshape(-1, 4), np.asarray(points, dtype=float).reshape(-1, 5, 2)
    probs = np.asarray(probs, dtype=float).reshape(-1)
    faces = [Face(box=tuple(float(v) for v in box), score=float(score),
                  landmarks=tuple((float(x), float(y)) for x, y in marks))
             for box, score, marks in zip(boxes, probs, points, strict=True) if score >= min_score]
    return reading_order(faces)


class FaceDetector:
    """MTCNN on one device. :meth:`detect` finds faces of at least :data:`FACE_DETECT_MIN_PX` pixels."""

    def __init__(self, mtcnn: MTCNN):
        self.mtcnn = mtcnn

    @property
    def device(self) -> torch.device:
        return self.mtcnn.device

    def detect(self, image: Image.Image | np.ndarray, min_score: float = DEFAULT_FACE_MIN_SCORE) -> list[Face]:
        """The faces of ``image`` (an RGB image, or its uint8 array height x width x 3) scored at least
        ``min_score``, in reading order. MTCNN's own thresholds keep candidates from about 0.7; below about 0.9 it
        also reports faces in busy textures (a false positive at 0.80-0.82 was seen on a patterned background),
        hence the default."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image, mode="RGB")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        boxes, probs, points = self.mtcnn.detect(image, landmarks=True)
        return faces_of(boxes, probs, points, min_score)


def load_face_detector(device: str | torch.device = "cpu") -> FaceDetector:
    """MTCNN with the weights of its wheel, on ``device``, in float32 (its networks are small: about 0.5 M
    parameters), keeping every face it finds (``keep_all``)."""
    return FaceDetector(MTCNN(keep_all=True, min_face_size=FACE_DETECT_MIN_PX, device=torch.device(device)).eval())
