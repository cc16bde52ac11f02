"""ListModels: the deployment's models (models_config/), each a PICPIK Model plus ModelType."""
from __future__ import annotations

from typing import Any

from app.deps import SignedCall
from app.services import Services


def list_models(call: SignedCall, svc: Services) -> dict[str, Any]:
    return {"Models": [e.to_wire() for e in svc.registry.entries()]}
