"""The mask actions at the gateway (app/validation/masks.py, app/actions/masks.py): every field's type and
range, boxes and points inside the image, the engine named or defaulted, and the clothes segmenter of a
generation without a mask. What the workers make of them: tests/worker/jobs/test_mask_job.py,
tests/e2e/test_masks.py."""
from __future__ import annotations

import orjson
import pytest
import redis
from PIL import Image

from app.contract.codes import RetCode
from app.contract.limits import MASK_ACTIONS, MAX_POINTS
from app.errors import ApiError
from app.validation.masks import parse_mask_request
from support.api import ROOT, generate_body, png_b64, queued_raw, signed

IMG = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))
LIMITS = dict(max_images=4, max_pixels=10_000)


def body(action: str = "RemoveBackground", **fields) -> dict:
    b = {"Action": action}
    if action == "RemoveBackgroundsInBatch":
        b["RawImages"] = [IMG, IMG]
    else:
        b["RawImage"] = IMG
    if action == "ExtractContents":
        b["IncludePointList"] = [{"X": 5, "Y": 6}]
    b.update(fields)
    return b


def rejected(b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse_mask_request(b["Action"], b, **LIMITS)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


@pytest.mark.parametrize("action", MASK_ACTIONS)
def test_defaults(action):
    req = parse_mask_request(action, body(action, Extra=1), **LIMITS)
    assert (req.erode_size, req.foreground_threshold, req.background_threshold) == (15, 240, 15)
    assert req.hair_optimization == "auto" and req.only_mask is False and req.engine is None
    assert len(req.images) == (2 if action == "RemoveBackgroundsInBatch" else 1)
    assert req.ignored_fields == ["Extra"]


@pytest.mark.parametrize("field, value, rule", [
    ("ErodeSize", 41, "must be between 0 and 40"),
    ("ErodeSize", -1, "must be between 0 and 40"),
    ("ErodeSize", 2.5, "must be an integer"),
    ("ForegroundThreshold", 256, "must be between 0 and 255"),
    ("BackgroundThreshold", "9", "must be an integer"),
    ("BackgroundThreshold", 240, "must be less than ForegroundThreshold (240)"),
    ("HairOptimization", "yes", "must be one of auto, on, off"),
    ("OnlyMask", 1, "must be a boolean (true or false)"),
    ("Engine", "", "must be a non-empty string"),
    ("RawImage", "not base64!", "not valid base64"),
])
def test_refinement_fields_are_checked(field, value, rule):
    assert rejected(body(**{field: value}), field).startswith(rule)


@pytest.mark.parametrize("box, name, rule", [
    ([1, 2, 3], "Box", "must have between 4 and 4 elements"),
    ("0,0,5,5", "Box", "must be an array"),
    ([0, 0, 5, -1], "Box[3]", "must be at least 0"),
    ([5, 0, 5, 9], "Box", "must be [x1, y1, x2, y2]"),
    ([0, 9, 5, 2], "Box", "must be [x1, y1, x2, y2]"),
    ([0, 0, 41, 30], "Box", "[0, 0, 41, 30] is not inside the image (40x30"),
    ([0, 0, 40, 31], "Box", "[0, 0, 40, 31] is not inside the image (40x30"),
])
def test_bad_boxes(box, name, rule):
    assert rejected(body(Box=box), name).startswith(rule)


def test_a_box_on_the_whole_image_is_fine():
    assert parse_mask_request("RemoveBackground", body(Box=[0, 0, 40, 30]), **LIMITS).box == (0, 0, 40, 30)


@pytest.mark.parametrize("fields, name, rule", [
    ({"IncludePointList": None}, "IncludePointList", "is required"),
    ({"IncludePointList": []}, "IncludePointList", f"must have between 1 and {MAX_POINTS} elements"),
    ({"IncludePointList": [{"X": 1, "Y": 1}] * (MAX_POINTS + 1)}, "IncludePointList", "must have between"),
    ({"IncludePointList": [[1, 2]]}, "IncludePointList[0]", "must be an object"),
    ({"IncludePointList": [{"X": 1}]}, "IncludePointList[0].Y", "is required"),
    ({"IncludePointList": [{"X": 1.5, "Y": 1}]}, "IncludePointList[0].X", "must be an integer"),
    ({"IncludePointList": [{"X": 40, "Y": 1}]}, "IncludePointList[0]", "(40, 1) is outside the image (40x30"),
    ({"ExcludePointList": [{"X": 1, "Y": 2}, {"X": 1, "Y": 30}]}, "ExcludePointList[1]", "(1, 30) is outside"),
    ({"ExcludePointList": {"X": 1, "Y": 2}}, "ExcludePointList", "must be an array"),
])
def test_bad_points(fields, name, rule):
    assert rejected(body("ExtractContents", **fields), name).startswith(rule)


def test_batch_images_are_checked_one_by_one():
    assert rejected(body("RemoveBackgroundsInBatch", RawImages=[]), "RawImages").startswith("must have between 1")
    assert rejected(body("RemoveBackgroundsInBatch", RawImages=[IMG] * 5), "RawImages") == (
        "must have between 1 and 4 elements")
    assert rejected(body("RemoveBackgroundsInBatch", RawImages=[IMG, "x"]), "RawImages[1]").startswith("not valid")


# --- through the gateway --------------------------------------------------------------------------------

@pytest.mark.parametrize("action, engine", [("RemoveBackground", "grabcut"),
                                            ("RemoveBackgroundsInBatch", "grabcut"),
                                            ("ExtractContents", "grabcut-points")])
def test_each_action_answers_a_task_with_the_default_engine(api, action, engine):
    out = api(signed(body(action, OnlyMask=True)))
    assert out["RetCode"] == 0 and out["TaskUID"], out
    d = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [out["TaskUID"]]}))["TaskDetailList"][0]
    assert d["Action"] == action and d["Status"] == "Queuing"
    assert f"Engine: not given; the deployment's default {engine} (grabcut) was used" in d["Notes"]


@pytest.mark.parametrize("action, engine", [("RemoveBackground", "nope"), ("RemoveBackground", "demo-sam"),
                                            ("ExtractContents", "demo-u2net"), ("ExtractContents", "demo-inpaint")])
def test_an_engine_unknown_or_of_another_type_is_240(api, action, engine):
    out = api(signed(body(action, Engine=engine)))
    assert out["RetCode"] == 240 and out["Message"] == f"Model [{engine}] not exists"


def test_list_models_names_the_mask_engines(api):
    engines = {e["ModelCode"]: e for e in api(signed({"Action": "ListModels"}))["MaskEngines"]}
    assert engines["grabcut"] == {"ModelCode": "grabcut", "Name": engines["grabcut"]["Name"],
                                  "ModelType": "BackgroundRemover", "Engine": "grabcut", "Default": True}
    assert engines["demo-sam"]["Default"] is False and engines["demo-cloth-seg"]["Default"] is True


def test_generate_without_a_mask_names_its_segmenter(api):
    b = generate_body(Mannequin={"ImageIndex": 0})
    out = api(signed(b))
    assert out["RetCode"] == 0, out
    d = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [out["TaskUID"]]}))["TaskDetailList"][0]
    assert any("the clothes mask is made by the clothes segmenter demo-cloth-seg" in n for n in d["Notes"])
    out = api(signed(generate_body(Mannequin={"ImageIndex": 0, "ClothesSegmenter": "demo-u2net"})))
    assert out["RetCode"] == 240 and out["Message"] == "Model [demo-u2net] not exists"


@pytest.fixture()
def no_engines(atelier_env, tmp_path, monkeypatch):
    """A deployment whose models_config has no mask engine."""
    text = (ROOT / "models_config" / "models.yaml").read_text()
    models = tmp_path / "models.yaml"
    models.write_text(text[: text.index("  # --- mask engines")])
    monkeypatch.setenv("ATELIER_MODELS_CONFIG", str(models))


def test_a_deployment_without_engines_says_so(no_engines, api):
    out = api(signed(body("RemoveBackground")))
    assert out["RetCode"] == 230 and out["Message"].startswith("Params [Engine] not available: no BackgroundRemover")
    out = api(signed(generate_body(Mannequin={"ImageIndex": 0})))
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [Mannequin.ClothesMaskIndex] not available: is required: this deployment")


def test_mask_jobs_are_queued_for_the_mask_task(api, atelier_env):
    out = api(signed(body("ExtractContents", ErodeSize=3, HairOptimization="off", OnlyMask=True)))
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    messages = [orjson.loads(m) for m in queued_raw(r, api.queue)]
    mine = [m for m in messages if m["headers"]["task"] == "atelier.mask"]
    assert mine and out["TaskUID"] in mine[-1]["headers"]["argsrepr"]
