"""A Main model's ``faces:`` in models_config (app/contract/registry.py ``FaceOptions``; models_config/README.md
"Faces"): the defaults, the sizes a generation redraws, what is refused naming the field, and the shipped demo
models, whose noise has no face to refine."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.contract.limits import DEFAULT_FACE_MIN_SCORE, DEFAULT_FACE_STRENGTH, FACE_DETECT_MIN_PX, ModelType
from app.contract.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def model(code: str = "m", **fields) -> dict:
    return {"ModelCode": code, "Name": code, "ModelType": "Main", "source": {"demo": "inpaint"}, **fields}


def registry_of(*models: dict) -> Registry:
    return Registry.from_dict({"models": list(models)}, Path("/deploy"), origin="models.yaml")


def test_the_faces_of_a_main_model_are_refined_by_default():
    reg = registry_of(model("sd15"), model("xl", family="sdxl", source={"path": "xl"}),
                      model("own", native={"width": 256, "height": 384}),
                      model("set", faces={"refine": False, "strength": 0.6, "min_size": 32, "max_size": 400,
                                          "min_score": 0.95, "prompt": "detailed face"}))
    faces = reg.get("sd15").faces
    assert (faces.refine, faces.strength, faces.min_size, faces.max_size, faces.min_score, faces.prompt) == (
        True, DEFAULT_FACE_STRENGTH, FACE_DETECT_MIN_PX, None, DEFAULT_FACE_MIN_SCORE, "")
    assert (DEFAULT_FACE_STRENGTH, FACE_DETECT_MIN_PX, DEFAULT_FACE_MIN_SCORE) == (0.4, 20, 0.9)
    # a generation redraws faces up to half the native size's shorter side, unless max_size says otherwise
    assert reg.get("sd15").face_sizes == (20, 256) and reg.get("xl").face_sizes == (20, 512)
    assert reg.get("own").face_sizes == (20, 128)
    got = reg.get("set")
    assert got.face_sizes == (32, 400) and not got.faces.refine and got.faces.prompt == "detailed face"


@pytest.mark.parametrize(("fields", "message"), [
    ({"faces": {"strength": 1.2}}, r"faces.strength: Input should be less than or equal to 1"),
    ({"faces": {"min_size": 10}}, r"faces.min_size: Input should be greater than or equal to 20"),
    ({"faces": {"min_size": 64, "max_size": 32}}, r"faces: max_size 32 is below min_size 64"),
    ({"faces": {"min_score": 0.2}}, r"faces.min_score: Input should be greater than or equal to 0.5"),
    ({"faces": {"refine": "sometimes"}}, r"faces.refine: Input should be a valid boolean"),
    ({"faces": {"strenght": 0.5}}, r"faces.strenght: Extra inputs are not permitted"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors"}, "faces": {"refine": False}},
     r"`faces:` is for Main models only"),
])
def test_bad_faces_options_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[0\] \(ModelCode 'bad'\): .*" + message):
        registry_of(model("bad", **fields))


def test_the_shipped_demo_models_refine_no_face():
    """Their images are noise: the detector would only add its time to every demo job (and to make bench)."""
    registry = Registry.from_file(ROOT / "models_config" / "models.yaml")
    mains = registry.entries_of(ModelType.MAIN)
    assert mains and all(not e.faces.refine for e in mains)
