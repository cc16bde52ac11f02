"""GenerateFromMannequin's ``FaceRefine`` extension at the gateway (app/validation/generate.py,
app/actions/generate.py): ``Enabled`` (a Bool, true when FaceRefine is sent without it) and ``Strength`` (0..1), 230
naming the field, and the values carried in the job message. What the worker does with them:
tests/worker/jobs/test_faces.py."""
from __future__ import annotations

import base64

import orjson
import pytest
import redis

from app.contract.codes import RetCode
from app.contract.jobs import JobMessage
from app.contract.limits import FACE_REFINE_FIELD, FACE_STRENGTH_RANGE
from app.errors import ApiError
from app.validation.generate import parse_generate
from support.api import generate_body, queued_raw, signed
from support.bodies import LIMITS, body


def parse(**fields):
    return parse_generate(body(**fields), **LIMITS)


def rejected(name: str, **fields) -> str:
    with pytest.raises(ApiError) as info:
        parse(**fields)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


@pytest.mark.parametrize("value, enabled, strength", [
    (None, None, None),                                 # absent: the main model's faces: decide
    ({}, True, None),                                   # sent: on, at the model's strength
    ({"Enabled": False}, False, None),
    ({"Enabled": True, "Strength": 0.55}, True, 0.55),
    ({"Strength": 0.3}, True, 0.3),                     # a strength alone asks for the refinement
    ({"Strength": FACE_STRENGTH_RANGE.lo}, True, 0.0),
    ({"Strength": 1}, True, 1.0),
    ({"Enabled": None, "Strength": None, "Other": 1}, True, None),
])
def test_face_refine_is_read(value, enabled, strength):
    req = parse(**({} if value is None else {FACE_REFINE_FIELD: value}))
    assert (req.face_refine, req.face_strength) == (enabled, strength)
    assert req.ignored_fields == []


@pytest.mark.parametrize("value, name, rule", [
    ({"Strength": 1.01}, "FaceRefine.Strength", "must be between 0 and 1"),
    ({"Strength": -0.01}, "FaceRefine.Strength", "must be between 0 and 1"),
    ({"Strength": 2}, "FaceRefine.Strength", "must be between 0 and 1"),
    ({"Strength": "0.4"}, "FaceRefine.Strength", "must be a number"),
    ({"Enabled": "yes"}, "FaceRefine.Enabled", "must be a boolean (true or false)"),
    ({"Enabled": 1}, "FaceRefine.Enabled", "must be a boolean (true or false)"),
    (True, "FaceRefine", "must be an object"),
    ([0.4], "FaceRefine", "must be an object"),
])
def test_a_bad_face_refine_is_230_naming_the_field(value, name, rule):
    assert rejected(name, FaceRefine=value) == rule


def test_face_refine_is_checked_after_refine_and_before_callback_url():
    assert rejected("Refine.Strength", Refine={"Strength": 3}, FaceRefine={"Strength": 3})
    assert rejected("FaceRefine.Strength", FaceRefine={"Strength": 3}, CallbackUrl="not a url")


def test_the_job_message_carries_face_refine(api, atelier_env):
    uids = {}
    for name, extra in (("absent", {}), ("off", {"FaceRefine": {"Enabled": False}}),
                        ("strength", {"FaceRefine": {"Strength": 0.6}})):
        out = api(signed(generate_body(**extra)))
        assert out["RetCode"] == 0, out
        uids[out["TaskUID"]] = name
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    jobs = {}
    for message in map(orjson.loads, queued_raw(r, api.queue)):
        raw = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            raw = base64.b64decode(raw)
        job = JobMessage.model_validate(orjson.loads(raw)[0][0])
        if job.task_uid in uids:
            jobs[uids[job.task_uid]] = (job.face_refine, job.face_strength)
    assert jobs == {"absent": (None, None), "off": (False, None), "strength": (True, 0.6)}
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": list(uids)}))["TaskDetailList"]
    assert not any("ignored fields" in note for d in detail for note in d["Notes"])
