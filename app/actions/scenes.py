"""GenerateBackgrounds and ModifyMaskedPixels: GenerateFromMannequin's engine with another kept area (docs/API.md):
validated by :mod:`app.validation.scenes`, then checked, stored and enqueued as a generation
(:func:`app.actions.generate.submit_generation`), each as its own job kind."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.actions.generate import submit_generation
from app.actions.submit import known_inputs
from app.contract.jobs import BackgroundsJobMessage, ModifyJobMessage
from app.contract.limits import GENERATE_BACKGROUNDS_ACTION, MODIFY_MASKED_ACTION
from app.services import Services
from app.validation.scenes import parse_backgrounds, parse_modify


def _limits(svc: Services) -> dict[str, Any]:
    s = svc.settings
    return dict(max_images=s.max_images, max_pixels=s.max_image_pixels, max_prompt_chars=s.max_prompt_chars,
                allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))


def generate_backgrounds(call: SignedCall, svc: Services) -> dict[str, Any]:
    req = parse_backgrounds(call.body, **_limits(svc))
    return submit_generation(call, svc, req, BackgroundsJobMessage, label=GENERATE_BACKGROUNDS_ACTION)


def modify_masked_pixels(call: SignedCall, svc: Services) -> dict[str, Any]:
    req = parse_modify(call.body, **_limits(svc))
    return submit_generation(call, svc, req, ModifyJobMessage, label=MODIFY_MASKED_ACTION, mask_blur=req.mask_blur)
