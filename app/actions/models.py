"""ListModels and ListControlNets: generated from the deployment's models_config/."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.contract.limits import GENERATION_TYPES, LIST_MODELS_FIELDS, MASK_ENGINE_TYPES, ModelType
from app.services import Services


def list_models(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListModels: PICPIK's ``MainModels``, ``LoraModels``, ``EmbeddingModels``, ``HypernetworkModels`` (arrays
    of Model objects), and, beyond PICPIK, ``Models``: all of them in one list, each with its ``ModelType``, and
    ``MaskEngines``: the mask engines a request may name as ``Engine`` (or ``Mannequin.ClothesSegmenter``)."""
    reg = svc.registry
    answer: dict[str, Any] = {field: [e.to_model() for e in reg.entries_of(model_type)]
                              for model_type, field in LIST_MODELS_FIELDS.items()}
    answer["Models"] = [e.to_wire() for e in reg.entries_of(*GENERATION_TYPES)]
    answer["MaskEngines"] = [{**e.to_engine(), "Default": reg.default_engine(e.model_type) is e}
                             for e in reg.entries_of(*MASK_ENGINE_TYPES)]
    return answer


def list_control_nets(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListControlNets: ``PreProcessors`` and ``ControlModels``, arrays of ``{ModelCode, Name, InferenceParams}``
    with the default InferenceParams."""
    reg = svc.registry
    return {"PreProcessors": [e.to_control() for e in reg.entries_of(ModelType.PRE_PROCESSOR)],
            "ControlModels": [e.to_control() for e in reg.entries_of(ModelType.CONTROL_MODEL)]}
