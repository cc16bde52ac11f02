"""The gateway reads one action table (``ACTION_SPECS``, app/contract/jobs.py) everywhere: its handlers
(app/actions/__init__.py) are checked against it, submit sends each job as its action's Celery task, and the
recovery (app/background.py) sends a lost job again to that same task. What the table says: tests/contract/
test_actions.py.

The recovery tests run a private redis-server, not the shared test Redis: ``recover_once`` acts on every expired
lease it finds, and other tests (or other runs) leave theirs in the shared one. Its jobs go through a real Celery
app to that Redis, and the tests read what arrived in the queue."""
from __future__ import annotations

import base64
import time
import uuid

import orjson
import pytest
import redis

from app.actions import ACTIONS, HANDLERS, handler_table
from app.actions.base import SignedCall
from app.actions.submit import submit
from app.background import recover_once
from app.contract.codes import ErrorCode
from app.contract.jobs import (
    ACTION_SPECS,
    JOB_TASK_NAMES,
    ActionSpec,
    JobMessage,
    JobTask,
    MaskJobMessage,
    NoTaskAction,
    task_name_for,
)
from app.contract.limits import DEFAULT_PRIORITY
from app.contract.queue import broker_priority, queue_lists
from app.contract.redis_conn import get_redis
from app.contract.settings import get_settings
from app.contract.taskstore import new_task_uid
from app.services import Services, get_services
from support.api import TASK_BODIES, queued_raw, signed
from support.webhooks import private_redis as start_private_redis

TASK_ACTIONS = [name for name, spec in ACTION_SPECS.items() if spec.creates_task]


# --- the handlers ----------------------------------------------------------------------------------------------


def test_the_gateway_answers_exactly_the_actions_of_the_contract():
    assert list(ACTIONS) == list(ACTION_SPECS) and set(HANDLERS) == set(ACTION_SPECS)
    assert all(ACTIONS[name] is HANDLERS[name] for name in ACTIONS)


def test_an_action_of_the_contract_without_a_handler_is_refused():
    """What the gateway's import does with ``ACTION_SPECS``: a new action without a handler stops it starting."""
    specs = {**ACTION_SPECS, "CropImage": ActionSpec("CropImage", JobTask("atelier.crop", JobMessage))}
    with pytest.raises(ValueError, match=r"disagree: no handler for CropImage$"):
        handler_table(specs, HANDLERS)
    with pytest.raises(ValueError, match=r"disagree: a handler of no action: CropImage$"):
        handler_table(ACTION_SPECS, {**HANDLERS, "CropImage": HANDLERS["ListModels"]})
    assert handler_table(specs, {**HANDLERS, "CropImage": HANDLERS["ListModels"]})["CropImage"] is \
        HANDLERS["ListModels"]


# --- submit ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", TASK_ACTIONS)
def test_submit_sends_each_action_as_its_celery_task_and_lists_it_running(api, atelier_env, action):
    if action not in TASK_BODIES:
        pytest.skip(f"no request body for {action} in this test (add one to TASK_BODIES)")
    out = api(signed(TASK_BODIES[action]()))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    sent = [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]
    assert [m["headers"]["task"] for m in sent] == [task_name_for(action)]
    job = _args(sent[0])[0]
    assert ACTION_SPECS[action].task.job.model_validate(job).task_uid == uid
    assert uid in api(signed({"Action": "ListRunningTasks"}))["TaskUIDList"]
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Action"], detail["Status"]) == (action, "Queuing")


def test_submit_refuses_an_action_without_a_task_and_a_job_of_another_class():
    """Programming errors, raised before anything is stored or sent (no Redis is reached: the settings' own)."""
    svc = Services(get_settings())
    mask_job = MaskJobMessage(task_uid="u" * 21, action="RemoveBackground", engine="e", images=["a" * 64])
    with pytest.raises(NoTaskAction, match="'ListModels' creates no task"):
        submit(SignedCall("ListModels", "pk", "sk", {}), svc, job=mask_job, seed=0, notes=[], points=1, callback=None)
    with pytest.raises(TypeError, match="GenerateFromMannequin sends JobMessage jobs, not MaskJobMessage"):
        submit(SignedCall("GenerateFromMannequin", "pk", "sk", {}), svc, job=mask_job, seed=0, notes=[], points=1,
               callback=None)


# --- the recovery ----------------------------------------------------------------------------------------------


def _args(message: dict) -> list:
    """The positional arguments of a Celery message as kombu's Redis transport stores it."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return orjson.loads(body)[0]


@pytest.fixture()
def private_redis(tmp_path):
    with start_private_redis(tmp_path) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        yield url, client
        client.close()


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_redis.cache_clear()
    get_services.cache_clear()


@pytest.fixture()
def recovery(atelier_env, private_redis, monkeypatch):
    """The gateway's services on the private Redis (task store and Celery alike), and that Redis."""
    url, client = private_redis
    monkeypatch.setenv("ATELIER_REDIS_URL", url)
    monkeypatch.setenv("ATELIER_QUEUE", f"atelier-recovery-{uuid.uuid4().hex[:8]}")
    _clear_caches()
    svc = Services(get_settings())
    yield svc, client
    svc.celery.close()
    monkeypatch.undo()
    _clear_caches()


def _lost(svc: Services, action: str, priority: int = DEFAULT_PRIORITY) -> tuple[str, dict]:
    """A task of ``action`` (queued at ``priority``) whose worker died: Running, its lease expired. Its job is a
    marker (the recovery sends the stored job as it is)."""
    uid = new_task_uid()
    job = {"v": 1, "task_uid": uid, "marker": action}
    assert svc.tasks.create("pk-recovery", None, action, 0, 0, uid=uid, job=job, queue=svc.settings.queue,
                            priority=priority)[1]
    assert svc.tasks.start(uid, "host:1", lease_s=-1, total_steps=4) == ("started", 1)
    return uid, job


def _queued(client: redis.Redis, queue: str) -> dict[str, tuple[str, dict]]:
    """What the queue holds, by TaskUID: (the Celery task name, the job message)."""
    out = {}
    for raw in queued_raw(client, queue):
        message = orjson.loads(raw)
        job = _args(message)[0]
        out[job["task_uid"]] = (message["headers"]["task"], job)
    return out


def test_every_task_creating_action_s_lost_job_is_sent_again_to_its_own_celery_task(recovery):
    svc, client = recovery
    lost = {action: _lost(svc, action) for action in TASK_ACTIONS}
    done = recover_once(svc)
    assert sorted(done) == sorted((uid, "requeue") for uid, _ in lost.values())
    queued = _queued(client, svc.settings.queue)
    assert len(queued) == len(lost)
    for action, (uid, job) in lost.items():
        assert queued[uid] == (ACTION_SPECS[action].task.name, job), action
        assert svc.tasks.get(uid).status == "Queuing" and svc.tasks.get(uid).deaths == 1
    assert {queued[uid][0] for uid, _ in lost.values()} == set(JOB_TASK_NAMES)  # every Celery task, none other


def test_a_lost_job_is_sent_again_at_the_priority_it_was_queued_at(recovery):
    svc, client = recovery
    lost = {p: _lost(svc, "ResizeImage", p)[0] for p in (0, 5, 9)}
    recover_once(svc)
    lists = queue_lists(svc.settings.queue)
    for priority, uid in lost.items():
        (raw,) = [m for m in client.lrange(lists[broker_priority(priority)], 0, -1) if uid in m]
        assert orjson.loads(raw)["properties"]["priority"] == broker_priority(priority)


def test_a_new_action_s_lost_job_goes_to_its_own_task_not_to_generate(recovery, monkeypatch):
    """The bug of issue 21: recovery sent every action that was not a mask action to ``atelier.generate``."""
    svc, client = recovery
    crop = ActionSpec("CropImage", JobTask("atelier.crop", JobMessage))
    monkeypatch.setitem(ACTION_SPECS, "CropImage", crop)
    uid, job = _lost(svc, "CropImage")
    assert recover_once(svc) == [(uid, "requeue")]
    assert _queued(client, svc.settings.queue) == {uid: ("atelier.crop", job)}


@pytest.mark.parametrize("action", ["ListModels", "NoSuchAction"])
def test_a_lost_task_of_an_action_without_a_task_ends_in_error_and_is_sent_nowhere(recovery, action):
    svc, client = recovery
    uid, _ = _lost(svc, action)
    assert recover_once(svc) == [(uid, "error")]
    assert _queued(client, svc.settings.queue) == {}
    rec = svc.tasks.get(uid)
    assert rec.status == "Error" and rec.error_code == ErrorCode.INTERNAL
    assert rec.error_message == f"Internal error (no Celery task runs {action})"



def test_a_lost_task_without_its_job_message_ends_in_error(recovery):
    svc, client = recovery
    uid, _ = svc.tasks.create("pk-recovery", None, "GenerateFromMannequin", 0, 0)
    svc.tasks.start(uid, "host:1", lease_s=-1, total_steps=4)
    assert recover_once(svc) == [(uid, "error")]
    assert _queued(client, svc.settings.queue) == {}
    rec = svc.tasks.get(uid)
    assert (rec.status, rec.error_message) == ("Error", "Internal error (the task's job message is missing)")


# --- a gateway that dies between creating a task and sending its job ------------------------------------------


def _created(svc: Services, send_within_s: float) -> tuple[str, dict]:
    uid = new_task_uid()
    job = {"v": 1, "task_uid": uid, "marker": "unsent"}
    assert svc.tasks.create("pk-recovery", None, "ResizeImage", 0, 0, uid=uid, job=job, queue=svc.settings.queue,
                            send_within_s=send_within_s)[1]
    return uid, job


def test_a_task_whose_job_was_never_sent_is_sent_by_the_reaper_after_the_grace(recovery):
    svc, client = recovery
    unsent, job = _created(svc, send_within_s=0.2)
    sent, _ = _created(svc, send_within_s=0.2)
    svc.tasks.sent(sent)
    assert recover_once(svc) == []  # within the grace: nothing to do
    time.sleep(0.3)
    assert recover_once(svc) == [(unsent, "resend")]
    assert _queued(client, svc.settings.queue) == {unsent: (task_name_for("ResizeImage"), job)}
    assert svc.tasks.get(unsent).status == "Queuing" and svc.tasks.get(unsent).deaths == 0


def test_recording_a_job_as_sent_keeps_the_lease_of_a_worker_that_already_started_it(recovery):
    """The worker may start the task between the gateway's send and its ``sent``: the lease must stay watched."""
    svc, client = recovery
    uid, _ = _created(svc, send_within_s=60)
    assert svc.tasks.start(uid, "host:1", lease_s=-1, total_steps=4) == ("started", 1)
    svc.tasks.sent(uid)
    assert recover_once(svc) == [(uid, "requeue")]  # its worker died: found by its lease
