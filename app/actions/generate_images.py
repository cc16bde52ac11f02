"""GenerateImages: GenerateFromMannequin's engine with nothing kept (text-to-image; image-to-image with Image2Image;
a seamless texture with Tileable: docs/API.md), validated by :mod:`app.validation.generate_images`, then checked,
stored and enqueued as a generation (:func:`app.actions.generate.submit_generation`) of its own job kind."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.actions.generate import submit_generation
from app.actions.submit import known_inputs
from app.contract.jobs import ImagesJobMessage
from app.contract.limits import GENERATE_IMAGES_ACTION
from app.services import Services
from app.validation.generate_images import parse_generate_images


def generate_images(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_generate_images(call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                                max_prompt_chars=s.max_prompt_chars, allow_private_callbacks=s.webhook_allow_private,
                                known_images=known_inputs(svc))
    return submit_generation(call, svc, req, ImagesJobMessage, label=GENERATE_IMAGES_ACTION, tileable=req.tileable)
