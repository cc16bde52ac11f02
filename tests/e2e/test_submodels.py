"""Submodels end to end through the API on the demo deployment (issue: LoRA, embeddings,
hypernetworks applied per job and always undone)."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from support.api import generate_body, signed

pytestmark = pytest.mark.slow


def _image(stack, **overrides) -> np.ndarray:
    out = stack.post(signed(generate_body(Seed=21, **overrides)))
    assert out["RetCode"] == 0, out
    d = stack.wait(out["TaskUID"])
    assert d["Status"] == "Finished", d
    r = httpx.get(d["ImgList"][0], timeout=30)
    return np.array(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)


def lora(code: str, weight: float | None = None) -> dict:
    m = {"ModelCode": code}
    if weight is not None:
        m["InferenceParams"] = {"LoraWeight": weight}
    return m


def test_list_models_lists_submodels_with_type_and_trigger_words(api):
    models = {m["ModelCode"]: m for m in api(signed({"Action": "ListModels"}))["Models"]}
    assert models["demo-lora"]["ModelType"] == "LoRA"
    assert models["demo-lora"]["TriggerWordList"] == ["demo style"]
    assert models["demo-lora"]["InferenceParams"] == {"LoraWeight": 1.0}
    assert models["demo-embedding"]["ModelType"] == "Embedding"
    assert models["demo-hypernetwork"]["ModelType"] == "HyperNetwork"
    assert "demo-openpose" not in models and "demo-controlnet" not in models, "control models: ListControlNets"


def test_submodel_of_wrong_type_is_240(api):
    assert api(signed(generate_body(SubModelList=[{"ModelCode": "demo-controlnet"}])))["RetCode"] == 240
    assert api(signed(generate_body(MainModel={"ModelCode": "demo-lora"})))["RetCode"] == 240


def test_each_kind_changes_the_image_and_the_base_comes_back_exactly(live_stack):
    base = _image(live_stack)
    for sub in ("demo-lora", "demo-lora-peft", "demo-embedding", "demo-hypernetwork"):
        changed = _image(live_stack, SubModelList=[lora(sub)])
        assert not np.array_equal(changed, base), f"{sub} changed nothing"
    both = _image(live_stack, SubModelList=[lora("demo-lora", 0.7), lora("demo-lora-peft", -0.5),
                                            lora("demo-embedding"), lora("demo-hypernetwork")])
    assert not np.array_equal(both, base)
    assert np.array_equal(_image(live_stack), base), "a base job after submodel jobs gives the base image"


def test_a_submodel_at_weight_zero_contributes_nothing_trigger_words_included(live_stack):
    """demo-lora has the trigger word "demo style": at weight 0 it is left out, word and all."""
    base = _image(live_stack)
    assert np.array_equal(_image(live_stack, SubModelList=[lora("demo-lora", 0)]), base)
    assert np.array_equal(_image(live_stack, SubModelList=[lora("demo-hypernetwork", 0)]), base)
    with_word = _image(live_stack, PositivePrompts=["demo style", "a woman", "studio photo"])
    assert not np.array_equal(with_word, base)  # the word alone would have changed the image


def test_alternating_loras_give_the_right_images_in_order(live_stack):
    a1 = _image(live_stack, SubModelList=[lora("demo-lora-peft", 1.0)])
    b = _image(live_stack, SubModelList=[lora("demo-lora-peft", -1.0)])
    a2 = _image(live_stack, SubModelList=[lora("demo-lora-peft", 1.0)])
    assert np.array_equal(a1, a2) and not np.array_equal(a1, b)


def test_corrupt_submodel_ends_in_error_and_worker_goes_on(live_stack):
    out = live_stack.post(signed(generate_body(SubModelList=[{"ModelCode": "corrupt-lora"}])))
    d = live_stack.wait(out["TaskUID"])
    assert d["Status"] == "Error" and d["ErrorCode"] == 240 and "corrupt-lora" in d["ErrorMessage"], d
    assert "Traceback" not in d["ErrorMessage"]
    assert _image(live_stack).shape == (64, 64, 3)
