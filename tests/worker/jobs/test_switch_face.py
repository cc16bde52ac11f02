"""The SwitchFace job (workers/jobs/switch_face.py), in-process with a real WorkerRuntime against the real Redis task
store and storage, the real face detector, the tiny demo Main model, IP-Adapter and CLIP vision encoder through the
production loaders, on a real photo of two people: only the chosen face's region changes (the other face and every
pixel farther than the blend margin bit-exact), RawFaceIndex counts in reading order, a face index past the faces is
Error 230 naming it, the new face steers the result (another face: another image; the same: the same), alpha kept."""
from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from app.contract.jobs import RestoreFacesJobMessage, SwitchFaceJobMessage
from app.contract.limits import SWITCH_FACE_STRENGTH
from app.contract.personas import PersonaStore
from app.contract.settings import Settings
from support.api import stored
from support.faces import FACES, photo
from support.personas import make_persona
from workers.demo.adapters import ensure_demo_clip_vision, ensure_demo_ip_adapter
from workers.demo.model import ensure_demo_model
from workers.faces.detect import load_face_detector
from workers.faces.geometry import blend_margin, face_box
from workers.faces.redraw import SWITCH_PROMPT, face_steps
from workers.jobs.restore_faces import run_restore_faces_job
from workers.jobs.switch_face import run_switch_face_job
from workers.runtime import WorkerRuntime

STEPS = 8
NATIVE = (128, 128)


@pytest.fixture(scope="module")
def rt(tmp_path_factory, redis_url) -> WorkerRuntime:
    base = tmp_path_factory.mktemp("switch")
    main = ensure_demo_model(base / "main")
    encoder = {"path": str(ensure_demo_clip_vision(base / "clip"))}
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(main)},
               "defaults": {"steps": STEPS, "guidance_scale": 5.0}, "TriggerWordList": ["house style"],
               "native": {"width": NATIVE[0], "height": NATIVE[1]}, "faces": {"refine": False}},
              {"ModelCode": "ip", "Name": "ip", "ModelType": "ControlModel", "adapter": "ip-adapter",
               "source": {"file": str(ensure_demo_ip_adapter(base / "ip", base_model=main))},
               "image_encoder": encoder},
              {"ModelCode": "lora", "Name": "lora", "ModelType": "LoRA", "source": {"demo": "lora-kohya"}}]
    config = base / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=base / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    return WorkerRuntime.build(settings)


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real inpainting pipeline call: its prompt, strength and how many IP-Adapter embeddings it was given."""
    seen, original = [], StableDiffusionInpaintPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append({"prompt": kwargs["prompt"], "strength": kwargs["strength"],
                     "embeds": len(kwargs.get("ip_adapter_image_embeds") or [])})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionInpaintPipeline, "__call__", spy)
    return seen


def switch(rt: WorkerRuntime, image: Image.Image, new_face: Image.Image | None, index: int = 1, seed: int = 11,
           adapter: str = "ip", persona: str | None = None):
    uid, _ = rt.store.create("pk-switch", None, "SwitchFace", seed, 0)
    run_switch_face_job(rt, SwitchFaceJobMessage(task_uid=uid, image=stored(rt, image), face_index=index,
                                                 new_face=stored(rt, new_face) if new_face is not None else None,
                                                 persona=persona, main_model="main", adapter=adapter,
                                                 seed=seed).to_wire())
    rec = rt.store.get(uid)
    if rec.status != "Finished":
        return rec, None
    assert rec.images == ["0.png"] and rec.seed == seed
    return rec, Image.open(io.BytesIO(rt.storage.read_result(uid, rec.images[0])))


def near_face(image: Image.Image, index: int) -> np.ndarray:
    """The pixels within the blend margin (chessboard distance) of face ``index`` (1-based) the detector finds."""
    faces = load_face_detector("cpu").detect(image)
    face = faces[index - 1]
    near = np.zeros((image.height, image.width), dtype=bool)
    left, top, right, bottom = face_box(face.box, image.width, image.height)
    m = blend_margin(face.box)
    near[max(0, top - m):bottom + m, max(0, left - m):right + m] = True
    return near


@pytest.mark.parametrize("index", [1, 2])
def test_only_the_chosen_face_changes_in_reading_order(rt, calls, index):
    source = photo("two_people.jpg")
    rec, out = switch(rt, source, photo("biden.jpg"), index=index)
    assert rec.status == "Finished", rec.error_message
    assert (out.size, out.mode) == (source.size, "RGB") and f"switched face {index} of 2 with ip" in rec.notes
    before, after = np.asarray(source), np.asarray(out)
    changed = (before != after).any(axis=2)
    near, other = near_face(source, index), near_face(source, 3 - index)
    assert np.array_equal(after[~near], before[~near])  # bit-exact farther than the blend margin
    assert np.array_equal(after[other], before[other])  # the other face untouched
    assert changed[near].mean() > 0.5
    xs = np.nonzero(changed)[1]
    expected = FACES["two_people.jpg"][1][index - 1][0]  # the face's centre measured by eye: 1 left, 2 right
    assert abs(xs.mean() - expected) < 40
    per_face = face_steps(STEPS, SWITCH_FACE_STRENGTH)
    assert (rec.step, rec.total_steps) == (per_face, per_face)
    assert calls == [{"prompt": f"house style, {SWITCH_PROMPT}", "strength": SWITCH_FACE_STRENGTH, "embeds": 1}]


def test_a_face_index_past_the_faces_is_a_bad_input_naming_it(rt, calls):
    rec, _ = switch(rt, photo("two_people.jpg"), photo("biden.jpg"), index=3)
    assert (rec.status, rec.error_code) == ("Error", 230)
    assert rec.error_message == "RawFaceIndex 3: the image has 2 face(s)" and calls == []
    curtain = photo("two_people.jpg").crop((230, 0, 420, 376))  # the curtain between the two men: no face
    rec, _ = switch(rt, curtain, photo("biden.jpg"))
    assert (rec.status, rec.error_code, rec.error_message) == ("Error", 230, "RawFaceIndex 1: the image has 0 face(s)")


def test_the_new_face_steers_the_result_and_the_same_inputs_give_the_same_image(rt):
    source = photo("two_people.jpg")
    a, b = (np.asarray(switch(rt, source, photo("biden.jpg"), index=2)[1]) for _ in range(2))
    c = np.asarray(switch(rt, source, photo("astronaut.jpg"), index=2)[1])
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    near = near_face(source, 2)
    assert np.array_equal(a[~near], c[~near])  # both differ from the photo only near face 2


def test_an_rgba_photo_keeps_its_alpha_exactly(rt):
    source = photo("two_people.jpg").convert("RGBA")
    alpha = Image.linear_gradient("L").resize(source.size)
    source.putalpha(alpha)
    rec, out = switch(rt, source, photo("biden.jpg"))
    assert rec.status == "Finished", rec.error_message
    assert (out.size, out.mode) == (source.size, "RGBA")
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    near = near_face(source.convert("RGB"), 1)
    assert np.array_equal(np.asarray(out)[~near], np.asarray(source)[~near])


def test_a_model_that_is_no_ip_adapter_is_a_model_error(rt):
    rec, _ = switch(rt, photo("two_people.jpg"), photo("biden.jpg"), adapter="lora")
    assert (rec.status, rec.error_code, rec.error_message) == ("Error", 240, "Model [lora] not exists")


def test_the_pipeline_draws_as_before_after_a_switch(rt):
    """The adapter's unit is gone after the job: a RestoreFaces on the same worker draws the same image before and
    after a SwitchFace (the attention processors and the UNet's image projection restored)."""
    def restore() -> bytes:
        uid, _ = rt.store.create("pk-switch", None, "RestoreFaces", 3, 0)
        run_restore_faces_job(rt, RestoreFacesJobMessage(task_uid=uid, image=stored(rt, photo("biden.jpg")),
                                                         main_model="main", strength=0.5, seed=3).to_wire())
        assert rt.store.get(uid).status == "Finished"
        return rt.storage.read_result(uid, "0.png")

    before = restore()
    assert switch(rt, photo("two_people.jpg"), photo("biden.jpg"))[0].status == "Finished"
    assert restore() == before


def test_a_persona_of_the_new_face_switches_exactly_as_the_image_does(rt):
    source, face = photo("two_people.jpg"), photo("biden.jpg")
    code = make_persona(rt, face, owner="pk-switch")
    rec, by_persona = switch(rt, source, None, index=2, persona=code)
    assert rec.status == "Finished", rec.error_message
    _, by_image = switch(rt, source, face, index=2)
    assert np.array_equal(np.asarray(by_persona), np.asarray(by_image))
    PersonaStore(rt.store.r).delete("pk-switch", code)   # deleted while queued: Error 240, as a generation's unit
    rec, _ = switch(rt, source, None, index=2, persona=code)
    assert (rec.status, rec.error_code, rec.error_message) == ("Error", 240, f"Persona [{code}] not exists")
