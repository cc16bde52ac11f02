"""Minimal GenerateFromMannequin bodies for the validation tests (no server involved)."""
from __future__ import annotations

import base64
import io
import random

from PIL import Image

LIMITS = {"max_images": 8, "max_pixels": 4096 * 4096, "max_prompt_chars": 100}


def image_bytes(size=(8, 8), mode="RGB", fmt="PNG", noise=False, seed=0) -> bytes:
    if noise:
        image = Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * len(mode)))
    else:
        image = Image.new(mode, size, "white" if mode != "1" else 1)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PHOTO = b64(image_bytes((8, 8), "RGB"))
MASK = b64(image_bytes((8, 8), "L"))
CUTOUT = b64(image_bytes((8, 8), "RGBA"))  # a foreground with an alpha channel (GenerateBackgrounds)


def backgrounds_body(**top) -> dict:
    """A minimal valid GenerateBackgrounds body."""
    return {"Action": "GenerateBackgrounds", "ImageList": [CUTOUT], "TransparentForeground": {"ImageIndex": 0},
            "Width": 64, "Height": 64, **top}


def modify_body(**top) -> dict:
    """A minimal valid ModifyMaskedPixels body."""
    return {"Action": "ModifyMaskedPixels", "ImageAndMaskList": [PHOTO, MASK],
            "Masked": {"ImageIndex": 0, "MaskIndex": 1}, "Width": 64, "Height": 64, **top}


def images_body(**top) -> dict:
    """A minimal valid GenerateImages body (text-to-image: no image at all)."""
    return {"Action": "GenerateImages", "PositivePrompts": ["a lookbook backdrop"], "Width": 64, "Height": 64, **top}


def body(**top) -> dict:
    """A minimal valid body, with top-level fields replaced/added by ``top``."""
    out = {
        "Action": "GenerateFromMannequin",
        "MainModel": {"ModelCode": "base-sd15"},
        "ImageAndMaskList": [PHOTO, MASK],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
    }
    out.update(top)
    return out
