"""ListTasksDetails and ListRunningTasks: a caller sees only its own tasks."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.contract.limits import CLOTHES_MASK_URL_FIELD, MAX_TASK_UIDS, TXT_LIST_FIELD
from app.contract.taskstore import TaskRecord
from app.resultlinks import make_link
from app.services import Services
from app.validation.fields import check_str_list


def task_detail(rec: TaskRecord, call: SignedCall, svc: Services) -> dict[str, Any]:
    exp = int((rec.finished_at or rec.created_at) + svc.settings.result_retention_s)
    base = svc.settings.base_url()

    def link(name: str) -> str:
        """The storage's own link when it has one (a bucket's presigned URL), else the gateway's signed one."""
        return svc.storage.result_link(rec.uid, name, exp) or make_link(base, call.private_key, rec.uid, name, exp)

    detail = {
        "TaskUID": rec.uid,
        "Action": rec.action,
        "Status": rec.status.value,
        "ImgList": [link(name) for name in rec.images],
        "Seed": rec.seed,
        TXT_LIST_FIELD: list(rec.texts),    # text results (DescribeImages: one per image); [] for the image actions
        "ConsumeApiPoint": rec.consumed_points,
        "ErrorCode": rec.error_code,
        "ErrorMassage": rec.error_message,   # sic: the reference's spelling
        "ErrorMessage": rec.error_message,
        "Progress": rec.progress,
        "Step": rec.step,
        "TotalSteps": rec.total_steps,
        "Notes": rec.notes,
    }
    if rec.clothes_mask:  # the clothes mask the worker made (GenerateFromMannequin without ClothesMaskIndex)
        detail[CLOTHES_MASK_URL_FIELD] = link(rec.clothes_mask)
    return detail


def list_tasks_details(call: SignedCall, svc: Services) -> dict[str, Any]:
    uids = check_str_list(call.body.get("TaskUIDList"), "TaskUIDList", max_items=MAX_TASK_UIDS)
    uids = list(dict.fromkeys(uids))
    recs = svc.tasks.get_many(uids)
    return {"TaskDetailList": [task_detail(r, call, svc) for r in recs
                               if r is not None and r.owner == call.public_key]}


def list_running_tasks(call: SignedCall, svc: Services) -> dict[str, Any]:
    """The caller's Queuing and Running TaskUIDs, of every task-creating action of the action table alike
    (``ACTION_SPECS``): only ``submit`` creates tasks, and it refuses an action that creates none."""
    return {"TaskUIDList": svc.tasks.active(call.public_key)}
