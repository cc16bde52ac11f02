"""RestoreFaces at the gateway (app/validation/restore_faces.py, app/actions/restore_faces.py): ``RawImage`` required
and an image, ``RestoreStrength`` 0..1 (default 0.5), ``MainModel`` (an extension) a Main model of the deployment or
240, unknown fields named in the Notes, and a valid request queued as the ``atelier.restore_faces`` Celery task with a
drawn seed and the model's points. What the worker makes of it: tests/worker/jobs/test_restore_faces.py,
tests/e2e/test_restore_faces.py."""
from __future__ import annotations

import base64

import orjson
import pytest
import redis
from PIL import Image

from app.contract.codes import RetCode
from app.contract.jobs import RESTORE_FACES_TASK_NAME, RestoreFacesJobMessage
from app.contract.limits import DEFAULT_RESTORE_STRENGTH, RESTORE_STRENGTH_RANGE
from app.errors import ApiError
from app.validation.restore_faces import parse_restore_faces
from support.api import png_b64, queued_raw, signed

IMG = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))


def body(**fields) -> dict:
    return {"Action": "RestoreFaces", "RawImage": IMG, **fields}


def rejected(b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse_restore_faces(b, max_pixels=10_000)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_a_valid_body_and_its_defaults():
    req = parse_restore_faces(body(Extra=1), max_pixels=10_000)
    assert (req.strength, req.main_model, req.callback_url) == (DEFAULT_RESTORE_STRENGTH, None, None)
    assert DEFAULT_RESTORE_STRENGTH == 0.5
    assert (req.image.width, req.image.height) == (40, 30) and req.ignored_fields == ["Extra"]
    req = parse_restore_faces(body(RestoreStrength=0.25, MainModel={"ModelCode": "demo-inpaint", "Name": "x"}),
                              max_pixels=10_000)
    assert (req.strength, req.main_model) == (0.25, "demo-inpaint")


@pytest.mark.parametrize("value", [RESTORE_STRENGTH_RANGE.lo, RESTORE_STRENGTH_RANGE.hi, 1, 0.01])
def test_the_bounds_of_the_strength_are_accepted(value):
    assert parse_restore_faces(body(RestoreStrength=value), max_pixels=10_000).strength == value


@pytest.mark.parametrize("fields, name, rule", [
    ({"RawImage": None}, "RawImage", "is required"),
    ({"RawImage": ""}, "RawImage", "must be a non-empty string"),
    ({"RawImage": 5}, "RawImage", "must be a string"),
    ({"RawImage": "bm90IGFuIGltYWdl"}, "RawImage", "not a decodable image"),  # base64 of "not an image"
    ({"RawImage": "!!"}, "RawImage", ""),
    ({"RestoreStrength": 2}, "RestoreStrength", "must be between 0 and 1"),
    ({"RestoreStrength": -0.01}, "RestoreStrength", "must be between 0 and 1"),
    ({"RestoreStrength": 1.01}, "RestoreStrength", "must be between 0 and 1"),
    ({"RestoreStrength": "0.5"}, "RestoreStrength", "must be a number"),
    ({"RestoreStrength": True}, "RestoreStrength", "must be a number"),
    ({"MainModel": "demo-inpaint"}, "MainModel", "must be an object"),
    ({"MainModel": {}}, "MainModel.ModelCode", "is required"),
    ({"MainModel": {"ModelCode": ""}}, "MainModel.ModelCode", "must be a non-empty string"),
    ({"CallbackUrl": "ftp://x"}, "CallbackUrl", "must be an http or https URL"),
])
def test_bad_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(body(**fields), name)


def test_the_fields_are_checked_before_the_image_is_decoded():
    rejected(body(RawImage="bm90IGFuIGltYWdl", RestoreStrength=2), "RestoreStrength")


@pytest.mark.parametrize("code", ["no-such-model", "demo-lora", "demo-controlnet", "grabcut"])
def test_an_unknown_or_non_main_model_is_240(api, code):
    out = api(signed(body(MainModel={"ModelCode": code})))
    assert out["RetCode"] == 240 and out["Message"] == f"Model [{code}] not exists", out


def test_a_raw_image_that_is_not_an_image_through_the_gateway(api):
    out = api(signed(body(RawImage="bm90IGFuIGltYWdl")))
    assert out["RetCode"] == 230 and out["Message"].startswith("Params [RawImage] not available: "), out


def _queued(api, atelier_env, uid: str) -> list[dict]:
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    return [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]


def _job(message: dict) -> RestoreFacesJobMessage:
    raw = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    return RestoreFacesJobMessage.model_validate(orjson.loads(raw)[0][0])


def test_a_valid_request_queues_a_restore_faces_task(api, atelier_env):
    out = api(signed(body(RestoreStrength=0.3, Upscaler="x")))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    sent = _queued(api, atelier_env, uid)
    assert [m["headers"]["task"] for m in sent] == [RESTORE_FACES_TASK_NAME] == ["atelier.restore_faces"]
    job = _job(sent[0])
    assert (job.task_uid, job.main_model, job.strength, len(job.image)) == (uid, "demo-inpaint", 0.3, 64)
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Action"], detail["Status"], detail["Seed"]) == ("RestoreFaces", "Queuing", job.seed)
    assert detail["Notes"] == ["MainModel: not given; the deployment's default demo-inpaint was used",
                               "ignored fields: Upscaler"]


def test_the_main_model_named_is_the_one_sent(api, atelier_env):
    out = api(signed(body(MainModel={"ModelCode": "demo-sd15"})))
    assert out["RetCode"] == 0, out
    assert _job(_queued(api, atelier_env, out["TaskUID"])[0]).main_model == "demo-sd15"
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [out["TaskUID"]]}))["TaskDetailList"][0]
    assert detail["Notes"] == []
