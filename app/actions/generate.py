"""GenerateFromMannequin: validate, check the models, store the inputs once, create the task
(idempotent on PublicKey + request_uuid) and enqueue a small versioned job."""
from __future__ import annotations

import logging
import secrets
from typing import Any

from app.actions.base import SignedCall
from app.actions.personas import require_persona
from app.actions.submit import callback_url, known_inputs, store_input, submit
from app.contract.codes import RetCode, family_message
from app.contract.jobs import ControlUnitRef, JobMessage, SubModelRef
from app.contract.limits import (
    CLOTHES_MASK_URL_FIELD,
    DEFAULT_RESOLUTION,
    PERSONA_CODE_FIELD,
    SEED_RANGE,
    SUBMODEL_TYPES,
    ModelType,
    is_lanczos,
)
from app.contract.registry import ModelEntry
from app.contract.taskstore import new_task_uid
from app.errors import ApiError
from app.services import Services
from app.validation.generate import ControlUnit, GenerateRequest, parse_generate

log = logging.getLogger("atelier.gateway")


def _control_units(req: GenerateRequest, main: ModelEntry, svc: Services,
                   owner: str = "") -> list[tuple[int | None, dict[str, Any]]]:
    """The request's units (absent: the main model's default_control), each model checked (240), a persona unit's
    PersonaCode checked against ``owner``'s personas (:func:`check_persona_unit`), and every InferenceParam resolved
    against the model's configured defaults: (image index, None for a persona unit; ControlUnitRef fields)."""
    if req.control_units is None:
        units = [ControlUnit(req.mannequin_index, u.preprocessor, None, u.control_model, None, None, None)
                 for u in main.default_control]
    else:
        units = req.control_units
    refs = []
    for i, u in enumerate(units):
        pre = svc.registry.require(u.preprocessor, ModelType.PRE_PROCESSOR) if u.preprocessor is not None else None
        model = svc.registry.require(u.control_model, ModelType.CONTROL_MODEL)
        if model.adapter is not None:
            _check_adapter_unit(f"{req.control_units_field}[{i}]", u, model, main)
        if u.persona is not None:
            check_persona_unit(svc, owner, f"{req.control_units_field}[{i}]", u.persona, model)
        cm = model.defaults
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
            starting_step=start, ending_step=end, persona=u.persona)))
    return refs


def check_persona_unit(svc: Services, owner: str, name: str, code: str, model: ModelEntry) -> None:
    """A unit giving ``PersonaCode``: only an adapter reads references (a ControlNet unit: 230 naming the field);
    the persona must be ``owner``'s (240 as if it did not exist otherwise: :func:`require_persona`)."""
    if model.adapter is None:
        raise ApiError.param(f"{name}.{PERSONA_CODE_FIELD}", f"is read by an IP-Adapter unit only: {model.model_code}"
                                                             " is a ControlNet, whose ImageIndex is its control image")
    require_persona(svc, owner, code)


def _check_adapter_unit(name: str, unit: ControlUnit, model: ModelEntry, main: ModelEntry) -> None:
    """A unit naming an adapter (an IP-Adapter): its image is the reference itself, so a PreProcessor is 230; an
    adapter of another family than the main model's is 240 (docs/API.md "IP-Adapter units")."""
    if unit.preprocessor is not None:
        raise ApiError.param(f"{name}.PreProcessor", f"must be left out: {model.model_code} is an {model.adapter},"
                                                     " whose ImageIndex is the reference image itself")
    if model.family != main.family:
        raise ApiError(RetCode.UNKNOWN_MODEL, family_message(model.model_code, model.family, main.model_code,
                                                             main.family))


def _clothes_segmenter(req: GenerateRequest, svc: Services, notes: list[str]) -> ModelEntry | None:
    """Without ``Mannequin.ClothesMaskIndex``: the ClothesSegmenter that makes the mask (the request's
    ``Mannequin.ClothesSegmenter``, else the deployment's default); 230 when the deployment has none."""
    if req.clothes_mask_index is not None:
        return None
    if req.clothes_segmenter is not None:
        entry = svc.registry.require(req.clothes_segmenter, ModelType.CLOTHES_SEGMENTER)
    else:
        entry = svc.registry.default_engine(ModelType.CLOTHES_SEGMENTER)
        if entry is None:
            raise ApiError.param("Mannequin.ClothesMaskIndex", "is required: this deployment has no clothes"
                                 " segmenter to find the garment (a ClothesSegmenter in models_config/)")
    classes = req.garment_classes or entry.garment_classes
    notes.append(f"Mannequin.ClothesMaskIndex: not given; the clothes mask is made by the clothes segmenter"
                 f" {entry.model_code}{f' (classes {classes})' if classes else ''} and served as"
                 f" {CLOTHES_MASK_URL_FIELD}")
    return entry


def draw_seed() -> int:
    """A Seed for a task whose request has none (or -1): uniform over 0 .. the highest Seed (``SEED_RANGE``)."""
    return secrets.randbelow(int(SEED_RANGE.hi) + 1)


def main_model(code: str | None, svc: Services, notes: list[str]) -> ModelEntry:
    """The Main model a request names (240 when it names none of the deployment's), or without one the deployment's
    default, named in the task's ``notes`` (230 when the deployment has none)."""
    if code is not None:
        return svc.registry.require(code, ModelType.MAIN)
    main = svc.registry.default_main()
    if main is None:
        raise ApiError.param("MainModel", "is required (this deployment has no default main model)")
    notes.append(f"MainModel: not given; the deployment's default {main.model_code} was used")
    return main


def generate_from_mannequin(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    req = parse_generate(call.body, max_images=s.max_images, max_pixels=s.max_image_pixels,
                         max_prompt_chars=s.max_prompt_chars, allow_private_callbacks=s.webhook_allow_private,
                         known_images=known_inputs(svc))
    return submit_generation(call, svc, req, JobMessage, clothes=True)


def submit_generation(call: SignedCall, svc: Services, req: GenerateRequest, job_class: type[JobMessage], *,
                      clothes: bool = False, label: str = "GenerateFromMannequin", **job_fields: Any) -> dict[str, Any]:
    """Check the models of a validated generation request (240), store the images its job uses, create the task
    (idempotent on PublicKey + request_uuid) and enqueue its ``job_class`` job (``job_fields`` added): what
    GenerateFromMannequin, GenerateBackgrounds, ModifyMaskedPixels and GenerateImages share (a request whose
    ``mannequin_index`` is None keeps nothing: its job has no ``mannequin_image``). ``clothes``: a request without
    ``clothes_mask_index`` has its mask made by the clothes segmenter (GenerateFromMannequin)."""
    callback = callback_url(req.callback_url, call, svc)
    notes = []
    main = main_model(req.main_model, svc, notes)
    if req.ignored_fields:
        notes.append(f"ignored fields: {', '.join(req.ignored_fields)}")
    for sub in req.sub_models:
        svc.registry.require(sub.model_code, *SUBMODEL_TYPES)
    controls = _control_units(req, main, svc, call.public_key)
    if not is_lanczos(req.refine_upscaler):
        svc.registry.require(req.refine_upscaler, ModelType.UPSCALER)
    seed = req.seed if req.seed != -1 else draw_seed()
    segmenter = _clothes_segmenter(req, svc, notes) if clothes else None

    def stored(index: int) -> str:  # only the images the job uses, each once by content hash
        return store_input(svc, req.images[index])

    job_images = {"mannequin_image": stored(req.mannequin_index) if req.mannequin_index is not None else None,
                  "clothes_mask": stored(req.clothes_mask_index) if req.clothes_mask_index is not None else None,
                  "background_image": stored(req.background_index) if req.background_index is not None else None}
    control_units = [ControlUnitRef(image=stored(index) if index is not None else None, **fields)
                     for index, fields in controls]
    job = job_class(
        task_uid=new_task_uid(), main_model=main.model_code,
        sub_models=[SubModelRef(model_code=m.model_code, lora_weight=m.lora_weight) for m in req.sub_models],
        positive_prompts=req.positive_prompts, negative_prompts=req.negative_prompts,
        translate_prompts=req.translate_prompts, seed=seed, width=req.width, height=req.height,
        batch_size=req.batch_size, use_main_model_vae=req.use_main_model_vae,
        resize_mode=req.resize_mode, invert_mask=req.invert_mask, refer_strength=req.refer_strength,
        refine_strength=req.refine_strength, refine_upscaler=req.refine_upscaler, face_refine=req.face_refine,
        face_strength=req.face_strength,
        background_resize_mode=req.background_resize_mode, control_units=control_units,
        clothes_segmenter=segmenter.model_code if segmenter else None,
        garment_classes=req.garment_classes if segmenter else None,
        **job_images, **job_fields,
    )
    uid = submit(call, svc, job=job, seed=seed, notes=notes, points=main.points, callback=callback,
                 priority=req.priority, model=main.model_code)
    if uid != job.task_uid:  # a repeated request_uuid: the first task's
        return {"TaskUID": uid}
    log.info("task %s queued for %s (%s, model %s, %dx%d x%d)", uid, call.public_key, label, main.model_code,
             req.width, req.height, req.batch_size)
    return {"TaskUID": uid}
