"""RestoreFaces: validate, check the Main model, store the photo and enqueue a restore-faces job. Result (docs/API.md
"RestoreFaces"): ``0.png``, the photo with each face redrawn by the Main model at RestoreStrength (docs/faces.md),
of its size, RGBA when it has alpha, unchanged when it has no face. Each image costs the Main model's ``points``,
as a generated one does; the seed its faces are drawn from is drawn here and reported as the task's Seed."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.generate import draw_seed, main_model
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.jobs import RestoreFacesJobMessage
from app.contract.taskstore import new_task_uid
from app.services import Services
from app.validation.restore_faces import parse_restore_faces

log = logging.getLogger("atelier.gateway")


def restore_faces(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_restore_faces(call.body, max_pixels=s.max_image_pixels,
                              allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    callback = callback_url(req.callback_url, call, svc)
    notes: list[str] = []
    main = main_model(req.main_model, svc, notes)
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    seed = draw_seed()
    job = RestoreFacesJobMessage(task_uid=new_task_uid(), image=store_input(svc, req.image),
                                 main_model=main.model_code, strength=req.strength, seed=seed)
    uid = submit(call, svc, job=job, seed=seed, notes=notes, points=main.points, callback=callback,
                 priority=req.priority, model=main.model_code)
    if uid == job.task_uid:
        log.info("task %s queued for %s (RestoreFaces with %s at %s)", uid, call.public_key, main.model_code,
                 req.strength)
    return {"TaskUID": uid}
