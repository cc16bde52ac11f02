"""Loading the tiny models the tests build, through the production loader (no test-only loader)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.contract.registry import ModelEntry, Registry
from workers.inference.compose import Composition, prepare
from workers.models.loading import load_main_pipeline


def main_entry(code: str, family: str = "sd15", **source) -> ModelEntry:
    """A Main model entry as a models_config/ file would declare it."""
    return ModelEntry.model_validate({"ModelCode": code, "Name": code, "ModelType": "Main", "family": family,
                                      "source": source})


def load_folder(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, family: str = "sd15"):
    """The inpainting pipeline of a diffusers folder, loaded as the worker loads a ``path:`` source."""
    folder = Path(folder)
    entry = main_entry(folder.name, family, path=str(folder))
    return load_main_pipeline(entry, Registry([entry], folder.parent), device, dtype, folder.parent)


def garment(width: int, height: int) -> Composition:
    """A random photo of ``width`` x ``height`` with a rectangular garment (the middle half) kept."""
    rng = np.random.default_rng(width * 1000 + height)
    mannequin = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return prepare(mannequin, mask, width, height)
