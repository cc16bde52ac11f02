"""FaceID units in real generate jobs (run_job, the real Redis task store, the real MTCNN detector, the demo FaceID
file, ArcFace-shaped ONNX model and CLIP encoder loaded through the production loaders): the face steers the
image, the same face and seed give the same image; the LoRA part is gone after the job (the worker then draws
bit-identically to a fresh one); a reference without a face ends the task in Error 230 naming the unit's
ImageIndex; an IP-Adapter entry naming a FaceID file is a model error."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app.contract.jobs import ControlUnitRef, JobMessage
from app.contract.limits import NO_FACE_MESSAGE
from app.contract.settings import Settings
from support.api import example_inputs, stored
from support.faces import photo
from support.personas import make_persona
from workers.demo.adapters import ensure_demo_clip_vision
from workers.demo.faceid import ensure_demo_arcface, ensure_demo_faceid
from workers.demo.model import ensure_demo_model
from workers.jobs.generate import run_job
from workers.runtime import WorkerRuntime

STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    main = ensure_demo_model(d / "main")
    return {"main": main, "faceid": ensure_demo_faceid(d / "faceid", base_model=main),
            "clip": ensure_demo_clip_vision(d / "clip"), "arcface": ensure_demo_arcface(d / "arcface")}


def runtime(tmp_path: Path, redis_url: str, folders: dict[str, Path], name: str) -> WorkerRuntime:
    faceid = {"ModelType": "ControlModel", "source": {"file": str(folders["faceid"])},
              "image_encoder": {"path": str(folders["clip"])}}
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(folders["main"])},
               "defaults": {"steps": STEPS}},
              {"ModelCode": "faceid", "Name": "faceid", "adapter": "ip-adapter-faceid",
               "face_model": {"file": str(folders["arcface"])}, **faceid},
              {"ModelCode": "as-ip", "Name": "as-ip", "adapter": "ip-adapter", **faceid}]
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    return WorkerRuntime.build(Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url,
                                        device="cpu", progress_interval_s=0))


@pytest.fixture()
def rt(tmp_path, redis_url, folders) -> WorkerRuntime:
    return runtime(tmp_path, redis_url, folders, "a")


def face_unit(rt: WorkerRuntime, image: Image.Image, model: str = "faceid", **kw) -> ControlUnitRef:
    fields = dict(preprocessor=None, resolution=512, control_model=model, control_weight=1.0, starting_step=0.0,
                  ending_step=1.0)
    return ControlUnitRef(image=stored(rt, image), **{**fields, **kw})


def generate(rt: WorkerRuntime, ok: bool = True, **job):
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-faceid", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=64, height=96, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask), **job).to_wire())
    rec = rt.store.get(uid)
    if not ok:
        return rec, []
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    return rec, [np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, n))).convert("RGB"))
                 for n in rec.images]


def test_a_face_steers_the_image_the_same_face_gives_the_same_another_another(rt):
    _, [plain] = generate(rt)
    _, [one] = generate(rt, control_units=[face_unit(rt, photo("biden.jpg"))])
    _, [again] = generate(rt, control_units=[face_unit(rt, photo("biden.jpg"))])
    _, [other] = generate(rt, control_units=[face_unit(rt, photo("astronaut.jpg"))])
    _, [zero] = generate(rt, control_units=[face_unit(rt, photo("biden.jpg"), control_weight=0.0)])
    assert not np.array_equal(one, plain) and np.array_equal(again, one)
    assert not np.array_equal(other, one) and np.array_equal(zero, plain)  # weight 0: no unit, no LoRA part
    stats = rt.models.cache.stats
    assert stats.kind("face-model").loads == 1 and stats.kind("ip-adapter").loads == 1
    assert rt.embeds.hits >= 2  # the same photo's face embedded once


def test_a_worker_that_ran_a_faceid_unit_draws_bit_identically_to_a_fresh_one(tmp_path, redis_url, folders):
    used = runtime(tmp_path, redis_url, folders, "used")
    generate(used, control_units=[face_unit(used, photo("biden.jpg"))])
    _, [after] = generate(used)
    fresh = runtime(tmp_path, redis_url, folders, "fresh")
    _, [never] = generate(fresh)
    assert np.array_equal(after, never)


def test_a_reference_without_a_face_is_error_230_naming_the_unit_s_image_index(rt):
    noface = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    rec, _ = generate(rt, ok=False, control_units=[face_unit(rt, photo("biden.jpg")), face_unit(rt, noface)])
    assert rec.status == "Error" and rec.error_code == 230
    assert rec.error_message == f"ControlNetList[1].ImageIndex: {NO_FACE_MESSAGE}"
    _, [plain] = generate(rt)  # the pipeline is untouched
    assert plain.shape == (96, 64, 3)


def test_an_ip_adapter_entry_naming_a_faceid_file_is_a_model_error(rt):
    rec, _ = generate(rt, ok=False, control_units=[face_unit(rt, photo("biden.jpg"), model="as-ip")])
    assert rec.status == "Error" and rec.error_code == 240 and "[as-ip]" in rec.error_message


def test_two_units_of_one_faceid_adapter_patch_its_lora_part_once(rt, monkeypatch):
    import workers.jobs.generate as generate_module

    seen = []
    original = generate_module.patched

    def spy(pipe, loras):
        seen.append([code for code, _, _ in loras])
        return original(pipe, loras)

    monkeypatch.setattr(generate_module, "patched", spy)
    generate(rt, control_units=[face_unit(rt, photo("biden.jpg")), face_unit(rt, photo("astronaut.jpg"))])
    assert seen == [["faceid"]]
    generate(rt, control_units=[face_unit(rt, photo("biden.jpg"), starting_step=0.5, ending_step=0.5)])
    assert seen == [["faceid"]]  # an empty window: no LoRA part either


def test_a_persona_on_a_faceid_unit_reads_its_faces_once_and_a_faceless_image_is_230(tmp_path, redis_url, folders,
                                                                                    rt):
    face = photo("biden.jpg")
    code = make_persona(rt, face, owner="pk-faceid")
    persona = face_unit(rt, face).model_copy(update={"image": None, "persona": code})
    _, [by_persona] = generate(rt, control_units=[persona])
    _, [by_image] = generate(rt, control_units=[face_unit(rt, face)])
    assert np.array_equal(by_persona, by_image)          # one image: exactly its face's embedding
    fresh = runtime(tmp_path, redis_url, folders, "fresh")  # another worker reads the stored embeddings
    _, [again] = generate(fresh, control_units=[persona])
    assert np.array_equal(again, by_image)
    faceless = make_persona(rt, Image.new("RGB", (64, 64), (128, 128, 128)), owner="pk-faceid")
    rec, _ = generate(rt, ok=False, control_units=[persona.model_copy(update={"persona": faceless})])
    assert (rec.status, rec.error_code) == ("Error", 230)
    assert rec.error_message == (f"ControlNetList[0].PersonaCode: an image of Persona [{faceless}]:"
                                 f" {NO_FACE_MESSAGE}")
