"""ListTasksDetails and ListRunningTasks: a caller sees only its own tasks."""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.contract.limits import CLOTHES_MASK_URL_FIELD, MAX_TASK_UIDS
from app.contract.taskstore import TaskRecord
from app.resultlinks import make_link
from app.services import Services
from app.validation.fields import check_str_list


def task_detail(rec: TaskRecord, call: SignedCall, svc: Services) -> dict[str, Any]:
    exp = int((rec.finished_at or rec.created_at) + svc.settings.result_retention_s)
    base = svc.settings.base_url()
    detail = {
        "TaskUID": rec.uid,
        "Action": rec.action,
        "Status": rec.status.value,
        "ImgList": [make_link(base, call.private_key, rec.uid, name, exp) for name in rec.images],
        "Seed": rec.seed,
        "TxtList": [],                      # text results: none for the image actions
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
        detail[CLOTHES_MASK_URL_FIELD] = make_link(base, call.private_key, rec.uid, rec.clothes_mask, exp)
    return detail


def list_tasks_details(call: SignedCall, svc: Services) -> dict[str, Any]:
    uids = check_str_list(call.body.get("TaskUIDList"), "TaskUIDList", max_items=MAX_TASK_UIDS)
    uids = list(dict.fromkeys(uids))
    recs = svc.tasks.get_many(uids)
    return {"TaskDetailList": [task_detail(r, call, svc) for r in recs
                               if r is not None and r.owner == call.public_key]}


def list_running_tasks(call: SignedCall, svc: Services) -> dict[str, Any]:
    return {"TaskUIDList": svc.tasks.active(call.public_key)}
