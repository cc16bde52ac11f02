"""ListModels and ListControlNets: generated from the deployment's models_config/."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.contract.limits import GENERATION_TYPES
from app.services import Services


def list_models(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListModels: the models usable as MainModel or in SubModelList (each with ModelType)."""
    return {"Models": [e.to_wire() for e in svc.registry.entries_of(*GENERATION_TYPES)]}


def list_control_nets(call: SignedCall, svc: Services) -> dict[str, Any]:
    """ListControlNets: PreProcessors and ControlModels with their default InferenceParams."""
    reg = svc.registry
    return {"PreProcessors": [e.to_wire() for e in reg.entries_of("PreProcessor")],
            "ControlModels": [e.to_wire() for e in reg.entries_of("ControlModel")]}
