"""The example mannequins with their true masks (examples/, made by scripts/make_examples.py), and IoU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: (photo, true figure, true garment) of each example mannequin
MANNEQUINS = {
    "flat": ("mannequin.png", "mannequin_figure.png", "clothes_mask.png"),
    "photo": ("photo_mannequin.jpg", "photo_mannequin_figure.png", "photo_mannequin_garment.png"),
}


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


def truth(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("L")) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def point_on(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) deep inside ``mask``: the pixel farthest from its edge."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)
