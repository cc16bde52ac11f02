"""One module per action; each handler takes the verified call and the services and returns the
answer's fields (RetCode/Message/Action/request_uuid are added by app.main)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.actions.generate import generate_from_mannequin
from app.actions.models import list_control_nets, list_models
from app.actions.tasks import list_running_tasks, list_tasks_details

ACTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "GenerateFromMannequin": generate_from_mannequin,
    "ListTasksDetails": list_tasks_details,
    "ListModels": list_models,
    "ListRunningTasks": list_running_tasks,
    "ListControlNets": list_control_nets,
}
