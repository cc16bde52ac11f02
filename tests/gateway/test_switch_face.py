"""SwitchFace at the gateway (app/validation/switch_face.py, app/actions/switch_face.py): ``RawImage`` and
``NewFaceImage`` required and images, ``RawFaceIndex`` an Int 1..100 (default 1), the extensions ``MainModel`` (a Main
model of the deployment or 240) and ``Adapter`` (an IP-Adapter of the Main model's family or 240; absent, the
deployment's first one, or 230 when it has none), unknown fields named in the Notes, and a valid request queued as the
``atelier.switch_face`` Celery task with both images stored, a drawn seed and the model's points. What the worker
makes of it: tests/worker/jobs/test_switch_face.py, tests/e2e/test_switch_face.py."""
from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import redis
from PIL import Image

from app.actions.switch_face import face_adapter
from app.contract.codes import RetCode
from app.contract.jobs import SWITCH_FACE_TASK_NAME, SwitchFaceJobMessage
from app.contract.limits import DEFAULT_RAW_FACE_INDEX, RAW_FACE_INDEX_RANGE
from app.contract.registry import Registry
from app.errors import ApiError
from app.validation.switch_face import parse_switch_face
from support.api import png_b64, queued_raw, signed

IMG = png_b64(Image.new("RGB", (40, 30), (200, 10, 10)))
FACE = png_b64(Image.new("RGB", (20, 20), (10, 200, 10)))
NOT_AN_IMAGE = "bm90IGFuIGltYWdl"  # base64 of "not an image"


def body(**fields) -> dict:
    return {"Action": "SwitchFace", "RawImage": IMG, "NewFaceImage": FACE, **fields}


def rejected(b: dict, name: str) -> str:
    with pytest.raises(ApiError) as info:
        parse_switch_face(b, max_pixels=10_000)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_a_valid_body_and_its_defaults():
    req = parse_switch_face(body(Extra=1), max_pixels=10_000)
    assert (req.face_index, req.main_model, req.adapter, req.callback_url) == (DEFAULT_RAW_FACE_INDEX, None, None, None)
    assert DEFAULT_RAW_FACE_INDEX == 1 and RAW_FACE_INDEX_RANGE == (1, 100)
    assert (req.image.width, req.new_face.width) == (40, 20) and req.ignored_fields == ["Extra"]
    req = parse_switch_face(body(RawFaceIndex=100, MainModel={"ModelCode": "demo-inpaint"},
                                 Adapter={"ModelCode": "demo-ip-adapter"}), max_pixels=10_000)
    assert (req.face_index, req.main_model, req.adapter) == (100, "demo-inpaint", "demo-ip-adapter")


@pytest.mark.parametrize("fields, name, rule", [
    ({"RawImage": None}, "RawImage", "is required"),
    ({"RawImage": NOT_AN_IMAGE}, "RawImage", "not a decodable image"),
    ({"RawFaceIndex": 0}, "RawFaceIndex", "must be between 1 and 100"),
    ({"RawFaceIndex": 101}, "RawFaceIndex", "must be between 1 and 100"),
    ({"RawFaceIndex": "x"}, "RawFaceIndex", "must be an integer"),
    ({"RawFaceIndex": 1.5}, "RawFaceIndex", "must be an integer"),
    ({"NewFaceImage": None}, "NewFaceImage", "is required"),
    ({"NewFaceImage": ""}, "NewFaceImage", "must be a non-empty string"),
    ({"NewFaceImage": NOT_AN_IMAGE}, "NewFaceImage", "not a decodable image"),
    ({"MainModel": "demo-inpaint"}, "MainModel", "must be an object"),
    ({"Adapter": "demo-ip-adapter"}, "Adapter", "must be an object"),
    ({"Adapter": {}}, "Adapter.ModelCode", "is required"),
    ({"CallbackUrl": "ftp://x"}, "CallbackUrl", "must be an http or https URL"),
])
def test_bad_fields_are_230_naming_the_field(fields, name, rule):
    assert rule in rejected(body(**fields), name)


def test_the_fields_are_checked_before_the_images_are_decoded():
    rejected(body(NewFaceImage=NOT_AN_IMAGE, RawFaceIndex=0), "RawFaceIndex")
    rejected(body(RawImage=NOT_AN_IMAGE, NewFaceImage=NOT_AN_IMAGE), "RawImage")


@pytest.mark.parametrize("field, value", [("RawFaceIndex", 0), ("RawFaceIndex", 101), ("RawFaceIndex", "x"),
                                          ("NewFaceImage", None), ("NewFaceImage", NOT_AN_IMAGE)])
def test_bad_fields_through_the_gateway(api, field, value):
    out = api(signed(body(**{field: value})))
    assert out["RetCode"] == 230 and out["Message"].startswith(f"Params [{field}] not available: "), out


@pytest.mark.parametrize("field, code, message", [
    ("MainModel", "no-such-model", "Model [no-such-model] not exists"),
    ("MainModel", "demo-ip-adapter", "Model [demo-ip-adapter] not exists"),
    ("Adapter", "no-such-adapter", "Model [no-such-adapter] not exists"),
    ("Adapter", "demo-inpaint", "Model [demo-inpaint] not exists"),
    ("Adapter", "demo-controlnet", "Model [demo-controlnet] not exists: it is not an ip-adapter"),
    ("Adapter", "ip-adapter-xl", "Model [ip-adapter-xl] not exists for sd15 model demo-inpaint: it is an sdxl model"),
])
def test_an_unknown_model_or_adapter_is_240(api, field, code, message):
    out = api(signed(body(**{field: {"ModelCode": code}})))
    assert (out["RetCode"], out["Message"]) == (240, message), out


def _registry(*models: dict) -> Registry:
    return Registry.from_dict({"models": list(models)}, Path("/deploy"), origin="models.yaml")


MAIN = {"ModelCode": "m", "Name": "m", "ModelType": "Main", "source": {"demo": "inpaint"}}


def _adapter(code: str, family: str = "sd15") -> dict:
    return {"ModelCode": code, "Name": code, "ModelType": "ControlModel", "adapter": "ip-adapter", "family": family,
            "source": {"file": f"{code}.safetensors"}, "image_encoder": {"path": "enc"}}


def test_without_adapter_the_first_ip_adapter_of_the_family_and_none_is_230():
    registry = _registry(MAIN, _adapter("xl", "sdxl"), _adapter("a"), _adapter("b"))
    notes: list[str] = []
    svc = SimpleNamespace(registry=registry)
    assert face_adapter(None, registry.get("m"), svc, notes).model_code == "a"
    assert notes == ["Adapter: not given; the deployment's ip-adapter a was used"]
    registry = _registry(MAIN, _adapter("xl", "sdxl"))
    with pytest.raises(ApiError) as info:
        face_adapter(None, registry.get("m"), SimpleNamespace(registry=registry), [])
    assert info.value.ret_code == RetCode.BAD_PARAM
    assert info.value.message == ("Params [Adapter] not available: is required: this deployment has no ip-adapter of"
                                  " the sd15 family for MainModel m (models_config/README.md \"IP-Adapters\")")


def _queued(api, atelier_env, uid: str) -> list[dict]:
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    return [m for m in map(orjson.loads, queued_raw(r, api.queue)) if uid in m["headers"]["argsrepr"]]


def _job(message: dict) -> SwitchFaceJobMessage:
    raw = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        raw = base64.b64decode(raw)
    return SwitchFaceJobMessage.model_validate(orjson.loads(raw)[0][0])


def test_a_valid_request_queues_a_switch_face_task(api, atelier_env):
    out = api(signed(body(RawFaceIndex=2, Upscaler="x")))
    assert out["RetCode"] == 0, out
    uid = out["TaskUID"]
    sent = _queued(api, atelier_env, uid)
    assert [m["headers"]["task"] for m in sent] == [SWITCH_FACE_TASK_NAME] == ["atelier.switch_face"]
    job = _job(sent[0])
    assert (job.task_uid, job.face_index, job.main_model, job.adapter) == (uid, 2, "demo-inpaint", "demo-ip-adapter")
    assert len(job.image) == len(job.new_face) == 64 and job.image != job.new_face
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert (detail["Action"], detail["Status"], detail["Seed"]) == ("SwitchFace", "Queuing", job.seed)
    assert detail["Notes"] == ["MainModel: not given; the deployment's default demo-inpaint was used",
                               "Adapter: not given; the deployment's ip-adapter demo-ip-adapter was used",
                               "ignored fields: Upscaler"]


def test_the_models_named_are_the_ones_sent(api, atelier_env):
    out = api(signed(body(MainModel={"ModelCode": "demo-sd15"}, Adapter={"ModelCode": "demo-ip-adapter"})))
    assert out["RetCode"] == 0, out
    job = _job(_queued(api, atelier_env, out["TaskUID"])[0])
    assert (job.main_model, job.adapter, job.face_index) == ("demo-sd15", "demo-ip-adapter", 1)
    detail = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [out["TaskUID"]]}))["TaskDetailList"][0]
    assert detail["Notes"] == []


def test_a_persona_instead_of_the_new_face_image():
    req = parse_switch_face({"Action": "SwitchFace", "RawImage": IMG, "PersonaCode": "p-x"}, max_pixels=10_000)
    assert (req.persona, req.new_face) == ("p-x", None)
    assert rejected(body(PersonaCode="p-x"), "PersonaCode").startswith("cannot be combined with NewFaceImage")
    assert rejected({"Action": "SwitchFace", "RawImage": IMG}, "NewFaceImage") == "is required"
    assert rejected(body(NewFaceImage=None, PersonaCode=""), "PersonaCode") == "must be a non-empty string"


def test_a_persona_is_the_keys_own_or_240_and_its_code_is_sent(api, atelier_env):
    made = api(signed({"Action": "CreatePersona", "Name": "Mira", "ImageList": [FACE]}))
    assert made["RetCode"] == 0, made
    code = made["PersonaCode"]
    try:
        others = api(signed({"Action": "SwitchFace", "RawImage": IMG, "PersonaCode": code}, "pk-bob"))
        assert (others["RetCode"], others["Message"]) == (240, f"Persona [{code}] not exists")
        out = api(signed({"Action": "SwitchFace", "RawImage": IMG, "PersonaCode": code}))
        assert out["RetCode"] == 0, out
        job = _job(_queued(api, atelier_env, out["TaskUID"])[0])
        assert (job.persona, job.new_face) == (code, None)
    finally:
        assert api(signed({"Action": "DeletePersona", "PersonaCode": code}))["RetCode"] == 0
