"""GenerateFromMannequin: validate, check the models, store the inputs once, create the task
(idempotent on PublicKey + request_uuid) and enqueue a small versioned job."""
from __future__ import annotations

import logging
import secrets
from typing import Any

from app.core.contract import GENERATE_TASK_NAME, JobMessage, SubModelRef
from app.core.taskstore import TooManyActiveTasks
from app.deps import SignedCall
from app.errors import ApiError, RetCode
from app.services import Services
from app.wire import GenerateRequest, parse_generate

log = logging.getLogger("atelier.gateway")


def _check_models(req: GenerateRequest, svc: Services) -> None:
    reg = svc.registry
    main = reg.get(req.main_model)
    if main is None or main.model_type != "Main":
        raise ApiError.model(req.main_model)
    for sub in req.sub_models:
        entry = reg.get(sub.model_code)
        if entry is None or entry.model_type == "Main":
            raise ApiError.model(sub.model_code)


def generate_from_mannequin(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_generate(call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                         max_prompt_chars=s.max_prompt_chars)
    _check_models(req, svc)
    seed = req.seed if req.seed != -1 else secrets.randbelow(2**31)
    request_uuid = call.body.get("request_uuid")
    request_uuid = request_uuid if isinstance(request_uuid, str) and request_uuid else None

    # Store only the images the job uses, each once by content hash.
    def stored(index: int) -> str:
        img = req.images[index]
        return svc.storage.put_input(img.sha256, img.data)

    job_images = {"mannequin_image": stored(req.mannequin_index),
                  "clothes_mask": stored(req.clothes_mask_index),
                  "background_image": stored(req.background_index) if req.background_index is not None else None}
    try:
        uid, created = svc.tasks.create(call.public_key, request_uuid, call.action, seed,
                                        s.max_active_tasks_per_key)
    except TooManyActiveTasks:
        raise ApiError(RetCode.RATE_LIMIT, "Rate limit exceeded: too many queued or running tasks") from None
    if not created:
        return {"TaskUID": uid}

    job = JobMessage(
        task_uid=uid, main_model=req.main_model,
        sub_models=[SubModelRef(model_code=m.model_code, lora_weight=m.lora_weight) for m in req.sub_models],
        positive_prompts=req.positive_prompts, negative_prompts=req.negative_prompts,
        translate_prompts=req.translate_prompts, seed=seed, width=req.width, height=req.height,
        batch_size=req.batch_size, use_main_model_vae=req.use_main_model_vae,
        resize_mode=req.resize_mode, invert_mask=req.invert_mask, refer_strength=req.refer_strength,
        **job_images,
    )
    try:
        svc.celery.send_task(GENERATE_TASK_NAME, args=[job.to_wire()], queue=s.queue)
    except Exception:
        log.exception("enqueue failed for task %s", uid)
        svc.tasks.discard(uid, call.public_key, request_uuid)
        raise ApiError(RetCode.UNAVAILABLE, "Service unavailable") from None
    log.info("task %s queued for %s (model %s, %dx%d x%d)", uid, call.public_key, req.main_model,
             req.width, req.height, req.batch_size)
    return {"TaskUID": uid}
