"""CancelTask (an extension of PICPIK's API, docs/API.md): the caller's tasks stop.

A Queuing task ends Canceled at once and never runs; a Running one is flagged, and its worker ends it Canceled
at its next denoising step (within about half a second: workers/lifecycle/watch.py ``JobWatch``) and takes the next job.
A task that already ended is left as it is, so cancelling twice is harmless. Another key's TaskUIDs are left
out of the answer, as ListTasksDetails leaves them out.
"""
from __future__ import annotations

from typing import Any

from app.actions.base import SignedCall
from app.actions.tasks import task_detail
from app.contract.limits import MAX_TASK_UIDS
from app.services import Services
from app.validation.fields import check_str_list


def cancel_task(call: SignedCall, svc: Services) -> dict[str, Any]:
    uids = list(dict.fromkeys(check_str_list(call.body.get("TaskUIDList"), "TaskUIDList", max_items=MAX_TASK_UIDS)))
    owned = [rec.uid for rec in svc.tasks.get_many(uids) if rec is not None and rec.owner == call.public_key]
    for uid in owned:
        svc.tasks.cancel(uid)
    return {"TaskDetailList": [task_detail(rec, call, svc) for rec in svc.tasks.get_many(owned) if rec is not None]}
