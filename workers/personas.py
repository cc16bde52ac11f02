"""A persona's references on the worker side (docs/API.md "Personas"): its images, and the embeddings an adapter
encoder makes of them, computed once per (persona, encoder, kind) and kept.

* :func:`persona_images`: the persona's stored images, decoded (the one way a job reads a persona: an IP-Adapter
  unit's ``PersonaCode``, and any other action that takes one);
* :func:`persona_embeds`: the persona's :class:`~workers.adapters.encoder.ReferenceEmbeds` for an encoder: from
  the worker's LRU, else from the embeddings stored beside the images (``embeds-<hash>.safetensors``), else each
  image encoded and the results averaged (:func:`mean_embeds`) and stored; DeletePersona removes them with the
  images;
* :func:`mean_embeds`: several references as one, the mean of their embeddings (the usual way to give an
  IP-Adapter several images of one person); one reference is returned as it is, so that a persona of one image
  acts exactly as that image given by ``ImageIndex``.
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable

import torch
from PIL import Image, ImageOps
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from app.contract.codes import ErrorCode, persona_message
from app.contract.personas import PersonaRecord, PersonaStore
from app.contract.storage import Storage
from workers.adapters.encoder import ImageEncoder, ReferenceEmbeds, encode_reference
from workers.lifecycle.errors import JobError
from workers.lru import Lru

log = logging.getLogger("atelier.worker")


def persona_record(personas: PersonaStore, code: str, owner: str | None = None) -> PersonaRecord:
    """The persona ``code`` (``owner``'s, when given); a deleted or unknown one (or another owner's) ends the task
    in Error 240 ``Persona [code] not exists``, as the gateway answers it."""
    rec = personas.get(code) if owner is None else personas.owned(owner, code)
    if rec is None:
        raise JobError(ErrorCode.MODEL, persona_message(code))
    return rec


def persona_images(storage: Storage, personas: PersonaStore, code: str,
                   owner: str | None = None) -> list[Image.Image]:
    """The persona's images in CreatePersona's order, decoded and made upright (EXIF orientation), as a unit's
    ``ImageIndex`` image is read; Error 240 for a persona that is gone, 230 for an image missing from storage."""
    rec = persona_record(personas, code, owner)
    images = []
    for sha in rec.images:
        try:
            with storage.open_persona_image(code, sha) as f:
                data = f.read()  # the storage failing: tried again by the worker's store, then Error 508
        except FileNotFoundError as e:
            log.error("persona %s image %s is missing: %s", code, sha, e)
            raise JobError(ErrorCode.BAD_INPUT, f"an image of Persona [{code}] is unreadable") from e
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (OSError, ValueError) as e:
            log.error("persona %s image %s is unreadable: %s", code, sha, e)
            raise JobError(ErrorCode.BAD_INPUT, f"an image of Persona [{code}] is unreadable") from e
        ImageOps.exif_transpose(img, in_place=True)
        images.append(img)
    return images


def mean_embeds(embeds: list[ReferenceEmbeds]) -> ReferenceEmbeds:
    """One reference of several: the mean of their positive and of their negative embeddings (one: itself)."""
    if len(embeds) == 1:
        return embeds[0]
    kind = embeds[0].kind
    positive = torch.stack([e.positive for e in embeds]).mean(dim=0)
    negative = torch.stack([e.negative for e in embeds]).mean(dim=0)
    return ReferenceEmbeds(positive, negative, kind)


def embeds_name(encoder: ImageEncoder, kind: str) -> str:
    """The stored name of a persona's embeddings by ``encoder`` (its folder and dtype) of ``kind``."""
    digest = hashlib.sha256(f"{encoder.key}|{kind}".encode()).hexdigest()[:32]
    return f"embeds-{digest}.safetensors"


def persona_embeds(storage: Storage, personas: PersonaStore, encoder: ImageEncoder, code: str, kind: str,
                   cache: Lru[tuple, ReferenceEmbeds] | None = None, owner: str | None = None,
                   encode: Callable[[ImageEncoder, Image.Image, str], ReferenceEmbeds] = encode_reference,
                   ) -> ReferenceEmbeds:
    """The persona's embeddings for ``encoder``: the LRU's (key ``(encoder.key, "persona:" + code, kind)``), else
    the stored ones, else computed from :func:`persona_images` (``encode`` each, :func:`mean_embeds`) and stored.
    The record is read every time: a persona deleted meanwhile is Error 240 even when its embeddings are cached."""
    persona_record(personas, code, owner)
    key = (encoder.key, f"persona:{code}", kind)
    embeds = cache.get(key) if cache is not None else None
    if embeds is not None:
        return embeds
    name = embeds_name(encoder, kind)
    model = encoder.model
    data = storage.read_persona_embeds(code, name)
    if data is not None:
        t = load_tensors(data)
        embeds = ReferenceEmbeds(t["positive"].to(device=model.device, dtype=model.dtype),
                                 t["negative"].to(device=model.device, dtype=model.dtype), kind)  # type: ignore[arg-type]
    else:
        embeds = mean_embeds([encode(encoder, img, kind) for img in persona_images(storage, personas, code, owner)])
        storage.write_persona_embeds(code, name, save_tensors({"positive": embeds.positive.contiguous().cpu(),
                                                               "negative": embeds.negative.contiguous().cpu()}))
        log.info("persona %s: %s embeddings computed and stored (%s)", code, kind, name)
    if cache is not None:
        cache.put(key, embeds)
    return embeds
