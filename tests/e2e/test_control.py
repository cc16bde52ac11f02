"""Pose/edge control and prompt translation end to end through the API on the demo deployment."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import generate_body, signed

pytestmark = pytest.mark.slow


def _detail(stack, **overrides) -> dict:
    out = stack.post(signed(generate_body(Seed=33, **overrides)))
    assert out["RetCode"] == 0, out
    d = stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    return d


def _image(stack, **overrides) -> np.ndarray:
    r = httpx.get(_detail(stack, **overrides)["ImgList"][0], timeout=30)
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def canny(weight=None, start=None, end=None) -> dict:
    params = {k: v for k, v in (("ControlWeight", weight), ("StartingStep", start), ("EndingStep", end))
              if v is not None}
    return {"PreProcessor": {"ModelCode": "canny", "InferenceParams": {"Resolution": 128}},
            "ControlModel": {"ModelCode": "demo-controlnet", "InferenceParams": params}}


def test_list_control_nets(api):
    r = api(signed({"Action": "ListControlNets"}))
    assert r["RetCode"] == 0
    pre = {m["ModelCode"]: m for m in r["PreProcessors"]}
    cms = {m["ModelCode"]: m for m in r["ControlModels"]}
    assert {"demo-openpose", "canny", "demo-lineart"} <= set(pre)
    assert pre["demo-openpose"]["InferenceParams"] == {"Resolution": 512}
    assert cms["demo-controlnet"]["InferenceParams"] == {"ControlWeight": 1.0, "StartingStep": 0.0,
                                                         "EndingStep": 1.0}
    for entry in [*r["PreProcessors"], *r["ControlModels"]]:  # PICPIK's shape; an adapter says it is one
        adapters = ("demo-ip-adapter", "ip-adapter-xl", "demo-faceid")
        extra = {"Adapter", "Family"} if entry["ModelCode"] in adapters else set()
        assert set(entry) == {"ModelCode", "Name", "InferenceParams"} | extra, entry


def test_unknown_control_models_are_240(api):
    bad = canny()
    bad["ControlModel"]["ModelCode"] = "canny"  # a pre-processor is not a control model
    assert api(signed(generate_body(ControlNet=[bad])))["RetCode"] == 240
    bad = canny()
    bad["PreProcessor"]["ModelCode"] = "nope"
    assert api(signed(generate_body(ControlNet=[bad])))["RetCode"] == 240


def test_control_changes_the_image_and_weight_zero_is_no_control(live_stack):
    plain = _image(live_stack)
    assert not np.array_equal(_image(live_stack, ControlNet=[canny()]), plain)
    assert np.array_equal(_image(live_stack, ControlNet=[canny(weight=0)]), plain)
    assert np.array_equal(_image(live_stack, ControlNet=[canny(start=0.5, end=0.5)]), plain)


def test_starting_and_ending_step_bound_where_control_acts(live_stack):
    full = _image(live_stack, ControlNet=[canny()])
    late = _image(live_stack, ControlNet=[canny(start=0.5)])
    early = _image(live_stack, ControlNet=[canny(end=0.5)])
    plain = _image(live_stack)
    for part in (late, early):
        assert not np.array_equal(part, full) and not np.array_equal(part, plain)


def test_default_control_of_a_model_and_switching_it_off(live_stack):
    with_default = _image(live_stack, MainModel={"ModelCode": "demo-canny-default"})
    # the same unit given explicitly, with the models' default InferenceParams
    explicit = _image(live_stack, MainModel={"ModelCode": "demo-inpaint"},
                      ControlNet=[{"PreProcessor": {"ModelCode": "canny"},
                                   "ControlModel": {"ModelCode": "demo-controlnet"}}])
    off = _image(live_stack, MainModel={"ModelCode": "demo-canny-default"}, ControlNet=[])
    plain = _image(live_stack)
    assert not np.array_equal(with_default, plain)
    assert np.array_equal(with_default, explicit), "the default unit is the configured one"
    assert np.array_equal(off, plain), "ControlNet: [] switches the default control off"


def test_openpose_default_control_of_the_demo_deployment(live_stack):
    posed = _image(live_stack, MainModel={"ModelCode": "demo-inpaint-posed"})
    assert not np.array_equal(posed, _image(live_stack, MainModel={"ModelCode": "demo-inpaint-posed"},
                                            ControlNet=[]))


def test_two_units_at_once(live_stack):
    one = _image(live_stack, ControlNet=[canny()])
    two = _image(live_stack, ControlNet=[canny(), {**canny(weight=0.5), "PreProcessor": None}])
    zero = _image(live_stack, ControlNet=[canny(), {**canny(weight=0), "PreProcessor": None}])
    assert not np.array_equal(two, one), "the second unit (the raw image as its map) acts too"
    assert np.array_equal(zero, one), "a second unit of weight 0 changes nothing"


def test_prompts_are_translated_and_english_untouched(live_stack):
    english = _image(live_stack, PositivePrompts=["girl, smile, red dress"])
    d = _detail(live_stack, PositivePrompts=["chica, sonrisa, vestido rojo"])
    spanish = np.array(Image.open(io.BytesIO(httpx.get(d["ImgList"][0]).content)).convert("RGB")).astype(int)
    assert np.array_equal(spanish, english), "the Spanish prompt was translated to the English one"
    assert any("translated" in n for n in d["Notes"]), d["Notes"]
    untranslated = _image(live_stack, PositivePrompts=["chica, sonrisa, vestido rojo"], TranslatePrompts=False)
    assert not np.array_equal(untranslated, english)
    notes = _detail(live_stack, PositivePrompts=["girl, smile"])["Notes"]
    assert not any("translat" in n for n in notes) and any(n.startswith("drawn at ") for n in notes), notes
