"""Personas at the gateway (docs/API.md "Personas"): CreatePersona / ListPersonas / DeletePersona per key, their
limits (ATELIER_MAX_PERSONAS_PER_KEY, ATELIER_MAX_PERSONA_IMAGES), another key's persona as absent as an unknown
one (240), a unit's PersonaCode checked and queued, and the persona's files kept by the retention sweep and removed
by DeletePersona."""
from __future__ import annotations

import base64
import time

import orjson
import pytest
import redis
import yaml
from PIL import Image

from app.contract.settings import get_settings
from app.contract.storage import PERSONAS, open_storage
from app.contract.taskstore import task_key
from app.keys import KeyFileError, KeyStore
from support.api import KEYS, PUB, example_inputs, generate_body, png_b64, signed


def face(i: int = 0) -> str:
    return png_b64(Image.new("RGB", (48, 56), (30 * i % 255, 120, 200 - 20 * i)))


@pytest.fixture()
def clean(atelier_env):
    """No persona of the test keys left by an earlier test (records have no TTL)."""
    r = redis.Redis.from_url(atelier_env["ATELIER_REDIS_URL"])
    for k in [*r.scan_iter("atelier:persona:*"), *r.scan_iter("atelier:personas:*")]:
        r.delete(k)
    return r


@pytest.fixture()
def limits(monkeypatch):
    monkeypatch.setenv("ATELIER_MAX_PERSONAS_PER_KEY", "2")
    monkeypatch.setenv("ATELIER_MAX_PERSONA_IMAGES", "3")


def create(api, name="Mira", images=None, key="pk-alice") -> dict:
    return api(signed({"Action": "CreatePersona", "Name": name, "ImageList": images or [face()]}, key))


def ip_unit(**over) -> dict:
    return {"ControlModel": {"ModelCode": "demo-ip-adapter", "InferenceParams": {"ControlWeight": 0.6}}, **over}


def test_create_list_delete(clean, api):
    t0 = int(time.time())
    out = create(api, "  Mira K.  ", [face(0), face(1), face(0)])
    assert out["RetCode"] == 0, out
    code = out["PersonaCode"]
    assert code.startswith("p") and len(code) == 22
    listed = api(signed({"Action": "ListPersonas"}))["PersonaList"]
    assert len(listed) == 1
    entry = listed[0]
    assert entry["PersonaCode"] == code and entry["Name"] == "Mira K." and entry["ImageCount"] == 2  # one repeat
    assert t0 <= entry["CreatedAt"] <= time.time() + 1
    storage = open_storage(get_settings())
    r = clean.hgetall(f"atelier:persona:{code}")
    assert clean.ttl(f"atelier:persona:{code}") == -1 and r[b"owner"].decode() == PUB["pk-alice"]
    images = storage.objects.expired(PERSONAS, time.time() + 10)
    assert code in images
    out = api(signed({"Action": "DeletePersona", "PersonaCode": code}))
    assert out["RetCode"] == 0 and out["PersonaCode"] == code
    assert api(signed({"Action": "ListPersonas"}))["PersonaList"] == []
    assert code not in storage.objects.expired(PERSONAS, time.time() + 10)
    again = api(signed({"Action": "DeletePersona", "PersonaCode": code}))
    assert again["RetCode"] == 240 and again["Message"] == f"Persona [{code}] not exists"


@pytest.mark.parametrize(("body", "field", "rule"), [
    ({"ImageList": [face()]}, "Name", "is required"),
    ({"Name": "", "ImageList": [face()]}, "Name", "must have between 1 and 64 characters"),
    ({"Name": "   ", "ImageList": [face()]}, "Name", "must have between 1 and 64 characters"),
    ({"Name": "x" * 65, "ImageList": [face()]}, "Name", "must have between 1 and 64 characters"),
    ({"Name": "a\nb", "ImageList": [face()]}, "Name", "must not contain control characters"),
    ({"Name": 7, "ImageList": [face()]}, "Name", "must be a string"),
    ({"Name": "Mira"}, "ImageList", "is required"),
    ({"Name": "Mira", "ImageList": []}, "ImageList", "must have between 1 and 3 elements"),
    ({"Name": "Mira", "ImageList": [face(i) for i in range(4)]}, "ImageList", "must have between 1 and 3 elements"),
    ({"Name": "Mira", "ImageList": [face(), base64.b64encode(b"not an image").decode()]}, "ImageList[1]", ""),
])
def test_create_refuses_bad_bodies_naming_the_field(clean, limits, api, body, field, rule):
    out = api(signed({"Action": "CreatePersona", **body}))
    assert out["RetCode"] == 230, out
    assert out["Message"].startswith(f"Params [{field}] not available: {rule}"), out
    assert api(signed({"Action": "ListPersonas"}))["PersonaList"] == []


def test_the_persona_limit_per_key(clean, limits, api):
    assert create(api, "a")["RetCode"] == 0
    assert create(api, "b")["RetCode"] == 0
    out = create(api, "c")
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [Name] not available: cannot be added: this key keeps 2 personas"), out
    assert create(api, "bob's", key="pk-bob")["RetCode"] == 0  # per key
    assert [p["Name"] for p in api(signed({"Action": "ListPersonas"}))["PersonaList"]] == ["a", "b"]


def test_another_key_s_persona_is_as_absent_as_an_unknown_one(clean, api):
    code = create(api)["PersonaCode"]
    assert api(signed({"Action": "ListPersonas"}, "pk-bob"))["PersonaList"] == []
    for c in (code, "p" + "0" * 21, "nonsense", "../x"):
        out = api(signed({"Action": "DeletePersona", "PersonaCode": c}, "pk-bob"))
        assert out["RetCode"] == 240 and out["Message"] == f"Persona [{c}] not exists", out
    unit = ip_unit(PersonaCode=code)
    out = api(signed(generate_body(ControlNetList=[unit]), "pk-bob"))
    assert out["RetCode"] == 240 and out["Message"] == f"Persona [{code}] not exists", out
    assert len(api(signed({"Action": "ListPersonas"}))["PersonaList"]) == 1  # alice's untouched
    missing = api(signed({"Action": "DeletePersona"}))
    assert missing["RetCode"] == 230 and missing["Message"].startswith("Params [PersonaCode] not available")


def test_a_unit_s_persona_code_is_queued_in_place_of_an_image(clean, api):
    code = create(api)["PersonaCode"]
    out = api(signed(generate_body(ControlNetList=[ip_unit(PersonaCode=code)])))
    assert out["RetCode"] == 0, out
    unit = orjson.loads(clean.hget(task_key(out["TaskUID"]), "job"))["control_units"][0]
    assert unit["persona"] == code and unit["image"] is None and unit["control_weight"] == 0.6


def test_bad_persona_units_are_refused(clean, api):
    code = create(api)["PersonaCode"]
    both = api(signed(generate_body(ControlNetList=[ip_unit(PersonaCode=code, ImageIndex=0)])))
    assert both["RetCode"] == 230
    assert both["Message"].startswith("Params [ControlNetList[0].PersonaCode] not available: cannot be combined"
                                      " with ImageIndex"), both
    cn = {"PersonaCode": code, "PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "demo-controlnet"}}
    out = api(signed(generate_body(ControlNet=[cn])))
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [ControlNet[0].PersonaCode] not available: is read by an IP-Adapter"
                                     " unit only"), out
    out = api(signed(generate_body(ControlNetList=[ip_unit(PersonaCode="p" + "1" * 21)])))
    assert out["RetCode"] == 240 and out["Message"] == f"Persona [p{'1' * 21}] not exists"
    out = api(signed(generate_body(ControlNetList=[ip_unit(PersonaCode=5)])))
    assert out["RetCode"] == 230 and "[ControlNetList[0].PersonaCode]" in out["Message"]


def test_personas_survive_the_retention_sweep_and_go_with_delete_persona(clean, api):
    man, _ = example_inputs()
    code = create(api, images=[face(0), png_b64(man)])["PersonaCode"]
    storage = open_storage(get_settings())
    rec = [p for p in api(signed({"Action": "ListPersonas"}))["PersonaList"] if p["PersonaCode"] == code]
    assert rec[0]["ImageCount"] == 2
    shas = orjson.loads(clean.hget(f"atelier:persona:{code}", "images"))
    assert len(shas) == 2
    storage.write_persona_embeds(code, "embeds-" + "0" * 32 + ".safetensors", b"cached")
    storage.sweep(0, now=time.time() + 10 * 365 * 86400)   # everything swept would be expired by now
    assert all(storage.persona_has(code, sha) for sha in shas)
    assert storage.read_persona_embeds(code, "embeds-" + "0" * 32 + ".safetensors") == b"cached"
    assert api(signed({"Action": "DeletePersona", "PersonaCode": code}))["RetCode"] == 0
    assert not any(storage.persona_has(code, sha) for sha in shas)
    assert storage.read_persona_embeds(code, "embeds-" + "0" * 32 + ".safetensors") is None


@pytest.fixture()
def key_limits(monkeypatch, tmp_path):
    """alice's entry of the key file sets MaxPersonas 1 and MaxPersonaImages 2; bob's nothing (the settings' 20/8)."""
    entries = [{"PublicKey": PUB["pk-alice"], "PrivateKey": KEYS["pk-alice"], "MaxPersonas": 1, "MaxPersonaImages": 2},
               {"PublicKey": PUB["pk-bob"], "PrivateKey": KEYS["pk-bob"]}]
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    monkeypatch.setenv("ATELIER_KEYS_FILE", str(path))


def test_the_key_file_overrides_the_persona_limits_per_key(clean, key_limits, api):
    out = create(api, images=[face(0), face(1), face(2)])
    assert out["RetCode"] == 230 and out["Message"].startswith(
        "Params [ImageList] not available: must have between 1 and 2 elements"), out
    assert create(api, images=[face(0), face(1)])["RetCode"] == 0
    out = create(api, "second")
    assert out["RetCode"] == 230 and "this key keeps 1 personas" in out["Message"], out
    assert create(api, images=[face(i) for i in range(3)], key="pk-bob")["RetCode"] == 0
    assert create(api, "second", key="pk-bob")["RetCode"] == 0


@pytest.mark.parametrize("entry", [{"MaxPersonas": -1}, {"MaxPersonas": "5"}, {"MaxPersonaImages": 0},
                                   {"MaxPersonaImages": True}])
def test_a_bad_persona_limit_in_the_key_file_is_refused(tmp_path, entry):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"PublicKey": "shop", "PrivateKey": "secret", **entry}]}))
    with pytest.raises(KeyFileError) as e:
        KeyStore.from_file(path)
    field = next(iter(entry))
    assert f"keys[0] (PublicKey shop): {field} must be a whole number" in str(e.value)
