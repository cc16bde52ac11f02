"""The CLIP vision encoder of an IP-Adapter (``image_encoder: {path: ...}``) and a reference image's embeddings.

* :func:`load_image_encoder`: a transformers ``CLIPVisionModelWithProjection`` folder (h94/IP-Adapter's
  ``models/image_encoder`` for SD 1.5 and the plus SDXL files, ``sdxl_models/image_encoder`` for the plain SDXL
  ones), with its image processor: the folder's ``preprocessor_config.json``, else CLIP's (resize the short side to
  the encoder's ``image_size``, centre crop, normalise), as diffusers' ``load_ip_adapter`` makes it.
* :func:`encode_reference`: the :class:`ReferenceEmbeds` an adapter reads of one image: the projected
  ``image_embeds`` (plain adapters; the unconditional side zeros) or the penultimate hidden states (plus, full;
  the unconditional side the encoder's states of a black image), as diffusers' ``encode_image`` computes them.
* :func:`embeds_cache`: the worker's LRU of embeddings by (encoder, image content hash, kind).

A unit's embeddings need not come from here: anything that makes a :class:`ReferenceEmbeds` of the adapter's
kind and width (a stored persona, a face embedding) feeds :func:`workers.adapters.ip_adapter.adapters_applied`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from workers.adapters.files import EmbedsKind
from workers.lru import Lru

#: The reference embeddings a worker keeps (a few kilobytes to a megabyte each), by count and bytes.
EMBEDS_CACHE_ENTRIES = 64
EMBEDS_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ImageEncoder:
    """A loaded CLIP vision encoder: the model (on the device, eval mode), its image processor, and ``key``, which
    names it in the embeddings cache (its folder and dtype)."""

    model: Any
    processor: Any
    key: str

    @property
    def width(self) -> dict[EmbedsKind, int]:
        """The width of each kind of embedding it makes."""
        config = self.model.config
        return {"image_embeds": config.projection_dim, "hidden_states": config.hidden_size}


@dataclass(frozen=True)
class ReferenceEmbeds:
    """What one reference gives an adapter: ``positive`` and ``negative`` (the unconditional side of classifier-free
    guidance), each ``(1, width)`` for ``image_embeds`` or ``(1, tokens, width)`` for ``hidden_states``."""

    positive: torch.Tensor
    negative: torch.Tensor
    kind: EmbedsKind

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.positive, self.negative))


def load_image_encoder(folder: Path, device: str, dtype: torch.dtype) -> ImageEncoder:
    """The encoder of the CLIP vision ``folder`` on ``device`` in ``dtype``. Raises ``OSError`` / ``ValueError`` for
    a folder that is not one."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a CLIP vision encoder folder")
    model = CLIPVisionModelWithProjection.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    model.to(device).eval().requires_grad_(False)
    if (folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    else:
        size = model.config.image_size
        processor = CLIPImageProcessor(size=size, crop_size=size)
    return ImageEncoder(model=model, processor=processor, key=f"{folder}|{dtype}")


@torch.no_grad()
def encode_reference(encoder: ImageEncoder, image: Image.Image, kind: EmbedsKind) -> ReferenceEmbeds:
    """The embeddings of ``image`` (any mode: made RGB) that an adapter reading ``kind`` takes."""
    model = encoder.model
    pixels = encoder.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
    pixels = pixels.to(device=model.device, dtype=model.dtype)
    if kind == "image_embeds":
        positive = model(pixels).image_embeds
        return ReferenceEmbeds(positive, torch.zeros_like(positive), kind)
    positive = model(pixels, output_hidden_states=True).hidden_states[-2]
    negative = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    return ReferenceEmbeds(positive, negative, kind)


def embeds_cache() -> Lru[tuple, ReferenceEmbeds]:
    """The worker's cache of reference embeddings, keyed ``(encoder.key, image content hash, kind)`` by the job:
    a shop's many jobs with one face reference encode it once."""
    return Lru(max_entries=EMBEDS_CACHE_ENTRIES, max_bytes=EMBEDS_CACHE_BYTES, size=lambda e: e.nbytes)
