"""RemoveContents: validate, choose what erases, store the photo and its mask and enqueue a remove-contents job.
Result (docs/API.md "RemoveContents"): ``0.png``, the photo with the masked area erased, of its size, RGBA when it has
alpha; every pixel farther than MaskBlur from the mask unchanged, bit for bit.

What erases: the request's ``Eraser`` (an Eraser's ModelCode, 240 otherwise); else its ``MainModel`` (the inpainting
fallback, 240 when it names no Main model); else the deployment's first Eraser; else its default Main model (named in
the Notes; 230 naming MainModel when it has none). Each image costs the entry's ``points``; the fallback's seed is
drawn here and reported as the task's Seed (an Eraser draws none: Seed 0)."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.generate import draw_seed, main_model
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.jobs import RemoveContentsJobMessage
from app.contract.limits import ModelType
from app.contract.taskstore import new_task_uid
from app.services import Services
from app.validation.remove_contents import parse_remove_contents

log = logging.getLogger("atelier.gateway")


def remove_contents(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_remove_contents(call.body, max_pixels=s.max_image_pixels,
                                allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    notes: list[str] = []
    if req.eraser is not None:
        entry = svc.registry.require(req.eraser, ModelType.ERASER)
    elif req.main_model is not None:
        entry = main_model(req.main_model, svc, notes)
    else:
        erasers = svc.registry.entries_of(ModelType.ERASER)
        entry = erasers[0] if erasers else main_model(None, svc, notes)
    callback = callback_url(req.callback_url, call, svc)
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    eraser = entry.model_type == ModelType.ERASER
    seed = 0 if eraser else draw_seed()
    job = RemoveContentsJobMessage(task_uid=new_task_uid(), image=store_input(svc, req.image),
                                   mask=store_input(svc, req.mask), invert=req.invert, mask_blur=req.mask_blur,
                                   eraser=entry.model_code if eraser else None,
                                   main_model=None if eraser else entry.model_code, seed=seed)
    uid = submit(call, svc, job=job, seed=seed, notes=notes, points=entry.points, callback=callback,
                 priority=req.priority, model=entry.model_code)
    if uid == job.task_uid:
        log.info("task %s queued for %s (RemoveContents by %s, MaskBlur %d)", uid, call.public_key, entry.model_code,
                 req.mask_blur)
    return {"TaskUID": uid}
