"""The inputs that gave RetCode 500 (found by hand or by tests/gateway/test_fuzz_wire.py), each as a regular
test through the real app: every one is now a 230 naming the field (or the body)."""
from __future__ import annotations

import asyncio
import json
import time

import orjson
import pytest
from fastapi.testclient import TestClient

from app.contract.codes import RetCode
from app.contract.limits import MAX_BODY_DEPTH
from app.errors import ApiError
from app.main import app
from app.resultlinks import make_link
from app.services import get_services
from app.validation.images import decode_image
from support.api import KEYS, PUB, generate_body, signed
from support.fuzz import MAN, MASK


def post_raw(api, raw: bytes) -> dict:
    r = api.client.post("/", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


# --- a non-ASCII character in a base64 image (was: 500 "string argument should contain only ASCII
# characters", raised by base64.b64decode) -----------------------------------------------------------

NOT_BASE64 = "Params [{}] not available: not valid base64"

SPOILED = {
    "accent inside the data": lambda b: b[:40] + "é" + b[40:],
    "first character": lambda b: "ß" + b,
    "last character": lambda b: b + "€",
    "emoji after the padding": lambda b: b + "==😀",
    "no-break space inside": lambda b: b[:8] + "\u00a0" + b[8:],
    "line separator inside": lambda b: b[:8] + "\u2028" + b[8:],
    "ideographic space": lambda b: "\u3000" + b,
    "byte order mark": lambda b: "\ufeff" + b,
    "zero-width space": lambda b: b[:60] + "\u200b" + b[60:],
    "fullwidth letter": lambda b: "Ａ" + b[1:],
    "C1 control": lambda b: b[:3] + "\x85" + b[3:],
    "in the data-URL media type": lambda b: "data:image/pngé;base64," + b,
    "in the data-URL parameter": lambda b: "data:image/png;name=ü.png;base64," + b,
    "in the data-URL base64 marker": lambda b: "data:image/png;b\u0430se64," + b,  # Cyrillic a
    "fullwidth data-URL scheme": lambda b: "ｄata:image/png;base64," + b,
    "after the data-URL comma": lambda b: "data:image/png;base64,\u00e9" + b,
}


@pytest.mark.parametrize("spoil", SPOILED.values(), ids=SPOILED.keys())
@pytest.mark.parametrize("index", [0, 1])
def test_non_ascii_in_a_base64_image_is_a_230_naming_it(api, spoil, index):
    images = [MAN, MASK]
    images[index] = spoil(images[index])
    r = api(signed(generate_body(ImageAndMaskList=images)))
    assert (r["RetCode"], r["Message"]) == (230, NOT_BASE64.format(f"ImageAndMaskList[{index}]")), r


@pytest.mark.parametrize("field", ["ImageList", "MaskList"])
def test_non_ascii_in_image_list_or_mask_list_names_it(api, field):
    body = generate_body(Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 0})
    del body["ImageAndMaskList"]
    body["ImageList"], body["MaskList"] = [MAN], [MASK]
    body[field] = [body[field][0][:30] + "ñ" + body[field][0][30:]]
    r = api(signed(body))
    assert (r["RetCode"], r["Message"]) == (230, NOT_BASE64.format(f"{field}[0]")), r


@pytest.mark.parametrize("text", [MAN[:40] + "\ud800" + MAN[40:], "\udfff" + MAN, "data:image/png\ud83d;base64," + MAN])
def test_a_lone_surrogate_in_an_image_string_is_not_base64(text):
    """JSON text can spell a lone surrogate ("\\ud800"), though orjson refuses it (below): the image check
    does not rely on that."""
    with pytest.raises(ApiError) as info:
        decode_image(text, "ImageAndMaskList[0]", 4096 * 4096)
    assert (info.value.ret_code, info.value.message) == (RetCode.BAD_PARAM, NOT_BASE64.format("ImageAndMaskList[0]"))


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "cesu-bytes"])
def test_a_lone_surrogate_in_json_text_is_a_230(api, ensure_ascii):
    body = signed(generate_body())
    body["ImageAndMaskList"][0] = body["ImageAndMaskList"][0][:40] + "\ud800" + body["ImageAndMaskList"][0][40:]
    raw = json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    assert (b"\\ud800" in raw) == ensure_ascii
    r = post_raw(api, raw)
    assert (r["RetCode"], r["Message"]) == (230, "Params [body] not available: not valid JSON"), r


# --- a deeply nested body (was: 500 RecursionError in the signature's encode_value, for any body with a
# known Action and PublicKey and any Signature, nested about 500..1024 levels) -------------------------

def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_a_body_as_deep_as_the_limit_is_accepted(api):
    body = signed({"Action": "ListModels", "Extra": nested(MAX_BODY_DEPTH - 1)})  # the body is level 1
    assert api(body)["RetCode"] == 0


@pytest.mark.parametrize("lists", [MAX_BODY_DEPTH, 200, 600, 1000, 1023])
def test_a_body_deeper_than_the_limit_is_a_230(api, lists):
    """Any Signature will do: the signature's check walked the body recursively before telling it wrong."""
    head = orjson.dumps({"Action": "ListModels", "PublicKey": PUB["pk-alice"], "Signature": "0" * 40})
    raw = head[:-1] + b', "Extra": ' + b"[" * lists + b"]" * lists + b"}"  # up to 1024 levels: orjson parses it
    r = post_raw(api, raw)
    assert (r["RetCode"], r["Message"]) == (
        230, f"Params [body] not available: nested more than {MAX_BODY_DEPTH} levels deep"), r


def test_a_body_beyond_the_parsers_depth_is_a_230(api):
    raw = b'{"Action": "ListModels", "Extra": ' + b"[" * 1024 + b"]" * 1024 + b"}"  # 1025 levels
    r = post_raw(api, raw)
    assert (r["RetCode"], r["Message"]) == (230, "Params [body] not available: not valid JSON"), r


def test_deep_objects_in_a_generate_body(api):
    deep: dict = {}
    for _ in range(40):
        deep = {"InferenceParams": deep}
    r = api(signed(generate_body(MainModel={"ModelCode": "demo-inpaint", "InferenceParams": deep})))
    assert r["RetCode"] == 230 and r["Message"].startswith("Params [body]"), r


# --- a Content-Length of non-ASCII digits (was: 500 ValueError, "²".isdigit() is true but int("²") fails).
# No HTTP client sends it (h11 would refuse it in front of uvicorn): the ASGI app is called directly. ------

def asgi_post(raw: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict]:
    async def call() -> tuple[int, dict]:
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": raw, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, orjson.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return asyncio.run(call())


@pytest.mark.parametrize("length", ["²".encode("latin-1"), "¹²".encode("latin-1"), b"\xb3" * 3])
def test_content_length_of_non_ascii_digits_is_ignored(api, length):
    raw = orjson.dumps(signed({"Action": "ListModels"}))
    status, answer = asgi_post(raw, [(b"content-type", b"application/json"), (b"content-length", length)])
    assert (status, answer["RetCode"]) == (200, 0), answer


# --- a result link whose sig holds a non-ASCII character (500 TypeError "comparing strings with non-ASCII
# characters is not supported", from hmac.compare_digest in app/resultlinks.py check_link) --------------

def test_a_result_link_with_a_non_ascii_sig_is_404(api):
    uid = api(signed(generate_body()))["TaskUID"]
    svc = get_services()
    svc.tasks.mark_finished(uid, ["0.png"], 1)
    svc.storage.write_result(uid, 0, b"\x89PNG not really")
    link = make_link("", KEYS["pk-alice"], uid, "0.png", int(time.time()) + 3600)
    assert api.client.get(link).status_code == 200
    r = TestClient(app, raise_server_exceptions=False).get(link + "\u00e9")
    assert (r.status_code, r.json()) == (404, {"detail": "not found or link expired"})
