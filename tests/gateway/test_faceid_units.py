"""FaceID units in ControlNetList at the gateway: listed by ListControlNets as an adapter (PICPIK lists
ip-adapter-faceid-plusv2_sd15 with no pre-processor), queued with their reference (whether it shows a face is the
worker's to find: tests/worker/jobs/test_faceid_job.py), a PreProcessor on one refused."""
from __future__ import annotations

from support.api import example_inputs, generate_body, png_b64, signed


def faceid_unit(**over) -> dict:
    return {"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-faceid", "InferenceParams": {"ControlWeight": 0.8}},
            **over}


def with_reference(**overrides) -> dict:
    body = generate_body(**overrides)
    man, _ = example_inputs()
    body["ImageAndMaskList"] = [*body["ImageAndMaskList"], png_b64(man)]
    return body


def test_list_control_nets_lists_the_faceid_adapter(api):
    r = api(signed({"Action": "ListControlNets"}))
    cms = {m["ModelCode"]: m for m in r["ControlModels"]}
    assert cms["demo-faceid"] == {"ModelCode": "demo-faceid", "Name": "Demo FaceID (tiny, random weights)",
                                  "Adapter": "ip-adapter-faceid", "Family": "sd15",
                                  "InferenceParams": {"ControlWeight": 1.0, "StartingStep": 0.0, "EndingStep": 1.0}}


def test_a_faceid_unit_is_queued_beside_an_ip_adapter_and_a_controlnet(api):
    canny = {"PreProcessor": {"ModelCode": "canny"}, "ControlModel": {"ModelCode": "demo-controlnet"}}
    ip = {"ImageIndex": 2, "ControlModel": {"ModelCode": "demo-ip-adapter"}}
    out = api(signed(with_reference(ControlNetList=[faceid_unit(), ip, canny])))
    assert out["RetCode"] == 0, out


def test_a_preprocessor_on_a_faceid_unit_is_230_and_an_index_out_of_range_too(api):
    out = api(signed(with_reference(ControlNetList=[faceid_unit(PreProcessor={"ModelCode": "canny"})])))
    assert out["RetCode"] == 230
    assert out["Message"].startswith("Params [ControlNetList[0].PreProcessor] not available: must be left out")
    assert "demo-faceid is an ip-adapter-faceid" in out["Message"]
    out = api(signed(with_reference(ControlNetList=[faceid_unit(ImageIndex=7)])))
    assert out["RetCode"] == 230 and "ControlNetList[0].ImageIndex" in out["Message"], out
