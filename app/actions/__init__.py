"""One module per action; :data:`ACTIONS` maps each Action name to its handler (see ``base.py``)."""
from __future__ import annotations

from app.actions.base import Handler
from app.actions.cancel import cancel_task
from app.actions.generate import generate_from_mannequin
from app.actions.masks import mask_action
from app.actions.models import list_control_nets, list_models
from app.actions.tasks import list_running_tasks, list_tasks_details

ACTIONS: dict[str, Handler] = {
    "GenerateFromMannequin": generate_from_mannequin,
    "ListTasksDetails": list_tasks_details,
    "ListModels": list_models,
    "ListRunningTasks": list_running_tasks,
    "ListControlNets": list_control_nets,
    "CancelTask": cancel_task,  # an extension of PICPIK's API
    "RemoveBackground": mask_action,
    "RemoveBackgroundsInBatch": mask_action,
    "ExtractContents": mask_action,
}
