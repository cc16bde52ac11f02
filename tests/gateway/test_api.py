"""The gateway against a real Redis: every RetCode path, idempotency, ownership, listing actions,
result links. (Signature encoding and field validation in detail: tests/gateway/.)"""
from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import redis as redis_lib

from app.contract.codes import STORAGE_UNAVAILABLE_MESSAGE
from app.contract.limits import GENERATION_TYPES, LIST_MODELS_FIELDS
from app.contract.storage import Storage
from app.contract.storage_local import LocalStore
from app.metrics import queue_depth
from app.resultlinks import make_link
from app.services import get_services
from support.api import KEYS, PUB, generate_body, queued_raw, signed
from support.signer import picpik_signature


def test_published_check_value_against_independent_signer():
    assert picpik_signature({"Action": "ListModels", "PublicKey": "abcdefg"}, "123456") == \
        "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"


def test_list_models_lists_demo_model_with_type(api):
    r = api(signed({"Action": "ListModels"}))
    assert r["RetCode"] == 0 and r["Action"] == "ListModels"
    demo = {m["ModelCode"]: m for m in r["Models"]}["demo-inpaint"]
    assert demo["ModelType"] == "Main"
    assert set(demo) >= {"Name", "ModelCode", "IsOfficial", "TriggerWordList", "InferenceParams", "ModelType"}


def test_list_models_answers_picpiks_fields_as_arrays_of_model_objects(api):
    r = api(signed({"Action": "ListModels"}))
    by_field = {field: {m["ModelCode"]: m for m in r[field]}
                for field in ("MainModels", "LoraModels", "EmbeddingModels", "HypernetworkModels")}
    assert {"demo-inpaint", "demo-inpaint-posed", "demo-sd15"} <= set(by_field["MainModels"])
    assert {"demo-lora", "demo-lora-peft"} <= set(by_field["LoraModels"])
    assert set(by_field["EmbeddingModels"]) == {"demo-embedding"}
    assert set(by_field["HypernetworkModels"]) == {"demo-hypernetwork"}
    for models in by_field.values():
        for m in models.values():
            assert set(m) == {"Name", "ModelCode", "IsOfficial", "TriggerWordList", "InferenceParams"}, m
    assert by_field["LoraModels"]["demo-lora"]["InferenceParams"] == {"LoraWeight": 1.0}
    assert by_field["LoraModels"]["demo-lora"]["TriggerWordList"] == ["demo style"]
    # every entry of the PICPIK lists is in the flat extension list too, with its type
    flat = {m["ModelCode"]: m["ModelType"] for m in r["Models"]}
    assert {code: flat[code] for code in by_field["HypernetworkModels"]} == {"demo-hypernetwork": "HyperNetwork"}
    assert sum(map(len, by_field.values())) == len(flat)  # (a submodel kind PICPIK lacks is in Models alone)
    assert set(flat.values()) == set(GENERATION_TYPES) and set(LIST_MODELS_FIELDS) <= set(GENERATION_TYPES)


def test_a_model_from_list_models_is_accepted_back_unchanged(api):
    r = api(signed({"Action": "ListModels"}))
    main, lora = r["MainModels"][0], r["LoraModels"][0]
    out = api(signed(generate_body(MainModel=main, SubModelList=[lora])))
    assert out["RetCode"] == 0, out


@pytest.mark.parametrize("raw, code", [
    (b"not json", 230), (b"[1,2]", 230), (b'"str"', 230), (b"{}", 160),
    (b'{"Action": ""}', 160), (b'{"Action": "Nope"}', 161), (b'{"Action": 5}', 161),
    (b'{"Action": "ListModels"}', 170),
    (b'{"Action": "ListModels", "PublicKey": "%s"}' % PUB["pk-alice"].encode(), 170),
    (b'{"Action": "ListModels", "PublicKey": "nobody", "Signature": "00"}', 172),
    (b'{"Action": "ListModels", "PublicKey": "%s", "Signature": "00"}' % PUB["pk-alice"].encode(), 171),
])
def test_envelope_retcodes(api, raw, code):
    r = api.client.post("/", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["RetCode"] == code, r.json()
    assert "Traceback" not in r.text


def test_unknown_action_message_names_it(api):
    r = api({"Action": "Frobnicate"})
    assert r["RetCode"] == 161 and r["Message"] == "Action [Frobnicate] not exists"


def test_answer_echoes_action_and_request_uuid_even_on_error(api):
    body = signed({"Action": "ListModels"})
    body["Signature"] = "0" * 40
    r = api(body)
    assert (r["RetCode"], r["Action"], r["request_uuid"]) == (171, "ListModels", body["request_uuid"])


def test_signature_by_another_key_is_refused(api):
    body = signed({"Action": "ListModels"}, "pk-alice", private_key=KEYS["pk-bob"])
    assert api(body)["RetCode"] == 171


def test_tampered_body_is_refused(api):
    body = signed(generate_body())
    body["Seed"] = 99
    assert api(body)["RetCode"] == 171


def test_body_size_limit(api, monkeypatch):
    monkeypatch.setattr(get_services().settings, "max_body_bytes", 300)
    r = api(signed(generate_body()))
    assert r["RetCode"] == 230 and "[body]" in r["Message"]


def test_bad_param_names_field(api):
    r = api(signed(generate_body(Width=63)))
    assert r["RetCode"] == 230 and "Width" in r["Message"]
    r = api(signed(generate_body(Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 2})))
    assert r["RetCode"] == 230 and "ClothesMaskIndex" in r["Message"]


def test_unknown_main_model_is_240_and_nothing_queued(api, atelier_env):
    r = redis_lib.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    before = queue_depth(r, api.queue)
    out = api(signed(generate_body(MainModel={"ModelCode": "no-such-model"})))
    assert out["RetCode"] == 240 and out["Message"] == "Model [no-such-model] not exists"
    assert queue_depth(r, api.queue) == before


def test_unknown_submodel_is_240(api):
    out = api(signed(generate_body(SubModelList=[{"ModelCode": "nope"}])))
    assert out["RetCode"] == 240 and "nope" in out["Message"]


def test_main_model_as_submodel_is_240(api):
    out = api(signed(generate_body(SubModelList=[{"ModelCode": "demo-inpaint"}])))
    assert out["RetCode"] == 240


@pytest.mark.parametrize("code", ["no-such-upscaler", "demo-inpaint", "demo-lora"])
def test_a_refine_upscaler_unknown_or_of_another_type_is_240(api, atelier_env, code):
    r = redis_lib.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    before = queue_depth(r, api.queue)
    out = api(signed(generate_body(Refine={"Upscaler": code})))
    assert (out["RetCode"], out["Message"]) == (240, f"Model [{code}] not exists"), out
    assert queue_depth(r, api.queue) == before


def test_a_refine_upscaler_that_is_not_a_string_is_230_naming_it(api):
    out = api(signed(generate_body(Refine={"Strength": 0.2, "Upscaler": 5})))
    assert (out["RetCode"], out["Message"]) == (230, "Params [Refine.Upscaler] not available: must be a string")


@pytest.mark.parametrize("value, sent", [("demo-upscaler", "demo-upscaler"), ("lanczos", "Lanczos"), (None, None)])
def test_a_refine_upscaler_goes_with_the_job(api, value, sent):
    out = api(signed(generate_body(Refine={"Upscaler": value})))
    assert out["RetCode"] == 0, out
    raw = queued_raw(redis_lib.Redis.from_url(get_services().settings.redis_url), api.queue)[0]
    job = orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))[0][0]
    assert job["task_uid"] == out["TaskUID"] and job["refine_upscaler"] == sent


def test_generate_queues_small_versioned_message(api, atelier_env):
    r = redis_lib.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    out = api(signed(generate_body()))
    assert out["RetCode"] == 0 and len(out["TaskUID"]) == 21
    raw = queued_raw(r, api.queue)[0]
    assert raw is not None and len(raw) < 8000, "the broker message must not carry image data"
    msg = orjson.loads(raw)
    args = orjson.loads(base64.b64decode(msg["body"]))[0]
    job = args[0]
    assert job["v"] == 1 and job["task_uid"] == out["TaskUID"] and len(job["mannequin_image"]) == 64


def test_idempotent_on_request_uuid(api):
    body = signed(generate_body())
    first = api(body)
    again = api(body)
    assert first["RetCode"] == again["RetCode"] == 0
    assert first["TaskUID"] == again["TaskUID"]
    other = api(signed(generate_body()))  # a new request_uuid is a new task
    assert other["TaskUID"] != first["TaskUID"]


def test_same_request_uuid_of_two_keys_are_two_tasks(api):
    a = signed(generate_body(), "pk-alice")
    b = signed({**generate_body(), "request_uuid": a["request_uuid"]}, "pk-bob")
    assert api(a)["TaskUID"] != api(b)["TaskUID"]


def test_tasks_are_visible_only_to_their_owner(api):
    uid = api(signed(generate_body(), "pk-alice"))["TaskUID"]
    mine = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}, "pk-alice"))["TaskDetailList"]
    assert [d["TaskUID"] for d in mine] == [uid]
    assert mine[0]["Status"] == "Queuing" and mine[0]["Seed"] == 1234
    assert mine[0]["ErrorCode"] == 0 and "ErrorMassage" in mine[0]
    theirs = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}, "pk-bob"))
    assert theirs["RetCode"] == 0 and theirs["TaskDetailList"] == []
    assert uid in api(signed({"Action": "ListRunningTasks"}, "pk-alice"))["TaskUIDList"]
    assert uid not in api(signed({"Action": "ListRunningTasks"}, "pk-bob"))["TaskUIDList"]


def test_random_seed_is_drawn_and_reported(api):
    uid = api(signed(generate_body(Seed=-1)))["TaskUID"]
    d = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]
    assert 0 <= d["Seed"] <= 2147483647


@pytest.mark.parametrize("value", [None, "abc", [1], ["x"] * 101])
def test_list_tasks_details_validates_list(api, value):
    body = {"Action": "ListTasksDetails"}
    if value is not None:
        body["TaskUIDList"] = value
    r = api(signed(body))
    assert r["RetCode"] == 230 and "TaskUIDList" in r["Message"]


def test_rate_limit_on_active_tasks(api, monkeypatch):
    monkeypatch.setattr(get_services().settings, "max_active_tasks_per_key", 1)
    # pk-bob's earlier tasks in this session are still Queuing (no worker here): over the limit.
    api(signed(generate_body(), "pk-bob"))
    r = api(signed(generate_body(), "pk-bob"))
    assert r["RetCode"] == 153


def test_broker_down_is_150_and_service_recovers(api, monkeypatch):
    svc = get_services()
    real = svc.tasks.r
    monkeypatch.setattr(svc.tasks, "r", redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    monkeypatch.setattr(svc.tasks, "_create", svc.tasks.r.register_script("return 1"))
    assert api(signed(generate_body()))["RetCode"] == 150
    assert api.client.get("/healthz").status_code == 503
    assert api.client.get("/livez").json() == {"status": "alive"}  # the process serves: no restart mends Redis
    monkeypatch.setattr(svc.tasks, "r", real)
    assert api.client.get("/healthz").status_code == 200


def test_result_links_serve_only_the_owners_listed_files_while_valid(api):
    svc = get_services()
    uid, _ = svc.tasks.create(PUB["pk-alice"], None, "GenerateFromMannequin", 1, 0)
    png = base64.b64decode(generate_body()["ImageAndMaskList"][0])
    svc.storage.write_result(uid, 0, png)
    svc.storage.write_result(uid, 1, b"not listed in the task record")
    svc.tasks.mark_finished(uid, ["0.png"], 1)
    [link] = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}))["TaskDetailList"][0]["ImgList"]
    url = urlsplit(link)
    exp, sig = (parse_qs(url.query)[k][0] for k in ("exp", "sig"))

    def get(path, **params):
        return api.client.get(path, params=params)

    ok = get(url.path, exp=exp, sig=sig)
    assert ok.status_code == 200 and ok.content == png and ok.headers["content-type"] == "image/png"
    assert get(url.path, exp=exp, sig="0" * 40).status_code == 404            # forged signature
    assert get(url.path, exp=int(exp) + 1, sig=sig).status_code == 404        # extended expiry
    past = int(time.time()) - 1
    expired = urlsplit(make_link("", KEYS["pk-alice"], uid, "0.png", past))
    assert get(expired.path, **{k: v[0] for k, v in parse_qs(expired.query).items()}).status_code == 404
    bobs = urlsplit(make_link("", KEYS["pk-bob"], uid, "0.png", int(exp)))     # signed by another key
    assert get(bobs.path, **{k: v[0] for k, v in parse_qs(bobs.query).items()}).status_code == 404
    unlisted = urlsplit(make_link("", KEYS["pk-alice"], uid, "1.png", int(exp)))  # on disk, not a result
    assert get(unlisted.path, **{k: v[0] for k, v in parse_qs(unlisted.query).items()}).status_code == 404
    other = urlsplit(make_link("", KEYS["pk-alice"], "a" * 21, "0.png", int(exp)))  # no such task
    assert get(other.path, **{k: v[0] for k, v in parse_qs(other.query).items()}).status_code == 404


def _detail(api, uid: str, key: str = "pk-alice") -> dict:
    [detail] = api(signed({"Action": "ListTasksDetails", "TaskUIDList": [uid]}, key))["TaskDetailList"]
    return detail


def test_without_main_model_the_default_is_used_and_named_in_the_notes(api):
    body = generate_body()
    del body["MainModel"]
    out = api(signed(body))
    assert out["RetCode"] == 0, out
    detail = _detail(api, out["TaskUID"])
    assert "MainModel: not given; the deployment's default demo-inpaint was used" in detail["Notes"]
    raw = queued_raw(redis_lib.Redis.from_url(get_services().settings.redis_url), api.queue)[0]
    job = orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))[0][0]
    assert job["task_uid"] == out["TaskUID"] and job["main_model"] == "demo-inpaint"


def test_unknown_top_level_fields_are_named_in_the_notes(api):
    out = api(signed(generate_body(Widht=512, Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1, "Extra": 1})))
    assert out["RetCode"] == 0, out
    assert _detail(api, out["TaskUID"])["Notes"] == ["ignored fields: Widht"]
    assert _detail(api, api(signed(generate_body()))["TaskUID"])["Notes"] == []


def test_task_details_carry_txt_list_and_consumed_points(api):
    svc = get_services()
    uid, _ = svc.tasks.create(PUB["pk-alice"], None, "GenerateFromMannequin", 1, 0, points=3)
    queued = _detail(api, uid)
    assert queued["TxtList"] == [] and queued["ConsumeApiPoint"] == 0 and queued["Status"] == "Queuing"
    svc.storage.write_result(uid, 0, b"png")
    svc.storage.write_result(uid, 1, b"png")
    svc.tasks.mark_finished(uid, ["0.png", "1.png"], 1)
    assert _detail(api, uid)["ConsumeApiPoint"] == 6  # 2 images x 3 points
    failed, _ = svc.tasks.create(PUB["pk-alice"], None, "GenerateFromMannequin", 1, 0, points=3)
    svc.tasks.mark_error(failed, 500, "Internal error")
    assert _detail(api, failed)["ConsumeApiPoint"] == 0


def test_control_net_list_units_are_checked_against_the_models(api):
    unit = {"PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "nope"}}
    out = api(signed(generate_body(ControlNetList=[unit])))
    assert out["RetCode"] == 240 and out["Message"] == "Model [nope] not exists"
    both = api(signed(generate_body(ControlNetList=[], ControlNet=[])))
    assert both["RetCode"] == 230 and "[ControlNet]" in both["Message"]


def test_storage_that_cannot_be_written_is_150_and_nothing_is_queued(api, monkeypatch, tmp_path):
    svc = get_services()
    queued = queue_depth(redis_lib.Redis.from_url(svc.settings.redis_url), api.queue)
    (tmp_path / "data-dir-is-a-file").write_bytes(b"")  # a file where a folder must be: every write fails
    monkeypatch.setattr(svc, "storage", Storage(LocalStore(tmp_path / "data-dir-is-a-file")))
    out = api(signed(generate_body(Seed=987)))
    assert out["RetCode"] == 150 and out["Message"] == STORAGE_UNAVAILABLE_MESSAGE
    assert queue_depth(redis_lib.Redis.from_url(svc.settings.redis_url), api.queue) == queued
