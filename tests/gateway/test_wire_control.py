"""The ControlNet extension of GenerateFromMannequin: units, their InferenceParams and ranges."""
from __future__ import annotations

import pytest

from app.contract.limits import MAX_CONTROL_UNITS
from app.errors import ApiError
from app.validation.generate import ControlUnit, parse_generate
from support.bodies import LIMITS, body


def unit(**over) -> dict:
    u = {"PreProcessor": {"ModelCode": "openpose", "InferenceParams": {"Resolution": 512}},
         "ControlModel": {"ModelCode": "cn-pose", "InferenceParams": {"ControlWeight": 0.8,
                                                                      "StartingStep": 0.1, "EndingStep": 0.9}}}
    u.update(over)
    return u


def parse(**top):
    return parse_generate(body(**top), **LIMITS)


def fails(field: str, **top) -> str:
    with pytest.raises(ApiError) as e:
        parse(**top)
    assert e.value.ret_code == 230 and f"[{field}]" in e.value.message, e.value.message
    return e.value.message


def test_absent_means_default_control_and_empty_means_none():
    assert parse().control_units is None
    assert parse(ControlNet=None).control_units is None
    assert parse(ControlNet=[]).control_units == []


def test_unit_parsed_with_mannequin_as_default_image():
    (u,) = parse(ControlNet=[unit()]).control_units
    assert u == ControlUnit(0, "openpose", 512, "cn-pose", 0.8, 0.1, 0.9)
    (u,) = parse(ControlNet=[unit(ImageIndex=1)]).control_units
    assert u.image_index == 1


def test_params_default_to_none_and_preprocessor_is_optional():
    (u,) = parse(ControlNet=[{"ControlModel": {"ModelCode": "cn"}}]).control_units
    assert u == ControlUnit(0, None, None, "cn", None, None, None)


@pytest.mark.parametrize("field, value", [
    ("ControlNet[0].PreProcessor.InferenceParams.Resolution", 63),
    ("ControlNet[0].PreProcessor.InferenceParams.Resolution", 2049),
    ("ControlNet[0].PreProcessor.InferenceParams.Resolution", 100),
])
def test_resolution_range_and_step(field, value):
    u = unit(PreProcessor={"ModelCode": "openpose", "InferenceParams": {"Resolution": value}})
    fails(field, ControlNet=[u])


@pytest.mark.parametrize("param, value", [("ControlWeight", -0.01), ("ControlWeight", 2.01),
                                          ("StartingStep", -0.1), ("EndingStep", 1.5)])
def test_control_model_ranges(param, value):
    u = unit(ControlModel={"ModelCode": "cn", "InferenceParams": {param: value}})
    fails(f"ControlNet[0].ControlModel.InferenceParams.{param}", ControlNet=[u])


def test_boundaries_accepted():
    u = unit(PreProcessor={"ModelCode": "p", "InferenceParams": {"Resolution": 2048}},
             ControlModel={"ModelCode": "cn", "InferenceParams": {"ControlWeight": 2, "StartingStep": 0,
                                                                  "EndingStep": 1}})
    (got,) = parse(ControlNet=[u]).control_units
    assert (got.resolution, got.control_weight, got.starting_step, got.ending_step) == (2048, 2.0, 0.0, 1.0)


def test_start_after_end_refused():
    u = unit(ControlModel={"ModelCode": "cn", "InferenceParams": {"StartingStep": 0.8, "EndingStep": 0.2}})
    fails("ControlNet[0].ControlModel.InferenceParams.StartingStep", ControlNet=[u])


def test_shape_errors():
    fails("ControlNet", ControlNet="openpose")
    fails("ControlNet", ControlNet=[unit()] * (MAX_CONTROL_UNITS + 1))
    fails("ControlNet[0]", ControlNet=[5])
    fails("ControlNet[0].ControlModel", ControlNet=[{"PreProcessor": {"ModelCode": "x"}}])
    fails("ControlNet[0].ControlModel.ModelCode", ControlNet=[{"ControlModel": {"ModelCode": ""}}])
    fails("ControlNet[1].ImageIndex", ControlNet=[unit(), unit(ImageIndex=2)])


# --- ControlNetList, PICPIK's name; ControlNet, the alias -------------------------------------------------


def test_control_net_list_is_the_name_and_control_net_its_alias():
    (by_name,) = parse(ControlNetList=[unit()]).control_units
    (by_alias,) = parse(ControlNet=[unit()]).control_units
    assert by_name == by_alias and by_name.control_model == "cn-pose" and by_name.resolution == 512
    assert parse(ControlNetList=[unit()]).control_units_field == "ControlNetList"
    assert parse(ControlNet=[unit()]).control_units_field == "ControlNet"
    assert parse(ControlNetList=[]).control_units == [] and parse().control_units is None


def test_both_names_at_once_are_refused_even_when_equal():
    message = fails("ControlNet", ControlNetList=[unit()], ControlNet=[unit()])
    assert "ControlNetList" in message
    fails("ControlNet", ControlNetList=[], ControlNet=[])


def test_control_net_list_errors_name_the_field_the_request_used():
    fails("ControlNetList", ControlNetList=[unit()] * (MAX_CONTROL_UNITS + 1))
    assert MAX_CONTROL_UNITS == 3  # PICPIK's limit
    fails("ControlNetList[0].ControlModel.InferenceParams.ControlWeight",
          ControlNetList=[unit(ControlModel={"ModelCode": "cn", "InferenceParams": {"ControlWeight": 3}})])
    fails("ControlNetList[1].ImageIndex", ControlNetList=[unit(), unit(ImageIndex=2)])
