"""One module per action; :data:`ACTIONS` maps each Action name to its handler (see ``base.py``).

Which actions exist, and which of them create a task run by which Celery task, is the contract's action table
(``ACTION_SPECS``, ``app/contract/jobs.py``), shared with the workers; this module adds the gateway's part, the
handler of each. :func:`handler_table` refuses a table where the two disagree, so the gateway does not start with
an action it cannot answer or a handler the workers know nothing of.
"""
from __future__ import annotations

from collections.abc import Mapping

from app.actions.base import Handler
from app.actions.cancel import cancel_task
from app.actions.describe import describe_images
from app.actions.generate import generate_from_mannequin
from app.actions.generate_images import generate_images
from app.actions.masks import mask_action
from app.actions.models import list_control_nets, list_models
from app.actions.personas import create_persona, delete_persona, list_personas
from app.actions.remove_contents import remove_contents
from app.actions.resize import resize_image
from app.actions.restore_faces import restore_faces
from app.actions.scenes import generate_backgrounds, modify_masked_pixels
from app.actions.switch_face import switch_face
from app.actions.tasks import list_running_tasks, list_tasks_details
from app.contract.jobs import ACTION_SPECS, ActionSpec
from app.contract.limits import (
    CREATE_PERSONA_ACTION,
    DELETE_PERSONA_ACTION,
    DESCRIBE_IMAGES_ACTION,
    GENERATE_BACKGROUNDS_ACTION,
    GENERATE_IMAGES_ACTION,
    LIST_PERSONAS_ACTION,
    MODIFY_MASKED_ACTION,
    REMOVE_CONTENTS_ACTION,
    RESIZE_ACTION,
    RESTORE_FACES_ACTION,
    SWITCH_FACE_ACTION,
)

#: The handler of each action of ``ACTION_SPECS`` (the same names, no other).
HANDLERS: dict[str, Handler] = {
    "GenerateFromMannequin": generate_from_mannequin,
    "ListTasksDetails": list_tasks_details,
    "ListModels": list_models,
    "ListRunningTasks": list_running_tasks,
    "ListControlNets": list_control_nets,
    "CancelTask": cancel_task,
    "RemoveBackground": mask_action,
    "RemoveBackgroundsInBatch": mask_action,
    "ExtractContents": mask_action,
    RESIZE_ACTION: resize_image,
    RESTORE_FACES_ACTION: restore_faces,
    CREATE_PERSONA_ACTION: create_persona,
    LIST_PERSONAS_ACTION: list_personas,
    DELETE_PERSONA_ACTION: delete_persona,
    SWITCH_FACE_ACTION: switch_face,
    GENERATE_BACKGROUNDS_ACTION: generate_backgrounds,
    MODIFY_MASKED_ACTION: modify_masked_pixels,
    REMOVE_CONTENTS_ACTION: remove_contents,
    DESCRIBE_IMAGES_ACTION: describe_images,
    GENERATE_IMAGES_ACTION: generate_images,
}


def handler_table(specs: Mapping[str, ActionSpec], handlers: Mapping[str, Handler]) -> dict[str, Handler]:
    """The handler of every action of ``specs``, in its order; ValueError naming the actions of one side only."""
    missing, unknown = [n for n in specs if n not in handlers], [n for n in handlers if n not in specs]
    if missing or unknown:
        problems = ([f"no handler for {', '.join(missing)}"] if missing else []) + (
            [f"a handler of no action: {', '.join(unknown)}"] if unknown else [])
        raise ValueError("the gateway's handlers (app/actions/__init__.py HANDLERS) and the contract's action table"
                         f" (app/contract/jobs.py ACTION_SPECS) disagree: {'; '.join(problems)}")
    return {name: handlers[name] for name in specs}


ACTIONS: dict[str, Handler] = handler_table(ACTION_SPECS, HANDLERS)
