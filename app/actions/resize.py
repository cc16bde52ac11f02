"""ResizeImage: validate, check the Upscaler, store the image and enqueue a resize job. Result (docs/API.md
"ResizeImage"): ``0.png``, the image at exactly Width x Height (stretched when the aspect ratio differs, as
JustResize does), RGBA when the input has alpha, else RGB: by Lanczos (it then costs ``DEFAULT_POINTS``), or
enlarged by the ``Upscaler`` model named (240 when it names none; it costs that entry's ``points``)."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.jobs import ResizeJobMessage
from app.contract.limits import DEFAULT_POINTS, ModelType
from app.contract.taskstore import new_task_uid
from app.services import Services
from app.validation.resize import parse_resize_request

log = logging.getLogger("atelier.gateway")


def resize_image(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_resize_request(call.body, max_pixels=s.max_image_pixels,
                               allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    upscaler = svc.registry.require(req.upscaler, ModelType.UPSCALER) if req.upscaler is not None else None
    callback = callback_url(req.callback_url, call, svc)
    # with an Upscaler, the worker says what ran (it learns the model's factor when it loads it)
    notes = [] if upscaler else [f"resized by Lanczos to {req.width}x{req.height}"]
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    job = ResizeJobMessage(task_uid=new_task_uid(), image=store_input(svc, req.image), width=req.width,
                           height=req.height, upscaler=upscaler.model_code if upscaler else None)
    points = upscaler.points if upscaler else DEFAULT_POINTS
    uid = submit(call, svc, job=job, seed=0, notes=notes, points=points, callback=callback,
                 priority=req.priority,
                 model=upscaler.model_code if upscaler else None)
    if uid == job.task_uid:
        log.info("task %s queued for %s (ResizeImage to %dx%d by %s)", uid, call.public_key, req.width, req.height,
                 job.upscaler or "Lanczos")
    return {"TaskUID": uid}
