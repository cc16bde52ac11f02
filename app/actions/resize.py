"""ResizeImage: validate, store the image and enqueue a resize job. Result (docs/API.md "ResizeImage"): ``0.png``,
the image resized by Lanczos to exactly Width x Height (stretched when the aspect ratio differs, as JustResize
does), RGBA when the input has alpha, else RGB. It uses no model: it costs ``DEFAULT_POINTS``."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.submit import callback_url, store_input, submit
from app.contract.jobs import ResizeJobMessage
from app.contract.limits import DEFAULT_POINTS
from app.contract.taskstore import new_task_uid
from app.services import Services
from app.validation.resize import parse_resize_request

log = logging.getLogger("atelier.gateway")


def resize_image(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_resize_request(call.body, max_pixels=s.max_image_pixels,
                               allow_private_callbacks=s.webhook_allow_private, known_images=svc.storage.has_input)
    callback = callback_url(req.callback_url, call, svc)
    notes = [f"resized by Lanczos to {req.width}x{req.height}"]
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    job = ResizeJobMessage(task_uid=new_task_uid(), image=store_input(svc, req.image), width=req.width,
                           height=req.height)
    uid = submit(call, svc, job=job, seed=0, notes=notes, points=DEFAULT_POINTS, callback=callback)
    if uid == job.task_uid:
        log.info("task %s queued for %s (ResizeImage to %dx%d)", uid, call.public_key, req.width, req.height)
    return {"TaskUID": uid}
