"""A Main model's safety checker (``safety: {policy: checker, checker: <folder>}`` in models_config): which of a
job's images it flags, nothing more.

The checker is diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision model and concept embeddings) with its
``CLIPImageProcessor``. Inside a pipeline it replaces a flagged image by a black one; here it is run apart, on the
finished images, and only its flags are read: the job withholds a flagged image and says so in the task's Notes
(:func:`withheld_note`), and a task whose every image is flagged ends in Error 506 - never a silent black image.

Nothing here loads a checkpoint's own checker: :mod:`workers.models.loading` never does, and this module reads only
the folder the policy names. The worker keeps the loaded checker in its model cache
(:meth:`workers.models.kinds.WorkerModels.safety_checker`).

Imports torch, diffusers and transformers lazily (inside the functions).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: The class a checker folder's ``config.json`` must name (``architectures``).
CHECKER_CLASS = "StableDiffusionSafetyChecker"


class SafetyCheckerError(ValueError):
    """A checker folder that cannot be used: missing files, another model, missing weights."""


def checker_folders(folder: Path) -> tuple[Path, Path]:
    """(the checker model's folder, its image processor's folder) in ``folder``: a checker folder (``config.json``,
    weights and ``preprocessor_config.json`` side by side, as the CompVis checker is published) or a Stable
    Diffusion pipeline folder (``safety_checker/`` and ``feature_extractor/``). Raises :class:`SafetyCheckerError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SafetyCheckerError(f"safety checker folder {folder} does not exist")
    if (folder / "safety_checker" / "config.json").is_file():
        model, processor = folder / "safety_checker", folder / "feature_extractor"
    else:
        model, processor = folder, folder
    if not (model / "config.json").is_file():
        raise SafetyCheckerError(f"{folder} holds no safety checker (no config.json, nor safety_checker/config.json)")
    if not (processor / "preprocessor_config.json").is_file():
        raise SafetyCheckerError(f"{processor} has no preprocessor_config.json (the checker's CLIP image processor)")
    return model, processor


@dataclass
class SafetyChecker:
    """A loaded checker: the model (on its device, in its dtype) and its image processor."""

    model: Any
    processor: Any

    def flags(self, images: list[np.ndarray]) -> list[bool]:
        """Whether the checker flags each of ``images`` (uint8 H x W x 3 arrays), in order. The images are not
        touched: the checker blacks out only the stand-ins it is given."""
        import torch

        if not images:
            return []
        arrays = [image if image.flags.writeable else image.copy() for image in map(np.asarray, images)]
        pixels = self.processor(images=arrays, return_tensors="pt").pixel_values
        param = next(self.model.parameters())
        stand_ins = [np.zeros((1, 1, 3), dtype=np.uint8) for _ in images]
        with torch.inference_mode():
            _, flagged = self.model(clip_input=pixels.to(param.device, param.dtype), images=stand_ins)
        return [bool(f) for f in flagged]


def load_safety_checker(folder: Path, device: str, dtype: torch.dtype) -> SafetyChecker:
    """The checker in ``folder`` (:func:`checker_folders`) on ``device`` in ``dtype``, from local files only. Raises
    :class:`SafetyCheckerError` for a folder that holds another model or lacks weights."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    model_dir, processor_dir = checker_folders(folder)
    try:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise SafetyCheckerError(f"{model_dir / 'config.json'} is unreadable: {e}") from None
    if CHECKER_CLASS not in architectures:
        raise SafetyCheckerError(f"{model_dir} holds {', '.join(map(str, architectures)) or 'an unknown model'},"
                                 f" not a {CHECKER_CLASS}")
    model, info = StableDiffusionSafetyChecker.from_pretrained(model_dir, dtype=dtype, local_files_only=True,
                                                               output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise SafetyCheckerError(f"{model_dir} has no weights for {len(missing)} tensor(s) of the checker"
                                 f" (e.g. {sorted(missing)[0]})")
    processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)
    # its forward warns "a black image will be returned instead" for what it flags: not so here (the job withholds
    # the image and notes it), and no pipeline of this service holds a checker, so its warnings are silenced
    logging.getLogger(StableDiffusionSafetyChecker.__module__).setLevel(logging.ERROR)
    return SafetyChecker(model.to(device).eval(), processor)


def withheld_note(index: int, count: int) -> str:
    """The task's note for a withheld image: ``index`` counts from 1 among the ``count`` images made."""
    return f"image {index} of {count} withheld by the safety checker"
