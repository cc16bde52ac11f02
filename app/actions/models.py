"""ListModels and ListControlNets: generated from the deployment's models_config/."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.contract.limits import (
    DESCRIBERS_FIELD,
    ERASERS_FIELD,
    GENERATION_TYPES,
    LIST_MODELS_FIELDS,
    MASK_ENGINE_TYPES,
    UPSCALERS_FIELD,
    ModelType,
)
from app.services import Services


def list_models(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListModels: PICPIK's ``MainModels``, ``LoraModels``, ``EmbeddingModels``, ``HypernetworkModels`` (arrays
    of Model objects), and, beyond PICPIK, ``Models``: all of them in one list, each with its ``ModelType``,
    ``MaskEngines``: the mask engines a request may name as ``Engine`` (or ``Mannequin.ClothesSegmenter``), and
    ``Upscalers``: the Upscalers a request may name as ``Upscaler`` (ResizeImage) or ``Refine.Upscaler`` (Lanczos,
    which needs no model, is not listed), ``Erasers`` and ``Describers``: what RemoveContents' ``Eraser`` and
    DescribeImages' ``Describer`` may name (a Describer with its ``Languages``)."""
    reg = svc.registry
    answer: dict[str, Any] = {field: [e.to_model() for e in reg.entries_of(model_type)]
                              for model_type, field in LIST_MODELS_FIELDS.items()}
    answer["Models"] = [e.to_wire() for e in reg.entries_of(*GENERATION_TYPES)]
    answer["MaskEngines"] = [{**e.to_engine(), "Default": reg.default_engine(e.model_type) is e}
                             for e in reg.entries_of(*MASK_ENGINE_TYPES)]
    answer[UPSCALERS_FIELD] = [e.to_upscaler() for e in reg.entries_of(ModelType.UPSCALER)]
    answer[ERASERS_FIELD] = [e.to_tool() for e in reg.entries_of(ModelType.ERASER)]
    answer[DESCRIBERS_FIELD] = [e.to_tool() for e in reg.entries_of(ModelType.DESCRIBER)]
    return answer


def list_control_nets(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListControlNets: ``PreProcessors`` and ``ControlModels``, arrays of ``{ModelCode, Name, InferenceParams}``
    with the default InferenceParams."""
    reg = svc.registry
    return {"PreProcessors": [e.to_control() for e in reg.entries_of(ModelType.PRE_PROCESSOR)],
            "ControlModels": [e.to_control() for e in reg.entries_of(ModelType.CONTROL_MODEL)]}
