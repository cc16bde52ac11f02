"""ResizeImage at the gateway (app/validation/resize.py, app/actions/resize.py): ``Image`` required and an image,
``Width`` / ``Height`` required Ints within 64..4096, ``Upscaler`` an Upscaler's ModelCode (240 otherwise) or
Lanczos, unknown fields named in the Notes, and a valid request queued as the ``atelier.resize`` Celery task. What
the worker makes of it: tests/worker/jobs/test_resize.py, tests/e2e/test_resize.py."""
from __future__ import annotations

import base64

import orjson
import pytest
import redis
from PIL import Image

from app.cli.client import resize_target
from app.contract.codes import RetCode
from app.contract.jobs import RESIZE_TASK_NAME, ResizeJobMessage
from app.contract.limits import RESIZE_SIZE_RANGE
from app.errors import ApiError
from app.services import get_services
from app.validation.resize import parse_resize_request
from support.api import png_b64, queued_raw, signed

IMG = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))


def body(**fields) -> dict:
    return {"Action": "ResizeImage", "Image": IMG, "Width": 256, "Height": 192, **fields}


def rejected(b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse_resize_request(b, max_pixels=10_000)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_a_valid_body():
    req = parse_resize_request(body(Upscaler="R-ESRGAN 4x+", Extra=1), max_pixels=10_000)
    assert (req.width, req.height, req.image.width, req.image.height) == (256, 192, 40, 30)
    assert req.upscaler == "R-ESRGAN 4x+" and req.callback_url is None and req.ignored_fields == ["Extra"]


@pytest.mark.parametrize("value", [None, "Lanczos", "lanczos", "LANCZOS"])
def test_no_upscaler_or_lanczos_is_lanczos(value):
    assert parse_resize_request(body(Upscaler=value), max_pixels=10_000).upscaler is None
    assert parse_resize_request(body(), max_pixels=10_000).upscaler is None


@pytest.mark.parametrize("value", [RESIZE_SIZE_RANGE.lo, RESIZE_SIZE_RANGE.hi, 4096.0])
def test_the_bounds_of_the_range_are_accepted(value):
    req = parse_resize_request(body(Width=value, Height=value), max_pixels=10_000)
    assert (req.width, req.height) == (int(value), int(value))


@pytest.mark.parametrize("fields, name, rule", [
    ({"Image": None}, "Image", "is required"),
    ({"Image": ""}, "Image", "must be a non-empty string"),
    ({"Image": 5}, "Image", "must be a string"),
    ({"Image": "bm90IGFuIGltYWdl"}, "Image", "not a decodable image"),  # base64 of "not an image"
    ({"Image": "!!"}, "Image", ""),
    ({"Width": None}, "Width", "is required"),
    ({"Height": None}, "Height", "is required"),
    ({"Width": 63}, "Width", "must be between 64 and 4096"),
    ({"Width": 4097}, "Width", "must be between 64 and 4096"),
    ({"Height": 0}, "Height", "must be between 64 and 4096"),
    ({"Height": 5000}, "Height", "must be between 64 and 4096"),
    ({"Width": "512"}, "Width", "must be an integer"),
    ({"Height": 512.5}, "Height", "must be an integer"),
    ({"Width": True}, "Width", "must be an integer"),
    ({"Upscaler": 5}, "Upscaler", "must be a string"),
    ({"Upscaler": ""}, "Upscaler", "must be a non-empty string"),
    ({"Upscaler": {"ModelCode": "demo-upscaler"}}, "Upscaler", "must be a string"),
])
def test_bad_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(body(**fields), name)


def test_the_sizes_are_checked_before_the_image_is_decoded():
    """The module's order: a bad Width is reported even when the image is not one either."""
    rejected(body(Image="bm90IGFuIGltYWdl", Width=10), "Width")


def test_a_missing_image_through_the_gateway(api):
    out = api(signed({"Action": "ResizeImage", "Width": 256, "Height": 256}))
    assert out["RetCode"] == 230 and out["Message"].startswith("Params [Image] not available: is required"), out


def queued_job(api, atelier_env, uid: str) -> ResizeJobMessage:
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    mine = [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]
    assert [m["headers"]["task"] for m in mine] == [RESIZE_TASK_NAME] == ["atelier.resize"]
    raw = mine[0]["body"]
    if mine[0]["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    return ResizeJobMessage.model_validate(orjson.loads(raw)[0][0])


def detail_of(api, uid: str) -> dict:
    return api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]


def test_a_valid_request_queues_a_resize_task(api, atelier_env):
    out = api(signed(body(Width=4096, Height=64, Upscaler="lanczos", Extra="x")))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    job = queued_job(api, atelier_env, uid)
    detail = detail_of(api, uid)
    assert (detail["Action"], detail["Status"], detail["Seed"]) == ("ResizeImage", "Queuing", 0)
    assert get_services().tasks.get(uid).points == 1           # ConsumeApiPoint once its image is made
    assert "resized by Lanczos to 4096x64" in detail["Notes"] and "ignored fields: Extra" in detail["Notes"]
    assert (job.task_uid, job.width, job.height, len(job.image), job.upscaler) == (uid, 4096, 64, 64, None)


def test_an_upscaler_is_sent_with_the_job_and_costs_its_points(api, atelier_env):
    for code, points in (("demo-upscaler", 1), ("priced-upscaler", 3)):
        out = api(signed(body(Upscaler=code)))
        assert out["RetCode"] == 0, out
        assert queued_job(api, atelier_env, out["TaskUID"]).upscaler == code
        assert get_services().tasks.get(out["TaskUID"]).points == points
        assert "Lanczos" not in detail_of(api, out["TaskUID"])["Notes"]    # the worker says what ran


@pytest.mark.parametrize("code", ["no-such-upscaler", "demo-inpaint", "demo-u2net"])
def test_an_upscaler_unknown_or_of_another_type_is_240(api, code):
    out = api(signed(body(Upscaler=code)))
    assert (out["RetCode"], out["Message"]) == (240, f"Model [{code}] not exists"), out


def test_an_upscaler_that_is_not_a_string_is_230_naming_it(api):
    out = api(signed(body(Upscaler=5)))
    assert (out["RetCode"], out["Message"]) == (230, "Params [Upscaler] not available: must be a string"), out


def test_list_models_lists_the_upscalers(api):
    out = api(signed({"Action": "ListModels"}))
    ups = {m["ModelCode"]: m for m in out["Upscalers"]}
    assert set(ups) == {"demo-upscaler", "corrupt-upscaler", "priced-upscaler"}
    assert ups["demo-upscaler"]["ModelType"] == "Upscaler" and "Lanczos" not in ups
    assert not {m["ModelCode"] for m in out["Models"]} & set(ups)     # not a generation model


def test_the_cli_keeps_the_aspect_ratio_when_one_side_is_given():
    assert resize_target((640, 480), 4096, None) == (4096, 3072)
    assert resize_target((640, 480), None, 240) == (320, 240)
    assert resize_target((640, 480), 100, 50) == (100, 50)           # both given: exactly those
    assert resize_target((4000, 100), 4096, None) == (4096, 102)
    with pytest.raises(SystemExit, match="the height would be 6144, outside 64..4096"):
        resize_target((256, 384), 4096, None)                      # never a distorted image
