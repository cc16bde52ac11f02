"""GenerateFromMannequin: validate, check the models, store the inputs once, create the task
(idempotent on PublicKey + request_uuid) and enqueue a small versioned job."""
from __future__ import annotations

import logging
import secrets
from typing import Any

from app.actions.base import SignedCall
from app.contract.codes import RetCode
from app.contract.jobs import GENERATE_TASK_NAME, ControlUnitRef, JobMessage, SubModelRef
from app.contract.limits import DEFAULT_RESOLUTION, SUBMODEL_TYPES
from app.contract.registry import ModelEntry
from app.contract.taskstore import TooManyActiveTasks, new_task_uid
from app.errors import ApiError
from app.keys import WEBHOOK_SECRET_FIELD
from app.services import Services
from app.validation.generate import CALLBACK_URL_FIELD, ControlUnit, GenerateRequest, parse_generate

log = logging.getLogger("atelier.gateway")


def _model(svc: Services, code: str | None, *types: str) -> ModelEntry:
    entry = svc.registry.get(code) if code else None
    if entry is None or entry.model_type not in types:
        raise ApiError.model(str(code))
    return entry


def _control_units(req: GenerateRequest, main: ModelEntry, svc: Services) -> list[tuple[int, dict[str, Any]]]:
    """The request's units (absent: the main model's default_control), each model checked (240) and
    every InferenceParam resolved against the model's configured defaults: (image index, ControlUnitRef fields)."""
    if req.control_units is None:
        units = [ControlUnit(req.mannequin_index, u.preprocessor, None, u.control_model, None, None, None)
                 for u in main.default_control]
    else:
        units = req.control_units
    refs = []
    for i, u in enumerate(units):
        pre = _model(svc, u.preprocessor, "PreProcessor") if u.preprocessor is not None else None
        cm = _model(svc, u.control_model, "ControlModel").defaults
        start = cm.starting_step if u.starting_step is None else u.starting_step
        end = cm.ending_step if u.ending_step is None else u.ending_step
        if start > end:
            raise ApiError.param(f"{req.control_units_field}[{i}].ControlModel.InferenceParams.StartingStep",
                                 "must not be greater than EndingStep (with the model's defaults)")
        refs.append((u.image_index, dict(
            preprocessor=u.preprocessor,
            resolution=(u.resolution if u.resolution is not None
                        else pre.defaults.resolution if pre else DEFAULT_RESOLUTION),
            control_model=u.control_model,
            control_weight=cm.control_weight if u.control_weight is None else u.control_weight,
            starting_step=start, ending_step=end)))
    return refs


def _callback_url(req: GenerateRequest, call: SignedCall, svc: Services) -> str | None:
    """Where the task's webhook goes: the request's CallbackUrl, else its key's default (docs/API.md "Webhooks").
    A CallbackUrl needs the key's webhook secret to sign with (the key file refuses a default without one)."""
    pair = svc.keys.pair(call.public_key)
    if req.callback_url is not None and (pair is None or not pair.webhook_secret):
        raise ApiError.param(CALLBACK_URL_FIELD, f"needs a webhook secret for this PublicKey ({WEBHOOK_SECRET_FIELD}"
                                                 " in the deployment's key file): ask the operator for one")
    return req.callback_url or (pair.callback_url if pair else None)


def generate_from_mannequin(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_generate(call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                         max_prompt_chars=s.max_prompt_chars, allow_private_callbacks=s.webhook_allow_private)
    callback_url = _callback_url(req, call, svc)
    notes = []
    if req.main_model is None:
        main = svc.registry.default_main()
        if main is None:
            raise ApiError.param("MainModel", "is required (this deployment has no default main model)")
        notes.append(f"MainModel: not given; the deployment's default {main.model_code} was used")
    else:
        main = _model(svc, req.main_model, "Main")
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    for sub in req.sub_models:
        _model(svc, sub.model_code, *SUBMODEL_TYPES)
    controls = _control_units(req, main, svc)
    seed = req.seed if req.seed != -1 else secrets.randbelow(2**31)
    request_uuid = call.body.get("request_uuid")
    request_uuid = request_uuid if isinstance(request_uuid, str) and request_uuid else None

    # Store only the images the job uses, each once by content hash.
    def stored(index: int) -> str:
        img = req.images[index]
        try:
            return svc.storage.put_input(img.sha256, img.data)
        except OSError as e:
            log.error("storage unavailable: %s", e)
            raise ApiError(RetCode.UNAVAILABLE) from None

    job_images = {"mannequin_image": stored(req.mannequin_index),
                  "clothes_mask": stored(req.clothes_mask_index),
                  "background_image": stored(req.background_index) if req.background_index is not None else None}
    control_units = [ControlUnitRef(image=stored(index), **fields) for index, fields in controls]
    job = JobMessage(
        task_uid=new_task_uid(), main_model=main.model_code,
        sub_models=[SubModelRef(model_code=m.model_code, lora_weight=m.lora_weight) for m in req.sub_models],
        positive_prompts=req.positive_prompts, negative_prompts=req.negative_prompts,
        translate_prompts=req.translate_prompts, seed=seed, width=req.width, height=req.height,
        batch_size=req.batch_size, use_main_model_vae=req.use_main_model_vae,
        resize_mode=req.resize_mode, invert_mask=req.invert_mask, refer_strength=req.refer_strength,
        background_resize_mode=req.background_resize_mode, control_units=control_units,
        **job_images,
    )
    try:  # the task keeps its job message: the recovery sends it again if its worker dies
        uid, created = svc.tasks.create(call.public_key, request_uuid, call.action, seed,
                                        s.max_active_tasks_per_key, notes=notes, points=main.points,
                                        uid=job.task_uid, job=job.to_wire(), callback_url=callback_url,
                                        queue=s.queue)
    except TooManyActiveTasks:
        raise ApiError(RetCode.RATE_LIMIT, "Rate limit exceeded: too many queued or running tasks") from None
    if not created:
        return {"TaskUID": uid}
    try:
        svc.celery.send_task(GENERATE_TASK_NAME, args=[job.to_wire()], queue=s.queue)
    except Exception:
        log.exception("enqueue failed for task %s", uid)
        svc.tasks.discard(uid, call.public_key, request_uuid)
        raise ApiError(RetCode.UNAVAILABLE) from None
    log.info("task %s queued for %s (model %s, %dx%d x%d)", uid, call.public_key, main.model_code,
             req.width, req.height, req.batch_size)
    return {"TaskUID": uid}
