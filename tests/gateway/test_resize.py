"""ResizeImage at the gateway (app/validation/resize.py, app/actions/resize.py): ``Image`` required and an image,
``Width`` / ``Height`` required Ints within 64..4096, unknown fields named in the Notes, and a valid request
queued as the ``atelier.resize`` Celery task. What the worker makes of it: tests/worker/jobs/test_resize.py,
tests/e2e/test_resize.py."""
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
from app.validation.resize import parse_resize_request
from support.api import png_b64, signed

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
    assert req.callback_url is None and req.ignored_fields == ["Upscaler", "Extra"]  # no Upscaler yet: Lanczos


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
])
def test_bad_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(body(**fields), name)


def test_the_sizes_are_checked_before_the_image_is_decoded():
    """The module's order: a bad Width is reported even when the image is not one either."""
    rejected(body(Image="bm90IGFuIGltYWdl", Width=10), "Width")


def test_a_missing_image_through_the_gateway(api):
    out = api(signed({"Action": "ResizeImage", "Width": 256, "Height": 256}))
    assert out["RetCode"] == 230 and out["Message"].startswith("Params [Image] not available: is required"), out


def test_a_valid_request_queues_a_resize_task(api, atelier_env):
    out = api(signed(body(Width=4096, Height=64, Upscaler="x")))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    mine = [m for m in map(orjson.loads, r.lrange(api.queue, 0, -1)) if uid in m["headers"]["argsrepr"]]
    assert [m["headers"]["task"] for m in mine] == [RESIZE_TASK_NAME] == ["atelier.resize"]
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Action"], detail["Status"], detail["Seed"]) == ("ResizeImage", "Queuing", 0)
    assert "resized by Lanczos to 4096x64" in detail["Notes"] and "ignored fields: Upscaler" in detail["Notes"]
    raw = mine[0]["body"]
    if mine[0]["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    job = ResizeJobMessage.model_validate(orjson.loads(raw)[0][0])
    assert (job.task_uid, job.width, job.height, len(job.image)) == (uid, 4096, 64, 64)


def test_the_cli_keeps_the_aspect_ratio_when_one_side_is_given():
    assert resize_target((640, 480), 4096, None) == (4096, 3072)
    assert resize_target((640, 480), None, 240) == (320, 240)
    assert resize_target((640, 480), 100, 50) == (100, 50)           # both given: exactly those
    assert resize_target((4000, 100), 4096, None) == (4096, 102)
    with pytest.raises(SystemExit, match="the height would be 6144, outside 64..4096"):
        resize_target((256, 384), 4096, None)                      # never a distorted image
