"""Tiny Stable Diffusion safety checkers built by code for the tests: a real diffusers
``StableDiffusionSafetyChecker`` (a tiny CLIP vision model) and its ``CLIPImageProcessor``, saved with
``save_pretrained`` as the CompVis checker is published, or into a pipeline folder as a checkpoint carries one.

What it flags is set through its concept embeddings and thresholds. Its ``forward`` flags an image when, for some
concept, ``round(cos(image embedding, concept) - threshold + adjustment, 3) > 0`` (``adjustment`` is 0.01 once a
"special care" concept matched): with every "special care" threshold at 2 no adjustment ever happens, and a cosine
lies in [-1, 1], so a concept threshold of -2 flags every image (:data:`FLAG_ALL`) and 2 none (:data:`FLAG_NONE`).
:func:`build_checker` with ``concept`` flags exactly the images whose embedding (:func:`image_embeddings`) is within
``threshold`` of it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor

from workers.inference.safety import load_safety_checker

FLAG_ALL = -2.0
FLAG_NONE = 2.0
PROJECTION_DIM = 16
IMAGE_SIZE = 32


def _config() -> CLIPConfig:
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
              "image_size": IMAGE_SIZE, "patch_size": 8}
    text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)


def build_checker(folder: Path, threshold: float, concept: np.ndarray | None = None, *, seed: int = 0,
                  processor_folder: Path | None = None) -> Path:
    """A tiny checker in ``folder`` whose concepts all have ``threshold`` (:data:`FLAG_ALL`, :data:`FLAG_NONE`), or,
    with ``concept`` (a :data:`PROJECTION_DIM` embedding), one concept ``concept`` at ``threshold`` and the others
    never matched. Its image processor is written beside it, or into ``processor_folder`` (a pipeline's
    ``feature_extractor/``). The same seed gives the same vision model."""
    torch.manual_seed(seed)
    model = StableDiffusionSafetyChecker(_config()).eval()
    with torch.no_grad():
        model.special_care_embeds_weights.fill_(FLAG_NONE)
        if concept is None:
            model.concept_embeds_weights.fill_(threshold)
        else:
            model.concept_embeds_weights.fill_(FLAG_NONE)
            model.concept_embeds_weights[0] = threshold
            model.concept_embeds[0] = torch.as_tensor(concept, dtype=torch.float32)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
                       ).save_pretrained(processor_folder or folder)
    return Path(folder)


def add_checker_to_pipeline(folder: Path, threshold: float = FLAG_ALL) -> Path:
    """Give the diffusers SD pipeline folder ``folder`` its own safety checker, as published checkpoints carry one:
    ``safety_checker/`` and ``feature_extractor/`` and their ``model_index.json`` entries, with
    ``requires_safety_checker: true``. Flags everything by default (the pipeline would black out every image)."""
    build_checker(folder / "safety_checker", threshold, processor_folder=folder / "feature_extractor")
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    index_file.write_text(json.dumps(index, indent=2))
    return folder


def image_embeddings(folder: Path, images: list[np.ndarray]) -> np.ndarray:
    """The checker's image embeddings of ``images`` (one row each, L2-normalised): what it compares with its
    concepts, through the same image processor the worker uses."""
    checker = load_safety_checker(folder, "cpu", torch.float32)
    pixels = checker.processor(images=[np.array(image) for image in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.model.visual_projection(checker.model.vision_model(pixels)[1])
    return torch.nn.functional.normalize(embeds).numpy()
