"""Loading the tiny models the tests build, through the production loader (no test-only loader)."""
from __future__ import annotations

from pathlib import Path

import torch

from app.contract.registry import ModelEntry, Registry
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
