"""The photos of people the face tests read (tests/data/faces, their sources and licences in its README.md), and
where each face is, measured by eye on the committed copies (not by the detector under test)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from support.api import ROOT

PHOTOS = ROOT / "tests" / "data" / "faces"

#: Per photo: its size, and the centre (x, y) of each face from left to right, to within about 10 pixels.
FACES: dict[str, tuple[tuple[int, int], list[tuple[int, int]]]] = {
    "two_people.jpg": ((640, 376), [(177, 72), (491, 86)]),
    "biden.jpg": ((282, 640), [(166, 106)]),
    "astronaut.jpg": ((512, 512), [(226, 118)]),
}


def photo(name: str) -> Image.Image:
    """A committed photo, as RGB."""
    with Image.open(PHOTOS / name) as img:
        return img.convert("RGB")


def pixels(name: str) -> np.ndarray:
    """A committed photo's uint8 pixels (height, width, 3), writable."""
    return np.array(photo(name))
