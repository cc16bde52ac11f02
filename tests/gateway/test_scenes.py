"""GenerateBackgrounds and ModifyMaskedPixels at the gateway (app/validation/scenes.py, app/actions/scenes.py): the
shared generation block, their own objects with PICPIK's ranges and Atelier's ``Masked`` shape, the order of the
checks, a foreground without alpha refused, and a valid request queued as its own Celery task with Priority and the
Main model for routing. What the worker makes of them: tests/worker/inference/test_compose_scenes.py,
tests/e2e/test_scenes.py."""
from __future__ import annotations

import base64

import orjson
import pytest
import redis

from app.contract.codes import RetCode
from app.contract.jobs import BACKGROUNDS_TASK_NAME, MODIFY_TASK_NAME, BackgroundsJobMessage, ModifyJobMessage
from app.contract.limits import DEFAULT_MASK_BLUR, DEFAULT_REFER_STRENGTH, DEFAULT_RESIZE_MODE
from app.errors import ApiError
from app.validation.scenes import parse_backgrounds, parse_modify
from support.api import queued_raw, signed
from support.bodies import CUTOUT, LIMITS, MASK, PHOTO, backgrounds_body, modify_body


def rejected(parse, b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse(b, **LIMITS)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_a_minimal_backgrounds_body_has_every_default():
    req = parse_backgrounds(backgrounds_body(), **LIMITS)
    assert (req.mannequin_index, req.resize_mode, req.clothes_mask_index, req.background_index) == (
        0, DEFAULT_RESIZE_MODE, None, None)
    assert req.control_units == [] and req.main_model is None and req.seed == -1 and req.ignored_fields == []
    assert req.images[0].alpha


def test_a_full_backgrounds_body():
    req = parse_backgrounds(backgrounds_body(
        ImageList=[PHOTO, CUTOUT], TransparentForeground={"ImageIndex": 1, "ResizeMode": "JustResize"},
        BackgroundImage2Image={"ImageIndex": 0, "ReferStrength": 1}, Priority=7, Mannequin={}), **LIMITS)
    assert (req.mannequin_index, req.resize_mode, req.background_index, req.refer_strength) == (1, "JustResize", 0, 1)
    assert req.priority == 7 and req.ignored_fields == ["Mannequin"]


@pytest.mark.parametrize("fields, name, rule", [
    ({"TransparentForeground": None}, "TransparentForeground", "is required"),
    ({"TransparentForeground": {}}, "TransparentForeground.ImageIndex", "is required"),
    ({"TransparentForeground": {"ImageIndex": 1}}, "TransparentForeground.ImageIndex", "must be between 0 and"),
    ({"TransparentForeground": {"ImageIndex": 0, "ResizeMode": "Stretch"}}, "TransparentForeground.ResizeMode", ""),
    ({"ImageList": None}, "ImageList", "is required (or ImageAndMaskList)"),
    ({"BackgroundImage2Image": {"ImageIndex": 0, "ReferStrength": 1.5}}, "BackgroundImage2Image.ReferStrength", ""),
    ({"ImageList": [PHOTO]}, "TransparentForeground.ImageIndex", "ImageList[0] has no alpha channel"),
    ({"ImageList": [MASK]}, "TransparentForeground.ImageIndex", "ImageList[0] has no alpha channel"),
    ({"Width": 63}, "Width", ""),
    ({"Priority": 11}, "Priority", ""),
])
def test_bad_backgrounds_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(parse_backgrounds, backgrounds_body(**fields), name)


def test_the_shared_block_is_checked_before_the_foreground():
    """The order of the checks: the shared block, the images, BackgroundImage2Image, then TransparentForeground."""
    b = backgrounds_body(Seed="x", TransparentForeground=None)
    rejected(parse_backgrounds, b, "Seed")
    b = backgrounds_body(BackgroundImage2Image={"ImageIndex": 9}, TransparentForeground=None)
    rejected(parse_backgrounds, b, "BackgroundImage2Image.ImageIndex")


def test_a_minimal_modify_body_has_every_default():
    req = parse_modify(modify_body(), **LIMITS)
    assert (req.mannequin_index, req.clothes_mask_index, req.invert_mask, req.mask_blur, req.resize_mode) == (
        0, 1, False, DEFAULT_MASK_BLUR, DEFAULT_RESIZE_MODE)
    assert req.background_index is None and req.refer_strength == DEFAULT_REFER_STRENGTH


def test_modify_without_a_mask_and_with_the_image_as_reference():
    req = parse_modify(modify_body(Masked={"ImageIndex": 0, "ResizeMode": "CropAndResize", "MaskBlur": 0},
                                   Image2Image={"ImageIndex": 0, "ReferStrength": 0.25}), **LIMITS)
    assert (req.clothes_mask_index, req.mask_blur, req.background_index, req.refer_strength) == (None, 0, 0, 0.25)
    assert req.background_resize_mode == "CropAndResize", "the reference takes the image's geometry by default"


def test_modify_reads_masks_from_mask_list():
    """In the ImageList + MaskList style, MaskIndex counts in MaskList (as Mannequin.ClothesMaskIndex does)."""
    req = parse_modify(modify_body(ImageAndMaskList=None, ImageList=[PHOTO], MaskList=[MASK],
                                   Masked={"ImageIndex": 0, "MaskIndex": 0}), **LIMITS)
    assert req.clothes_mask_index == 1 and len(req.images) == 2 and req.images[1].mode == "L"


@pytest.mark.parametrize("fields, name, rule", [
    ({"Masked": None}, "Masked", "is required"),
    ({"Masked": {"MaskIndex": 1}}, "Masked.ImageIndex", "is required"),
    ({"Masked": {"ImageIndex": 0, "MaskIndex": 2}}, "Masked.MaskIndex", "must be between 0 and"),
    ({"Masked": {"ImageIndex": 0, "MaskBlur": 65}}, "Masked.MaskBlur", ""),
    ({"Masked": {"ImageIndex": 0, "MaskBlur": -1}}, "Masked.MaskBlur", ""),
    ({"Masked": {"ImageIndex": 0, "MaskBlur": 1.5}}, "Masked.MaskBlur", ""),
    ({"Masked": {"ImageIndex": 0, "InvertMask": "yes"}}, "Masked.InvertMask", ""),
    ({"Masked": {"ImageIndex": 0, "ResizeMode": "Fill"}}, "Masked.ResizeMode", ""),
    ({"Image2Image": {"ImageIndex": 0, "ReferStrength": -0.1}}, "Image2Image.ReferStrength", ""),
    ({"ImageAndMaskList": [PHOTO, "not an image"]}, "ImageAndMaskList[1]", "not"),
    ({"CallbackUrl": "ftp://x"}, "CallbackUrl", ""),
])
def test_bad_modify_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(parse_modify, modify_body(**fields), name)


def _args(message: dict) -> list:
    """The positional arguments of a Celery message as kombu's Redis transport stores it."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return orjson.loads(body)[0]


@pytest.mark.parametrize("body, task, job_class", [
    (backgrounds_body(), BACKGROUNDS_TASK_NAME, BackgroundsJobMessage),
    (modify_body(Masked={"ImageIndex": 0, "MaskIndex": 1, "MaskBlur": 3, "InvertMask": True}), MODIFY_TASK_NAME,
     ModifyJobMessage),
])
def test_a_valid_request_is_queued_as_its_task(api, atelier_env, body, task, job_class):
    out = api(signed({**body, "MainModel": {"ModelCode": "demo-inpaint"}, "Seed": 5, "Priority": 6}))
    assert out["RetCode"] == 0, out
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    (sent,) = [m for m in map(orjson.loads, queued_raw(r, api.queue)) if out["TaskUID"] in m["headers"]["argsrepr"]]
    assert sent["headers"]["task"] == task
    job = job_class.model_validate(_args(sent)[0])
    assert (job.task_uid, job.main_model, job.seed, job.width) == (out["TaskUID"], "demo-inpaint", 5, 64)
    assert job.clothes_segmenter is None and job.control_units == []
    if job_class is ModifyJobMessage:
        assert (job.mask_blur, job.invert_mask) == (3, True) and job.clothes_mask is not None
    else:
        assert job.clothes_mask is None


def test_an_unknown_main_model_is_240(api):
    out = api(signed(modify_body(MainModel={"ModelCode": "no-such-model"})))
    assert out["RetCode"] == 240 and "no-such-model" in out["Message"]
