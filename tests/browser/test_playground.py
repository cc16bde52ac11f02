"""The browser playground (app/playground/) in a real browser: Debian's Chromium driven by Playwright against the
real gateway and worker (tests/conftest.py ``live_stack``).

Every test also checks, when its page closes, that the page logged no console error (a CSP violation included),
had no failed request, and asked for nothing outside the gateway's origin (tests/browser/conftest.py).
"""
from __future__ import annotations

import base64
import json
import os
import re

import numpy as np
import orjson
import pytest
from PIL import Image

from app.contract.limits import DEFAULT_PRIORITY
from app.signature import sign as server_sign
from support.api import KEYS, PUB
from support.browser import (
    EXAMPLES,
    PHONE,
    decode_b64_image,
    dress_strokes,
    fetch_image,
    mask_of,
    rgb,
    save_readme_screenshot,
    wait_until,
)
from support.masks import rgb as example_rgb
from support.masks import truth

try:
    from playwright.sync_api import expect
except ImportError:   # the `browser` fixture then skips every test (fails them with ATELIER_REQUIRE_BROWSER=1)
    expect = None

pytestmark = pytest.mark.slow

MANNEQUIN = EXAMPLES / "mannequin.png"          # 256x384, a grey figure in a red dress
DRESS = truth("clothes_mask.png")
FIGURE = truth("mannequin_figure.png")
MANNEQUIN_RGB = example_rgb("mannequin.png")
POINT_ON_DRESS = (128, 220)


def generate_and_check_kept_pixels(ui) -> tuple[np.ndarray, dict]:
    """Generate at the photo's size with JustResize; the result's pixels equal the mannequin's wherever the mask
    the page SENT is white. Returns that mask and the body sent."""
    ui.by("resize-mode").select_option("JustResize")
    ui.by("seed").fill("7")
    ui.generate()
    expect(ui.by("progress-text")).to_have_text(re.compile(r"^(Queuing|Running|Finished)"))
    ui.snap("generating")
    src = ui.wait_result()
    ui.snap("result")
    (body,) = ui.record.sent("GenerateFromMannequin")
    assert body["Width"] == 256 and body["Height"] == 384 and body["Seed"] == 7
    assert body["Priority"] > DEFAULT_PRIORITY, "someone waits at the screen: it passes a batch queued at the default"
    assert body["Mannequin"] == {"ImageIndex": 0, "ResizeMode": "JustResize", "ClothesMaskIndex": 1}
    sent_photo = decode_b64_image(body["ImageAndMaskList"][0])
    assert np.array_equal(rgb(sent_photo), MANNEQUIN_RGB), "the photo is sent as chosen"
    mask_img = decode_b64_image(body["ImageAndMaskList"][1])
    assert mask_img.size == (256, 384)
    mask = mask_of(mask_img)
    assert set(np.unique(np.asarray(mask_img.convert("L")))) <= {0, 255}, "a black-and-white mask"
    result, _ = fetch_image(src)
    assert result.size == (256, 384)
    made = rgb(result)
    assert np.array_equal(made[mask], MANNEQUIN_RGB[mask]), "the garment is kept pixel for pixel"
    assert not np.array_equal(made[~mask], MANNEQUIN_RGB[~mask]), "the rest is redrawn"
    return mask, body


# --- keys and signature ------------------------------------------------------------------------------------

def test_root_leads_to_the_page_and_keys_persist_across_reloads(fresh):
    fresh.open()
    assert fresh.page.url.endswith("/playground/")
    assert fresh.by("keys-form").is_visible() and not fresh.by("keys-status").is_visible()
    fresh.enter_keys(PUB["pk-alice"], KEYS["pk-alice"])
    fresh.wait_connected()
    assert fresh.by("keys-public").inner_text() == PUB["pk-alice"]
    fresh.page.reload()
    fresh.wait_connected()    # no keys typed again: they came from local storage
    assert fresh.by("keys-public").inner_text() == PUB["pk-alice"]
    assert not fresh.by("keys-form").is_visible()
    stored = fresh.page.evaluate("['publicKey', 'privateKey'].map(k => localStorage.getItem('atelier.' + k))")
    assert stored == [PUB["pk-alice"], KEYS["pk-alice"]]
    # the task list kept in the browser drops what expired: entries over 24 hours old, and TaskUIDs the server
    # no longer knows (its retention ended)
    fresh.page.evaluate("""pub => localStorage.setItem('atelier.tasks', JSON.stringify([
        {uid: 'unknownunknownunknown', action: 'GenerateFromMannequin', publicKey: pub, createdAt: Date.now()},
        {uid: 'oldoldoldoldoldoldold', action: 'GenerateFromMannequin', publicKey: pub,
         createdAt: Date.now() - 25 * 3600 * 1000}]))""", PUB["pk-alice"])
    fresh.page.reload()
    fresh.wait_connected()
    wait_until(lambda: fresh.page.evaluate("localStorage.getItem('atelier.tasks')") == "[]", what="tasks pruned")
    assert fresh.record.sent("ListTasksDetails")[-1]["TaskUIDList"] == ["unknownunknownunknown"]
    assert fresh.by("task").count() == 0
    # every call after the reload was signed in the page with the stored keys, and accepted
    assert len(fresh.record.sent("ListModels")) == 3
    assert all(b["PublicKey"] == PUB["pk-alice"] for b in fresh.record.bodies)
    # the keys are forgotten on request
    fresh.by("keys-forget").click()
    assert fresh.page.evaluate("localStorage.getItem('atelier.privateKey')") is None
    assert fresh.by("keys-form").is_visible()


#: Bodies whose signing string exercises every rule: key order by code point (upper before lower case; a BMP
#: character above the surrogates against an astral one, which UTF-16 order would swap), floats in every
#: spelling region, whole floats, integers beyond 2^53 and 2^64, unicode, null, booleans, nesting, arrays.
SIGNER_BODIES = [
    {"Action": "ListModels", "PublicKey": "abcdefg"},
    {"a": 0.1, "B": 1e-7, "c": 123.456, "d": 2.0, "e": 1e21, "f": 1e23, "g": -2.5e-10, "h": 0.000001, "i": 1.5e-6},
    {"big": 2**53 + 1, "bigger": 2**63, "huge": 123456789012345678901234, "neg": -(2**63), "zero": -0.0, "one": 1},
    {"text": "héllo ☃ 😀 中文", "empty": "", "none": None, "yes": True, "no": False},
    {"\uff21": 1, "\U0001f600": 2, "Z": 3, "a": 4, "_": 5, "é": 6, "e": 7},
    {"obj": {"z": [1, {"y": 0.3, "Y": [None, "x", 1e-9]}], "A": -0.0, "m": {"deep": {"er": [[], {}, [[1.25]]]}}}},
    {"list": [0.5, "s", True, None, {"k": "v"}, [1, 2, [3]]], "MaxFloat": 1.7976931348623157e308, "Tiny": 5e-324},
    {"Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": "JustResize"}, "Width": 256,
     "Image2Image": {"ImageIndex": 2, "ReferStrength": 0.35}, "SubModelList": [
         {"ModelCode": "demo-lora", "InferenceParams": {"LoraWeight": 0.7}}], "PositivePrompts": ["a woman"]},
]

SIGN_IN_PAGE = """async ([texts, privateKey]) => {
  const { sign } = await import('/playground/js/sign.js');
  const out = [];
  for (const text of texts) {
    const body = JSON.parse(text);
    out.push([JSON.stringify(body), await sign(body, privateKey)]);
  }
  return out;
}"""

CALL_IN_PAGE = """async ([texts, publicKey, privateKey]) => {
  const { createClient } = await import('/playground/js/api.js');
  const api = createClient(() => ({ publicKey, privateKey }));
  const out = [];
  for (const text of texts) {
    try { out.push((await api.call('ListModels', JSON.parse(text))).RetCode); }
    catch (e) { out.push(`${e.retCode}: ${e.message}`); }
  }
  return out;
}"""


def test_the_page_signs_as_the_server_does(fresh):
    fresh.open()
    texts = [json.dumps(b, ensure_ascii=False) for b in SIGNER_BODIES]
    signed = fresh.page.evaluate(SIGN_IN_PAGE, [texts, "123456"])
    assert signed[0][1] == "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"   # the published check value
    for text, (sent, signature) in zip(texts, signed, strict=True):
        # what the page would send, read as the gateway reads it (orjson), signed by the server's code
        assert server_sign(orjson.loads(sent), "123456") == signature, text
    # and the gateway accepts those bodies signed by the page (ListModels reads no field, but signs them all)
    extras = [json.dumps({k: v for k, v in b.items() if k not in ("Action", "PublicKey")}) for b in SIGNER_BODIES]
    codes = fresh.page.evaluate(CALL_IN_PAGE, [extras, PUB["pk-alice"], KEYS["pk-alice"]])
    assert codes == [0] * len(extras)


def test_a_wrong_private_key_shows_the_signature_error(fresh):
    fresh.open()
    fresh.enter_keys(PUB["pk-alice"], "not-alice-secret")
    error = fresh.by("error-keys")
    error.wait_for(state="visible")
    fresh.snap("wrong key")
    assert "Signature VerifyAC Error" in error.inner_text() and "171" in error.inner_text()
    assert fresh.by("keys-form").is_visible()
    assert fresh.page.evaluate("localStorage.getItem('atelier.privateKey')") is None, "a refused key is not kept"
    # an unknown PublicKey says so too
    fresh.enter_keys("pk-nobody", "x")
    expect(error).to_contain_text("172")
    assert "User Not Exists" in error.inner_text()


# --- the full flow -----------------------------------------------------------------------------------------

def test_painted_mask_flow_keeps_the_dress(ui):
    ui.load_mannequin(MANNEQUIN)
    assert ui.by("width").input_value() == "256" and ui.by("height").input_value() == "384"
    ui.paint(dress_strokes(DRESS), brush=20)
    # an eraser stroke and its undo leave the painted mask as it was
    painted = ui.by("mask-canvas").evaluate("c => c.toDataURL()")
    ui.by("tool-eraser").check()
    ui.paint([((100, 200), (150, 200))], brush=20)
    assert ui.by("mask-canvas").evaluate("c => c.toDataURL()") != painted
    ui.by("mask-undo").click()
    assert ui.by("mask-canvas").evaluate("c => c.toDataURL()") == painted
    ui.snap("painted")

    mask, _ = generate_and_check_kept_pixels(ui)
    # the strokes were painted inside the dress and cover most of it
    assert (mask & ~DRESS).sum() <= 0.01 * DRESS.sum() and (mask & DRESS).sum() >= 0.6 * DRESS.sum()

    # the progress ended, the task is listed as Finished, the image downloads, the seed can be reused
    assert ui.by("progress-text").inner_text() == "Finished."
    uid = ui.by("task").first.get_attribute("data-uid")
    wait_until(lambda: ui.task_status(uid) == "Finished", what="task listed as Finished")
    with ui.page.expect_download() as download:
        ui.by("download").first.click()
    src = ui.by("result-image").first.evaluate("img => img.src")
    assert download.value.path().read_bytes() == fetch_image(src)[1]
    ui.set_range("compare-slider", 20)
    assert "inset(0px 80%" in ui.page.locator(".compare .before").first.evaluate("i => getComputedStyle(i).clipPath")
    ui.by("seed").fill("-1")
    ui.by("reuse-seed").first.click()
    assert ui.by("seed").input_value() == "7"


def test_point_extraction_flow_keeps_the_dress(ui):
    ui.drop_mannequin(MANNEQUIN)    # drag-and-drop, this time
    ui.mask_mode("points")
    ui.click_image(*POINT_ON_DRESS)
    ui.page.locator("[data-testid=points-status][data-state=ready]").wait_for(timeout=120_000)
    ui.snap("points mask")
    (extract,) = ui.record.sent("ExtractContents")
    assert extract["IncludePointList"] == [{"X": 128, "Y": 220}]
    assert extract["OnlyMask"] is True and extract["ErodeSize"] == 0
    assert "ExcludePointList" not in extract and "Engine" not in extract   # the deployment's default engine
    assert ui.page.locator(".point-include").count() == 1
    shown = ui.garment_pixels_shown()
    assert shown > 0.8 * DRESS.sum(), "the mask from ExtractContents is shown over the photo"

    mask, _ = generate_and_check_kept_pixels(ui)
    assert mask.sum() == shown
    assert (mask & DRESS).sum() >= 0.9 * DRESS.sum() and not (mask & ~FIGURE).any()
    # an exclusion point asks again, with both lists
    ui.by("point-exclude").check()
    ui.click_image(128, 300)
    expect(ui.by("points-status")).to_contain_text("1 garment and 1 exclusion point", timeout=60_000)
    again = ui.record.sent("ExtractContents")[-1]
    assert again["IncludePointList"] == [{"X": 128, "Y": 220}] and again["ExcludePointList"] == [{"X": 128, "Y": 300}]
    assert ui.page.locator(".point-exclude").count() == 1


def test_cancel_stops_a_big_job(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.paint(dress_strokes(DRESS)[:3], brush=20)
    ui.by("size-preset").select_option("1024x1024")
    ui.by("batch-size").fill("4")
    ui.generate()
    cancel = ui.by("cancel")
    wait_until(lambda: cancel.is_enabled(), what="Cancel enabled")
    (body,) = ui.record.sent("GenerateFromMannequin")
    assert body["Width"] == body["Height"] == 1024 and body["BatchSize"] == 4
    ui.snap("before cancel")
    cancel.click()
    expect(ui.by("progress-text")).to_have_text("Canceled.", timeout=60_000)
    uid = ui.record.sent("CancelTask")[0]["TaskUIDList"][0]
    wait_until(lambda: ui.task_status(uid) == "Canceled", what="task listed as Canceled")
    ui.snap("canceled")
    assert ui.by("result-image").count() == 0
    # the task list is kept across a reload (this browser's local storage), its state from the server
    ui.page.reload()
    ui.wait_connected()
    wait_until(lambda: ui.by("task").count() >= 1 and ui.task_status(uid) == "Canceled", what="task kept")


def test_a_bad_field_is_shown_next_to_its_control(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.mask_mode("auto")      # the test deployment has a clothes segmenter: no mask to paint
    ui.by("width").fill("10")
    ui.generate()
    error = ui.by("error-Width")
    error.wait_for(state="visible")
    ui.snap("width error")
    assert error.inner_text().startswith("Params [Width] not available: must be between 64 and 2560")
    assert not ui.by("error-general").is_visible()
    width, message = ui.by("width").bounding_box(), error.bounding_box()
    assert 0 <= message["y"] - (width["y"] + width["height"]) < 80, "the message sits right under the control"
    # Generate without a photo or with an empty mask says so in words, next to the photo or the mask
    ui.mask_mode("paint")
    ui.by("width").fill("256")
    ui.generate()
    ui.by("error-mask").wait_for(state="visible")
    assert "mask is empty" in ui.by("error-mask").inner_text()
    assert not ui.record.sent("GenerateFromMannequin")[1:], "nothing is sent with an empty mask"


def test_each_error_goes_next_to_its_control_as_text(ui):
    """Answers the demo deployment cannot be made to give through the controls (the sliders keep to the ranges,
    the models come from ListModels) are faked for one call each: a field inside a submodel row, a ModelCode,
    and server text that looks like HTML."""
    ui.load_mannequin(MANNEQUIN)
    ui.mask_mode("auto")
    ui.by("submodel-add").click()
    ui.by("submodel-add").click()
    rows = ui.by("submodels").locator("li")
    rows.nth(1).locator("select").select_option("demo-lora-peft")
    message = "Params [SubModelList[1].InferenceParams.LoraWeight] not available: must be between -1 and 2"
    ui.answer_next("GenerateFromMannequin", {"RetCode": 230, "Message": message})
    ui.generate()
    slot = rows.nth(1).locator(".error")
    slot.wait_for(state="visible")
    assert slot.inner_text() == message + " (RetCode 230)"
    assert not rows.nth(0).locator(".error").is_visible() and not ui.by("error-general").is_visible()

    ui.answer_next("GenerateFromMannequin", {"RetCode": 240, "Message": "Model [demo-lora-peft] not exists"})
    ui.generate()
    expect(rows.nth(1).locator(".error")).to_have_text("Model [demo-lora-peft] not exists (RetCode 240)")

    ui.answer_next("GenerateFromMannequin", {"RetCode": 230, "Message": "Params [Height] not available: <b>x</b>"})
    ui.generate()
    expect(ui.by("error-Height")).to_have_text("Params [Height] not available: <b>x</b> (RetCode 230)")
    assert ui.page.locator("[data-error] b").count() == 0, "server text is never parsed as HTML"
    assert not ui.record.sent("GenerateFromMannequin")[3:]


def test_uploaded_and_automatic_masks(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.mask_mode("upload")
    ui.by("mask-input").set_input_files(str(EXAMPLES / "clothes_mask.png"))
    expect(ui.by("mask-undo")).to_be_enabled()
    shown = ui.garment_pixels_shown()
    assert shown == DRESS.sum(), "the uploaded mask is shown as it is"
    ui.by("mask-invert").click()
    assert ui.garment_pixels_shown() == DRESS.size - DRESS.sum()
    ui.by("mask-undo").click()
    assert ui.garment_pixels_shown() == DRESS.sum()
    ui.by("mask-visible").uncheck()
    assert ui.by("mask-canvas").evaluate("c => getComputedStyle(c).visibility") == "hidden"
    ui.by("mask-visible").check()
    assert ui.by("mask-canvas").evaluate("c => getComputedStyle(c).visibility") == "visible"
    # the automatic mask: no mask sent, the server's clothes segmenter makes it and the page shows it
    ui.mask_mode("auto")
    ui.by("resize-mode").select_option("JustResize")
    ui.generate()
    ui.wait_result()
    ui.snap("automatic mask")
    (body,) = ui.record.sent("GenerateFromMannequin")
    assert len(body["ImageAndMaskList"]) == 1 and body["Mannequin"] == {"ImageIndex": 0, "ResizeMode": "JustResize"}
    cards = ui.by("result-image")
    expect(cards).to_have_count(2)   # the image and the clothes mask the server made
    made = rgb(fetch_image(cards.nth(0).evaluate("i => i.src"))[0])
    mask = mask_of(fetch_image(cards.nth(1).evaluate("i => i.src"))[0])
    assert mask.sum() > 0.8 * DRESS.sum()
    assert np.array_equal(made[mask], MANNEQUIN_RGB[mask])


def generate_with_uploaded_mask(ui) -> str:
    """Generate at the photo's size with the example's clothes mask; the first result's URL."""
    ui.load_mannequin(MANNEQUIN)
    ui.mask_mode("upload")
    ui.by("mask-input").set_input_files(str(EXAMPLES / "clothes_mask.png"))
    expect(ui.by("mask-undo")).to_be_enabled()
    ui.by("resize-mode").select_option("JustResize")
    ui.generate()
    return ui.wait_result()


def test_upscale_a_result_twice_its_size(ui):
    src = generate_with_uploaded_mask(ui)
    result, stored_bytes = fetch_image(src)
    expect(ui.by("upscaler-row")).to_be_visible()          # the deployment lists an upscaler: Lanczos first
    assert ui.by("upscaler").input_value() == ""
    ui.by("upscale").first.click()
    cards = ui.by("result-card")
    expect(cards).to_have_count(2)
    ui.snap("upscaled")
    (body,) = ui.record.sent("ResizeImage")
    assert (body["Width"], body["Height"]) == (512, 768) and "Upscaler" not in body
    assert body["Priority"] > DEFAULT_PRIORITY
    assert base64.b64decode(body["Image"]) == stored_bytes, "the result is sent as stored"
    upscaled, _ = fetch_image(ui.by("result-image").first.evaluate("i => i.src"))
    assert upscaled.size == (512, 768)
    expected = result.convert("RGB").resize((512, 768), Image.Resampling.LANCZOS)
    assert np.array_equal(rgb(upscaled), rgb(expected))
    expect(ui.by("result-caption").first).to_contain_text("Lanczos")
    # the new card compares with the result it came from, and offers the follow-ups again
    assert ui.page.locator(".compare .before").first.evaluate("i => i.src") == src
    expect(ui.by("upscale")).to_have_count(2)
    # the same result with the deployment's upscaler model
    ui.by("upscaler").select_option("demo-upscaler")
    ui.by("upscale").nth(1).click()
    expect(ui.by("result-card")).to_have_count(3)
    assert ui.record.sent("ResizeImage")[1]["Upscaler"] == "demo-upscaler"
    expect(ui.by("result-caption").first).to_contain_text("upscaled by demo-upscaler (x4) to 512x768")
    assert fetch_image(ui.by("result-image").first.evaluate("i => i.src"))[0].size == (512, 768)


def test_restore_faces_on_a_result(ui):
    src = generate_with_uploaded_mask(ui)
    result, stored_bytes = fetch_image(src)
    ui.by("restore-faces").first.click()
    expect(ui.by("result-card")).to_have_count(2)
    (body,) = ui.record.sent("RestoreFaces")
    assert base64.b64decode(body["RawImage"]) == stored_bytes and set(body) >= {"RawImage"}
    # the demo model draws noise, in which no face is found: the image comes back unchanged, and the card says so
    expect(ui.by("result-caption").first).to_contain_text("no face found")
    restored, _ = fetch_image(ui.by("result-image").first.evaluate("i => i.src"))
    assert np.array_equal(rgb(restored), rgb(result))
    uid = ui.by("task").first.get_attribute("data-uid")
    wait_until(lambda: ui.task_status(uid) == "Finished", what="the RestoreFaces task listed as Finished")


def test_phone_screen_has_every_control_and_no_horizontal_scroll(phone):
    assert phone.page.viewport_size == PHONE
    phone.open()
    phone.enter_keys(PUB["pk-alice"], KEYS["pk-alice"])
    phone.wait_connected()
    phone.load_mannequin(MANNEQUIN)
    phone.by("control-mode").select_option("custom")
    phone.by("submodel-add").click()
    phone.snap("phone")
    for testid in ("dropzone", "mask-canvas", "mode-paint", "brush-size", "mask-undo", "background-input",
                   "refer-strength", "main-model", "submodel-select", "submodel-weight", "control-model", "face-source",
                   "positive-prompts", "translate", "size-preset", "width", "height", "seed", "batch-size",
                   "generate", "cancel", "progress", "results", "tasks-panel"):
        el = phone.by(testid).first
        el.scroll_into_view_if_needed()
        assert el.is_visible(), testid
        box = el.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (testid, box)
    assert phone.page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    # the other ways of making a mask, with their engine lists (long names)
    for mode, testid in (("points", "point-engine"), ("auto", "clothes-segmenter"), ("upload", "mask-input")):
        phone.mask_mode(mode)
        box = phone.by(testid).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (testid, box)
        assert phone.page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"], mode


def test_the_control_rows_offer_the_controlnets_not_the_ip_adapters(ui):
    ui.by("control-mode").select_option("custom")
    codes = ui.by("control-model").first.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert "demo-controlnet" in codes and not {"demo-ip-adapter", "ip-adapter-xl"} & set(codes)


def test_keyboard_reaches_generate(ui):
    assert ui.page.evaluate("document.scrollingElement.scrollWidth") <= 1280
    ui.page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(150):
        ui.page.keyboard.press("Tab")
        if ui.page.evaluate("document.activeElement?.dataset?.testid") == "generate":
            break
    else:
        raise AssertionError("Tab never reached the Generate button")
    focus = ui.page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focus != "none", "the focused control is visibly marked"
    ui.page.keyboard.press("Enter")
    ui.by("error-mannequin").wait_for(state="visible")
    assert ui.by("error-mannequin").inner_text() == "Choose a mannequin photo first."


@pytest.mark.skipif(os.environ.get("ATELIER_UPDATE_SCREENSHOT") != "1",
                    reason="writes docs/playground.png: run with ATELIER_UPDATE_SCREENSHOT=1")
def test_update_readme_screenshot(ui):
    ui.load_mannequin(MANNEQUIN)
    ui.paint(dress_strokes(DRESS), brush=20)
    ui.by("positive-prompts").fill("a woman, studio photo\nsummer light")
    ui.by("resize-mode").select_option("JustResize")
    ui.generate()
    ui.wait_result()
    ui.page.mouse.move(0, 0)
    size = save_readme_screenshot(ui)
    assert size <= 250_000
