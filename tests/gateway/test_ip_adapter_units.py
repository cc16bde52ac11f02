"""IP-Adapter units in ControlNetList at the gateway: listed by ListControlNets as PICPIK lists ip-adapter_sd15
(no pre-processor), queued with their reference image, and bad units refused before anything is queued."""
from __future__ import annotations

from support.api import example_inputs, generate_body, png_b64, signed


def ip_unit(**over) -> dict:
    return {"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-ip-adapter",
                                              "InferenceParams": {"ControlWeight": 0.6, "EndingStep": 0.8}}, **over}


def with_reference(**overrides) -> dict:
    body = generate_body(**overrides)
    man, _ = example_inputs()
    body["ImageAndMaskList"] = [*body["ImageAndMaskList"], png_b64(man.rotate(90))]
    return body


def test_list_control_nets_lists_the_ip_adapters_with_their_family(api):
    r = api(signed({"Action": "ListControlNets"}))
    cms = {m["ModelCode"]: m for m in r["ControlModels"]}
    assert cms["demo-ip-adapter"] == {"ModelCode": "demo-ip-adapter", "Name": "Demo IP-Adapter (tiny, random weights)",
                                      "Adapter": "ip-adapter", "Family": "sd15",
                                      "InferenceParams": {"ControlWeight": 1.0, "StartingStep": 0.0, "EndingStep": 1.0}}
    assert cms["ip-adapter-xl"]["Family"] == "sdxl"
    assert "Adapter" not in cms["demo-controlnet"]


def test_an_ip_adapter_unit_is_queued_with_its_reference_and_params_beside_a_controlnet(api):
    canny = {"PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "demo-controlnet"}}
    out = api(signed(with_reference(ControlNetList=[ip_unit(), canny, ip_unit(ImageIndex=0)])))
    assert out["RetCode"] == 0, out


def test_a_preprocessor_on_an_ip_adapter_unit_is_230_naming_it(api):
    out = api(signed(with_reference(ControlNetList=[ip_unit(PreProcessor={"ModelCode": "canny"})])))
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [ControlNetList[0].PreProcessor] not available: must be left out")


def test_an_ip_adapter_of_the_other_family_is_240_naming_it(api):
    unit = ip_unit(ControlModel={"ModelCode": "ip-adapter-xl"})
    out = api(signed(with_reference(ControlNetList=[{"PreProcessor": {"ModelCode": "canny"},
                                                     "ControlModel": {"ModelCode": "demo-controlnet"}}, unit])))
    assert out["RetCode"] == 240
    assert out["Message"].startswith("Model [ip-adapter-xl] not exists for sd15 model demo-inpaint"), out


def test_an_image_index_out_of_range_is_230_naming_the_unit_s_field(api):
    out = api(signed(with_reference(ControlNet=[ip_unit(), ip_unit(ImageIndex=3)])))
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [ControlNet[1].ImageIndex] not available: must be between 0 and 2"), out


def test_more_than_three_units_of_any_mix_are_refused(api):
    out = api(signed(with_reference(ControlNetList=[ip_unit()] * 4)))
    assert out["RetCode"] == 230 and "[ControlNetList]" in out["Message"]
