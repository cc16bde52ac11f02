"""RemoveContents and DescribeImages at the gateway (app/validation/remove_contents.py, app/validation/describe.py,
app/actions/remove_contents.py, app/actions/describe.py): PICPIK's fields, ranges and defaults, what erases, which
languages a Describer serves (230 before any task), the job each queues, TxtList kept in the task record and
ListModels' Erasers and Describers; models_config's checks of the two kinds. What the worker makes of them:
tests/e2e/test_erase_describe.py."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
from PIL import Image

from app.contract.codes import RetCode
from app.contract.jobs import DESCRIBE_TASK_NAME, REMOVE_CONTENTS_TASK_NAME
from app.contract.limits import DESCRIBE_LANGUAGES, ModelType
from app.contract.registry import Registry
from app.contract.taskstore import new_task_uid
from app.errors import ApiError
from app.services import get_services
from app.validation.describe import parse_describe
from app.validation.remove_contents import parse_remove_contents
from support.api import png_b64, queued_raw, signed

IMG = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))
MASK = png_b64(Image.new("L", (40, 30), 255))


def rejected(parse, body: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def erase(b: dict):
    return parse_remove_contents(b, max_pixels=10_000)


def describe(b: dict):
    return parse_describe(b, max_images=4, max_pixels=10_000)


def test_remove_contents_fields_and_defaults():
    req = erase({"RawImage": IMG, "Mask": MASK, "Extra": 1})
    assert (req.invert, req.mask_blur, req.eraser, req.main_model, req.priority) == (False, 12, None, None, 5)
    assert req.ignored_fields == ["Extra"] and (req.mask.width, req.mask.height) == (40, 30)
    req = erase({"RawImage": IMG, "Mask": MASK, "InvertMask": True, "MaskBlur": 0, "Eraser": "lama",
                 "MainModel": {"ModelCode": "m"}})
    assert (req.invert, req.mask_blur, req.eraser, req.main_model) == (True, 0, "lama", "m")


@pytest.mark.parametrize("fields, name, rule", [
    ({"RawImage": None}, "RawImage", "is required"),
    ({"Mask": ""}, "Mask", "must be a non-empty string"),
    ({"InvertMask": 1}, "InvertMask", "must be a boolean (true or false)"),
    ({"MaskBlur": 65}, "MaskBlur", "must be between 0 and 64"),
    ({"MaskBlur": -1}, "MaskBlur", "must be between 0 and 64"),
    ({"MaskBlur": 1.5}, "MaskBlur", "must be an integer"),
    ({"Eraser": 3}, "Eraser", "must be a string"),
    ({"Mask": "bm90IGFuIGltYWdl"}, "Mask", "not a decodable image"),
])
def test_remove_contents_refusals(fields, name, rule):
    body = {"RawImage": IMG, "Mask": MASK, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    assert rejected(erase, body, name).startswith(rule)


def test_describe_fields_and_defaults():
    req = describe({"ImageList": [IMG, MASK]})
    assert (len(req.images), req.language, req.describer) == (2, "en", None)
    assert describe({"ImageList": [IMG], "TranslateDescription": "ms", "Describer": "d"}).language == "ms"
    assert len(DESCRIBE_LANGUAGES) == 15


@pytest.mark.parametrize("fields, name, rule", [
    ({"ImageList": []}, "ImageList", "must have between 1 and 4 elements"),
    ({"ImageList": [IMG] * 5}, "ImageList", "must have between 1 and 4 elements"),
    ({"ImageList": [IMG, 7]}, "ImageList[1]", "must be a string"),
    ({"TranslateDescription": "EN"}, "TranslateDescription", "must be one of en, zh, ja, ko, fr, es, it, de, tr"),
    ({"Describer": ""}, "Describer", "must be a non-empty string"),
])
def test_describe_refusals(fields, name, rule):
    assert rejected(describe, {"ImageList": [IMG], **fields}, name).startswith(rule)


def _queued_job(api, uid: str) -> tuple[str, dict]:
    r = redis.Redis.from_url(get_services().settings.redis_url)
    sent = [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]
    assert len(sent) == 1
    rec = get_services().tasks.get(uid)
    return sent[0]["headers"]["task"], rec.job


def test_remove_contents_chooses_the_eraser_else_the_main_model(api):
    base = {"Action": "RemoveContents", "RawImage": IMG, "Mask": MASK}
    out = api(signed(base))
    assert out["RetCode"] == 0, out
    task, job = _queued_job(api, out["TaskUID"])
    assert task == REMOVE_CONTENTS_TASK_NAME
    assert (job["eraser"], job["main_model"], job["mask_blur"], job["seed"]) == ("demo-eraser", None, 12, 0)
    out = api(signed({**base, "MainModel": {"ModelCode": "demo-inpaint"}, "InvertMask": True}))
    task, job = _queued_job(api, out["TaskUID"])
    assert (job["eraser"], job["main_model"], job["invert"]) == (None, "demo-inpaint", True)
    assert api(signed({**base, "Eraser": "demo-inpaint"}))["RetCode"] == 240
    assert api(signed({**base, "MainModel": {"ModelCode": "demo-eraser"}}))["RetCode"] == 240


def test_describe_images_queues_its_job_and_refuses_a_language_it_cannot_serve(api):
    out = api(signed({"Action": "DescribeImages", "ImageList": [IMG, MASK, IMG], "TranslateDescription": "fr"}))
    assert out["RetCode"] == 0, out
    task, job = _queued_job(api, out["TaskUID"])
    assert task == DESCRIBE_TASK_NAME
    assert (len(job["images"]), job["images"][0] == job["images"][2], job["describer"], job["language"]) == \
        (3, True, "demo-describer", "fr")
    out = api(signed({"Action": "DescribeImages", "ImageList": [IMG], "TranslateDescription": "ja"}))
    assert (out["RetCode"], out["Message"]) == (230, "Params [TranslateDescription] not available: ja is not served"
                                                     " by this deployment (no translator into it): must be one of en,"
                                                     " fr")


def test_txt_list_is_kept_with_the_task_and_counted(api):
    """A finished task's texts are TaskDetail's TxtList and count in ConsumeApiPoint; [] for every other task."""
    svc = get_services()
    out = api(signed({"Action": "DescribeImages", "ImageList": [IMG, MASK]}))
    uid = out["TaskUID"]
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["TxtList"], detail["ConsumeApiPoint"]) == ([], 0)
    assert svc.tasks.start(uid, "w", 60, 2)[0] == "started"
    assert svc.tasks.mark_finished(uid, [], None, worker="w", texts=["a red dress", "une robe rouge"])
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Status"], detail["TxtList"], detail["ImgList"], detail["ConsumeApiPoint"]) == \
        ("Finished", ["a red dress", "une robe rouge"], [], 2)
    assert new_task_uid() != uid


def test_list_models_lists_erasers_and_describers(api):
    out = api(signed({"Action": "ListModels"}))
    assert {"ModelCode": "demo-eraser", "ModelType": "Eraser"}.items() <= out["Erasers"][0].items()
    describer = out["Describers"][0]
    assert (describer["ModelCode"], describer["ModelType"], describer["Languages"]) == \
        ("demo-describer", "Describer", ["en", "fr"])
    assert all(m["ModelType"] not in ("Eraser", "Describer") for m in out["Models"])


def _entry(**fields) -> dict:
    return {"ModelCode": "x", "Name": "x", **fields}


@pytest.mark.parametrize("entry, problem", [
    (_entry(ModelType="Eraser", source={"path": "lama"}), "an Eraser's source is a weights `file:`"),
    (_entry(ModelType="Eraser", source={"file": "lama.onnx"}), "must end in .pth, .safetensors"),
    (_entry(ModelType="Describer", source={"file": "x.safetensors"}), "a Describer's source is a model folder"),
    (_entry(ModelType="Describer", source={"path": "d"}, translators={"en": {"path": "t"}}), "'en' is not a"),
    (_entry(ModelType="Describer", source={"path": "d"}, translators={"fr": {"demo": "translator"}}),
     "translators.fr: a translation folder"),
    (_entry(ModelType="Upscaler", source={"demo": "upscaler"}, translators={"fr": {"path": "t"}}),
     "`translators:` is for Describer entries only"),
    (_entry(ModelType="Eraser", source={"demo": "describer"}), "demo: describer is not a Eraser"),
])
def test_models_config_checks_erasers_and_describers(entry, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        Registry.from_dict({"models": [entry]}, Path("/deploy"), origin="models.yaml")


def test_models_config_takes_erasers_and_describers_with_their_points_and_translators():
    reg = Registry.from_dict({"models": [
        _entry(ModelCode="lama", ModelType="Eraser", source={"file": "big-lama.pt"}, points=2),
        _entry(ModelCode="blip", ModelType="Describer", source={"path": "blip"}, points=3,
               translators={"zh": {"path": "opus-mt-en-zh"}, "fr": {"demo": "translator-en"}}),
    ]}, Path("/deploy"), origin="models.yaml")
    lama, blip = reg.require("lama", ModelType.ERASER), reg.require("blip", ModelType.DESCRIBER)
    assert (lama.points, blip.points, blip.languages()) == (2, 3, ["en", "zh", "fr"])
    assert blip.translators["zh"].path == Path("/deploy/opus-mt-en-zh")


@pytest.mark.parametrize("body", [{"Action": "RemoveContents", "RawImage": IMG, "Mask": MASK},
                                  {"Action": "DescribeImages", "ImageList": [IMG]}])
def test_a_queued_task_of_either_action_is_canceled(api, body):
    uid = api(signed(body))["TaskUID"]
    canceled = api(signed({"Action": "CancelTask", "TaskUIDList": [uid]}))["TaskDetailList"]
    assert [(d["TaskUID"], d["Status"], d["TxtList"], d["ConsumeApiPoint"]) for d in canceled] == \
        [(uid, "Canceled", [], 0)]
    assert uid not in api(signed({"Action": "ListRunningTasks"}))["TaskUIDList"]
