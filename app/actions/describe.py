"""DescribeImages: validate, choose the Describer, check it serves TranslateDescription, store the images and
enqueue a describe job. Result (docs/API.md "DescribeImages"): TaskDetail ``TxtList``, one text per image in
ImageList's order (no image). The Describer is the request's ``Describer`` (240 when it names none of the
deployment's), else the deployment's first (230 naming Describer when it has none); a TranslateDescription other than
``en`` needs the Describer's translator of that language (``translators:`` in models_config), else 230 naming
TranslateDescription with the languages it serves. Each image costs the Describer's ``points``."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.jobs import DescribeJobMessage
from app.contract.limits import DESCRIBER_FIELD, TRANSLATE_DESCRIPTION_FIELD, ModelType
from app.contract.registry import ModelEntry
from app.contract.taskstore import new_task_uid
from app.errors import ApiError
from app.services import Services
from app.validation.describe import parse_describe

log = logging.getLogger("atelier.gateway")


def describer_for(code: str | None, svc: Services) -> ModelEntry:
    """The Describer a request names (240 when none of the deployment's), else the deployment's first (230 when it
    has none)."""
    if code is not None:
        return svc.registry.require(code, ModelType.DESCRIBER)
    describers = svc.registry.entries_of(ModelType.DESCRIBER)
    if not describers:
        raise ApiError.param(DESCRIBER_FIELD, "is required (this deployment has no Describer model)")
    return describers[0]


def describe_images(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_describe(call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                         allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    entry = describer_for(req.describer, svc)
    served = entry.languages()
    if req.language not in served:
        raise ApiError.param(TRANSLATE_DESCRIPTION_FIELD, f"{req.language} is not served by this deployment (no"
                                                          f" translator into it): must be one of {', '.join(served)}")
    callback = callback_url(req.callback_url, call, svc)
    notes = [f"ignored fields: {', '.join(req.ignored_fields)}"] if req.ignored_fields else []
    job = DescribeJobMessage(task_uid=new_task_uid(), images=[store_input(svc, im) for im in req.images],
                             describer=entry.model_code, language=req.language)
    uid = submit(call, svc, job=job, seed=0, notes=notes, points=entry.points, callback=callback,
                 priority=req.priority, model=entry.model_code)
    if uid == job.task_uid:
        log.info("task %s queued for %s (DescribeImages of %d image(s) by %s in %s)", uid, call.public_key,
                 len(req.images), entry.model_code, req.language)
    return {"TaskUID": uid}
