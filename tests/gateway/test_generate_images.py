"""GenerateImages at the gateway (app/validation/generate_images.py, app/actions/generate_images.py): the shared
generation block, Image2Image, Tileable and the control units with PICPIK's ranges, the order of the checks, and a
valid request queued as its own Celery task with Priority and the Main model for routing. What the worker makes of
it: tests/worker/inference/test_tileable.py, tests/e2e/test_generate_images.py."""
from __future__ import annotations

import base64

import orjson
import pytest
import redis

from app.contract.codes import RetCode
from app.contract.jobs import IMAGES_TASK_NAME, ImagesJobMessage, TaskStatus
from app.contract.limits import DEFAULT_BACKGROUND_RESIZE_MODE, DEFAULT_REFER_STRENGTH, TILEABLE_MULTIPLE
from app.errors import ApiError
from app.services import get_services
from app.validation.generate_images import NO_UNIT_IMAGE_RULE, parse_generate_images
from support.api import queued_raw, signed
from support.bodies import LIMITS, MASK, PHOTO, images_body

UNIT = {"PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "demo-controlnet"}}


def rejected(b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse_generate_images(b, **LIMITS)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_text_to_image_needs_no_image():
    req = parse_generate_images(images_body(), **LIMITS)
    assert req.images == [] and req.mannequin_index is None and req.background_index is None
    assert req.control_units == [] and not req.tileable and req.main_model is None and req.seed == -1
    assert req.positive_prompts == ["a lookbook backdrop"] and req.ignored_fields == []


def test_image_to_image_and_a_control_unit_default_to_the_reference():
    req = parse_generate_images(images_body(ImageAndMaskList=[MASK, PHOTO], Image2Image={"ImageIndex": 1,
                                            "ReferStrength": 0.7}, ControlNetList=[UNIT], Tileable=True,
                                            Mannequin={"ImageIndex": 0}), **LIMITS)
    assert (req.background_index, req.refer_strength, req.background_resize_mode) == (
        1, 0.7, DEFAULT_BACKGROUND_RESIZE_MODE)
    assert req.resize_mode == DEFAULT_BACKGROUND_RESIZE_MODE  # the control images' geometry: the reference's
    assert [u.image_index for u in req.control_units] == [1] and req.tileable
    assert req.ignored_fields == ["Mannequin"]  # GenerateFromMannequin's, not GenerateImages'
    assert len(req.images) == 2


def test_image2image_defaults():
    req = parse_generate_images(images_body(ImageList=[PHOTO], Image2Image={"ImageIndex": 0}), **LIMITS)
    assert (req.refer_strength, req.background_index) == (DEFAULT_REFER_STRENGTH, 0)


@pytest.mark.parametrize("fields, name, rule", [
    ({"Width": 63}, "Width", ""),
    ({"Height": 2561}, "Height", ""),
    ({"BatchSize": 17}, "BatchSize", ""),
    ({"Seed": -2}, "Seed", ""),
    ({"MainModel": {"ModelCode": ""}}, "MainModel.ModelCode", ""),
    ({"Image2Image": {"ImageIndex": 0}}, "Image2Image.ImageIndex", ""),  # no image at all
    ({"ImageAndMaskList": [PHOTO], "Image2Image": {"ImageIndex": 1}}, "Image2Image.ImageIndex", ""),
    ({"ImageAndMaskList": [PHOTO], "Image2Image": {"ImageIndex": 0, "ReferStrength": 1.5}},
     "Image2Image.ReferStrength", ""),
    ({"ImageAndMaskList": [PHOTO], "Image2Image": {"ImageIndex": 0, "ResizeMode": "Fill"}},
     "Image2Image.ResizeMode", ""),
    ({"ImageAndMaskList": []}, "ImageAndMaskList", ""),
    ({"ImageAndMaskList": [PHOTO], "ImageList": [PHOTO]}, "ImageList", "cannot be combined"),
    ({"Tileable": "yes"}, "Tileable", "boolean"),
    ({"Tileable": True, "Width": 100}, "Width", f"multiple of {TILEABLE_MULTIPLE}"),
    ({"Tileable": True, "Height": 68}, "Height", f"multiple of {TILEABLE_MULTIPLE}"),
    ({"ControlNetList": [UNIT]}, "ControlNetList[0].ImageIndex", NO_UNIT_IMAGE_RULE),
    ({"ControlNetList": [UNIT] * 4, "ImageAndMaskList": [PHOTO]}, "ControlNetList", ""),
    ({"ControlNetList": [{**UNIT, "ImageIndex": 2}], "ImageAndMaskList": [PHOTO]}, "ControlNetList[0].ImageIndex", ""),
    ({"ImageAndMaskList": [PHOTO, "not an image"]}, "ImageAndMaskList[1]", "not"),
    ({"CallbackUrl": "ftp://x"}, "CallbackUrl", ""),
    ({"Priority": 11}, "Priority", ""),
])
def test_bad_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(images_body(**fields), name)


def test_a_tileable_size_that_is_fine_without_tileable():
    assert not parse_generate_images(images_body(Width=100), **LIMITS).tileable


def _args(message: dict) -> list:
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return orjson.loads(body)[0]


def _queued(api, atelier_env, uid: str) -> tuple[dict, ImagesJobMessage]:
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    (sent,) = [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]
    return sent, ImagesJobMessage.model_validate(_args(sent)[0])


def test_text_to_image_is_queued_as_its_task(api, atelier_env):
    out = api(signed(images_body(MainModel={"ModelCode": "demo-inpaint"}, Seed=5, Priority=6, Tileable=True)))
    assert out["RetCode"] == 0, out
    sent, job = _queued(api, atelier_env, out["TaskUID"])
    assert sent["headers"]["task"] == IMAGES_TASK_NAME
    assert (job.task_uid, job.main_model, job.seed, job.width, job.tileable) == (
        out["TaskUID"], "demo-inpaint", 5, 64, True)
    assert job.mannequin_image is None and job.background_image is None and job.control_units == []
    assert job.clothes_segmenter is None and job.clothes_mask is None


def test_image_to_image_with_a_control_unit_is_queued(api, atelier_env):
    out = api(signed(images_body(MainModel={"ModelCode": "demo-inpaint"}, ImageAndMaskList=[PHOTO],
                                 Image2Image={"ImageIndex": 0, "ReferStrength": 0.25}, ControlNetList=[UNIT])))
    assert out["RetCode"] == 0, out
    _, job = _queued(api, atelier_env, out["TaskUID"])
    assert job.background_image is not None and job.refer_strength == 0.25 and not job.tileable
    assert [u.image for u in job.control_units] == [job.background_image]  # stored once, by content hash
    assert job.control_units[0].control_model == "demo-controlnet"


@pytest.mark.parametrize("fields, code, word", [
    ({"MainModel": {"ModelCode": "no-such-model"}}, 240, "no-such-model"),
    ({"ImageAndMaskList": [PHOTO], "ControlNetList": [{**UNIT, "ImageIndex": 0,
                                                       "ControlModel": {"ModelCode": "nope"}}]}, 240, "nope"),
    ({"SubModelList": [{"ModelCode": "no-lora"}]}, 240, "no-lora"),
])
def test_unknown_models_are_240(api, fields, code, word):
    out = api(signed(images_body(**fields)))
    assert out["RetCode"] == code and word in out["Message"], out


def test_a_queued_task_cancels(api):
    """The task life every generation has (app/actions/submit.py; webhooks: a CallbackUrl needs a key with a
    WebhookSecret, tests/gateway/test_webhooks.py): CancelTask while it is queued."""
    out = api(signed(images_body(MainModel={"ModelCode": "demo-inpaint"}, BatchSize=3)))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    assert get_services().tasks.get(uid).action == "GenerateImages"
    assert api(signed({"Action": "CancelTask", "TaskUIDList": [uid]}))["RetCode"] == 0
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Action"], detail["Status"]) == ("GenerateImages", TaskStatus.CANCELED)
