"""SwitchFace: validate, check the Main model and the IP-Adapter, store both images and enqueue a switch-face job.
Result (docs/API.md "SwitchFace"): ``0.png``, the photo with its face number ``RawFaceIndex`` (reading order)
redrawn by the Main model with the identity of ``NewFaceImage`` given by the IP-Adapter (docs/faces.md "SwitchFace"),
of its size, RGBA when it has alpha. Each image costs the Main model's ``points``, as RestoreFaces; the seed the face
is drawn from is drawn here and reported as the task's Seed."""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.actions.generate import draw_seed, main_model
from app.actions.personas import require_persona
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.codes import RetCode, family_message, not_adapter_message
from app.contract.jobs import SwitchFaceJobMessage
from app.contract.limits import IP_ADAPTER, ModelType
from app.contract.registry import ModelEntry
from app.contract.taskstore import new_task_uid
from app.errors import ApiError
from app.services import Services
from app.validation.switch_face import ADAPTER_FIELD, parse_switch_face

log = logging.getLogger("atelier.gateway")


def face_adapter(code: str | None, main: ModelEntry, svc: Services, notes: list[str]) -> ModelEntry:
    """The IP-Adapter that carries the new face onto ``main``: the one ``code`` names (240 when it names no
    ControlModel, a ControlModel that is not an IP-Adapter, or one of another family than ``main``'s); without one
    the deployment's first IP-Adapter of ``main``'s family (ListControlNets' order), named in ``notes`` (230 when
    there is none)."""
    if code is None:
        adapters = [e for e in svc.registry.entries_of(ModelType.CONTROL_MODEL)
                    if e.adapter == IP_ADAPTER and e.family == main.family]
        if not adapters:
            raise ApiError.param(ADAPTER_FIELD, f"is required: this deployment has no {IP_ADAPTER} of the"
                                                f" {main.family} family for MainModel {main.model_code}"
                                                " (models_config/README.md \"IP-Adapters\")")
        notes.append(f"{ADAPTER_FIELD}: not given; the deployment's {IP_ADAPTER} {adapters[0].model_code} was used")
        return adapters[0]
    entry = svc.registry.require(code, ModelType.CONTROL_MODEL)
    if entry.adapter != IP_ADAPTER:
        raise ApiError(RetCode.UNKNOWN_MODEL, not_adapter_message(code, IP_ADAPTER))
    if entry.family != main.family:
        raise ApiError(RetCode.UNKNOWN_MODEL, family_message(code, entry.family, main.model_code, main.family))
    return entry


def switch_face(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_switch_face(call.body, max_pixels=s.max_image_pixels,
                            allow_private_callbacks=s.webhook_allow_private, known_images=known_inputs(svc))
    callback = callback_url(req.callback_url, call, svc)
    notes: list[str] = []
    main = main_model(req.main_model, svc, notes)
    adapter = face_adapter(req.adapter, main, svc, notes)
    if req.persona is not None:
        require_persona(svc, call.public_key, req.persona)
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    seed = draw_seed()
    job = SwitchFaceJobMessage(task_uid=new_task_uid(), image=store_input(svc, req.image), face_index=req.face_index,
                               new_face=store_input(svc, req.new_face) if req.new_face is not None else None,
                               persona=req.persona, main_model=main.model_code, adapter=adapter.model_code, seed=seed)
    uid = submit(call, svc, job=job, seed=seed, notes=notes, points=main.points, callback=callback,
                 priority=req.priority, model=main.model_code)
    if uid == job.task_uid:
        log.info("task %s queued for %s (SwitchFace of face %d with %s and %s)", uid, call.public_key,
                 req.face_index, main.model_code, adapter.model_code)
    return {"TaskUID": uid}
