"""The playground's face reference and persona manager in a real browser (Chromium via Playwright) against the real
gateway and worker: an uploaded face sent as an IP-Adapter unit, a persona created from uploaded images, chosen,
generated with and deleted, and their errors shown at the section."""
from __future__ import annotations

import base64

import pytest

from support.browser import EXAMPLES

try:
    from playwright.sync_api import expect
except ImportError:   # the `browser` fixture then skips every test
    expect = None

pytestmark = pytest.mark.slow

MANNEQUIN = EXAMPLES / "mannequin.png"
FACE = EXAMPLES / "background.png"       # any image stands for a face with the demo adapter
OTHER = EXAMPLES / "mannequin_cutout.png"


def with_mask(ui) -> None:
    ui.load_mannequin(MANNEQUIN)
    ui.mask_mode("upload")
    ui.by("mask-input").set_input_files(str(EXAMPLES / "clothes_mask.png"))
    expect(ui.by("mask-undo")).to_be_enabled()
    ui.by("width").fill("64")
    ui.by("height").fill("96")


def test_an_uploaded_face_reference_is_sent_as_an_ip_adapter_unit(ui):
    expect(ui.by("face-section")).to_be_visible()   # the deployment serves demo-ip-adapter
    with_mask(ui)
    ui.by("face-source").select_option("upload")
    ui.generate()
    expect(ui.by("error-face")).to_contain_text("Choose a face image")
    assert not ui.record.sent("GenerateFromMannequin")
    ui.by("face-input").set_input_files(str(FACE))
    ui.wait_js("document.querySelector('[data-testid=face-preview]').complete"
               " && !document.querySelector('[data-testid=face-preview]').hidden")
    ui.set_range("face-weight", 0.7)
    ui.generate()
    ui.wait_result()
    ui.snap("face-result")
    (body,) = ui.record.sent("GenerateFromMannequin")
    unit = body["ControlNetList"][-1]
    assert unit == {"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-ip-adapter",
                                                      "InferenceParams": {"ControlWeight": 0.7}}}
    assert base64.b64decode(body["ImageAndMaskList"][2]) == FACE.read_bytes(), "the face is sent as chosen"
    expect(ui.by("error-face")).to_be_hidden()


def test_a_persona_is_created_used_and_deleted_in_the_page(ui):
    ui.by("personas").locator("summary").click()
    for item in ui.by("persona-item").all():          # an earlier run's personas of this key
        item.get_by_test_id("persona-delete").click()
    expect(ui.by("persona-item")).to_have_count(0)
    expect(ui.by("persona-empty")).to_be_visible()
    ui.by("persona-files").set_input_files([str(FACE), str(OTHER)])
    ui.by("persona-create").click()                    # no name
    expect(ui.by("error-personas")).to_contain_text("Params [Name] not available")
    ui.by("persona-name").fill("Mira")
    ui.by("persona-create").click()
    expect(ui.by("persona-item")).to_have_count(1)
    expect(ui.by("persona-item")).to_contain_text("Mira")
    expect(ui.by("persona-item")).to_contain_text("2 image(s)")
    code = ui.by("persona-item").get_attribute("data-code")
    (create,) = [b for b in ui.record.sent("CreatePersona") if b.get("Name") == "Mira"]
    assert [base64.b64decode(i) for i in create["ImageList"]] == [FACE.read_bytes(), OTHER.read_bytes()]

    with_mask(ui)
    ui.by("face-source").select_option("persona")
    assert ui.by("face-persona").input_value() == code
    ui.generate()
    ui.wait_result()
    ui.snap("persona-result")
    (body,) = ui.record.sent("GenerateFromMannequin")
    assert body["ControlNetList"][-1]["PersonaCode"] == code and "ImageIndex" not in body["ControlNetList"][-1]
    assert len(body["ImageAndMaskList"]) == 2

    ui.by("persona-delete").click()
    expect(ui.by("persona-item")).to_have_count(0)
    assert ui.record.sent("DeletePersona")[-1]["PersonaCode"] == code
    ui.by("face-source").select_option("persona")
    ui.generate()
    expect(ui.by("error-face")).to_contain_text("Create a persona first")
