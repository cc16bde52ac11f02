"""RemoveBackground, RemoveBackgroundsInBatch and ExtractContents: validate, pick the engine (the request's
``Engine`` extension, else the deployment's default of the action's engine type), store the images and
enqueue a mask job. Results (docs/API.md "Mask actions"): per input, the cut-out then the mask, or the mask
alone with ``OnlyMask``."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.jobs import MaskJobMessage
from app.contract.limits import ENGINE_FIELD, MASK_ACTION_ENGINE_TYPE
from app.contract.registry import ModelEntry
from app.contract.taskstore import new_task_uid
from app.errors import ApiError
from app.services import Services
from app.validation.masks import MaskRequest, parse_mask_request

log = logging.getLogger("atelier.gateway")


def _engine(req: MaskRequest, svc: Services) -> ModelEntry:
    engine_type = MASK_ACTION_ENGINE_TYPE[req.action]
    if req.engine is not None:
        return svc.registry.require(req.engine, engine_type)
    entry = svc.registry.default_engine(engine_type)
    if entry is None:
        raise ApiError.param(ENGINE_FIELD, f"no {engine_type} is configured on this deployment (models_config/),"
                                           f" so {req.action} is not available")
    return entry


def mask_action(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_mask_request(call.action, call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                             allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    callback = callback_url(req.callback_url, call, svc)
    engine = _engine(req, svc)
    notes = [] if req.engine else [f"{ENGINE_FIELD}: not given; the deployment's default {engine.model_code}"
                                   f" ({engine.engine}) was used"]
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    job = MaskJobMessage(
        task_uid=new_task_uid(), action=req.action, engine=engine.model_code,
        images=[store_input(svc, img) for img in req.images], box=list(req.box) if req.box else None,
        include_points=req.include_points, exclude_points=req.exclude_points, erode_size=req.erode_size,
        foreground_threshold=req.foreground_threshold, background_threshold=req.background_threshold,
        hair_optimization=req.hair_optimization, only_mask=req.only_mask)
    uid = submit(call, svc, job=job, seed=0, notes=notes, points=engine.points, callback=callback,
                 priority=req.priority, results_per_image=1 if req.only_mask else 2, model=engine.model_code)
    if uid == job.task_uid:
        log.info("task %s queued for %s (%s by %s, %d image(s))", uid, call.public_key, req.action,
                 engine.model_code, len(req.images))
    return {"TaskUID": uid}
