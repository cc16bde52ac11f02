"""IP-Adapter units in real generate jobs (run_job, the real Redis task store, tiny demo models loaded through the
production loaders): in both passes and every tile, beside a ControlNet; one cached copy of each adapter and
encoder, the reference's embeddings cached by its content; gone after the job (the next job of the worker is
bit-identical to a fresh worker's); an adapter that does not fit the Main model is a model error naming it."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from app.contract.jobs import ControlUnitRef, JobMessage
from app.contract.settings import Settings
from support.api import example_inputs, stored
from workers.demo.adapters import ensure_demo_clip_vision, ensure_demo_ip_adapter
from workers.demo.control import ensure_demo_controlnet
from workers.demo.model import ensure_demo_model
from workers.faces.detect import Face
from workers.inference.passes import plan_passes
from workers.jobs.generate import run_job
from workers.models.kinds import Loaders
from workers.runtime import WorkerRuntime

STEPS = 4
NATIVE = (64, 96)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    main = ensure_demo_model(d / "main")
    wide = d / "wide-ip.safetensors"  # an adapter of another width (SD 1.5's real 768): does not fit the demo UNet
    from safetensors.torch import save_file

    state = {"image_proj.proj.weight": torch.zeros(4 * 768, 16), "image_proj.proj.bias": torch.zeros(4 * 768),
             "image_proj.norm.weight": torch.ones(768), "image_proj.norm.bias": torch.zeros(768)}
    for n in (1, 3, 5, 7):
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{n}.{part}.weight"] = torch.zeros(64, 768)
    save_file(state, str(wide))
    return {"main": main, "cn": ensure_demo_controlnet(d / "cn", seed=0, base_model=main),
            "ip": ensure_demo_ip_adapter(d / "ip", base_model=main), "clip": ensure_demo_clip_vision(d / "clip"),
            "wide": wide}


def runtime(tmp_path: Path, redis_url: str, folders: dict[str, Path], name: str, detector=None) -> WorkerRuntime:
    encoder = {"path": str(folders["clip"])}
    faces = {"faces": {"refine": True}} if detector is not None else {}
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(folders["main"])},
               "defaults": {"steps": STEPS}, "native": {"width": NATIVE[0], "height": NATIVE[1]}, **faces},
              {"ModelCode": "cn", "Name": "cn", "ModelType": "ControlModel", "source": {"path": str(folders["cn"])}},
              {"ModelCode": "ip", "Name": "ip", "ModelType": "ControlModel", "adapter": "ip-adapter",
               "source": {"file": str(folders["ip"])}, "image_encoder": encoder},
              {"ModelCode": "wide", "Name": "wide", "ModelType": "ControlModel", "adapter": "ip-adapter",
               "source": {"file": str(folders["wide"])}, "image_encoder": encoder}]
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url, device="cpu",
                        progress_interval_s=0)
    if detector is None:
        return WorkerRuntime.build(settings)
    return WorkerRuntime.build(settings, loaders=Loaders(face_detector=lambda device: detector))


@pytest.fixture()
def rt(tmp_path, redis_url, folders) -> WorkerRuntime:
    return runtime(tmp_path, redis_url, folders, "a")


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """Every real pipeline call: its size and how many IP-Adapter embeddings and control maps it was given."""
    seen = []
    for cls in (StableDiffusionInpaintPipeline, StableDiffusionControlNetInpaintPipeline):
        original = cls.__call__

        def spy(self, *args, _original=original, **kwargs):
            control = kwargs.get("control_image")
            seen.append({"size": (kwargs["width"], kwargs["height"]),
                         "ip": len(kwargs.get("ip_adapter_image_embeds") or []),
                         "control": 0 if control is None else len(control) if isinstance(control, list) else 1})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    return seen


def reference(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8))


def ip_unit(rt: WorkerRuntime, seed: int = 1, model: str = "ip", **kw) -> ControlUnitRef:
    fields = dict(preprocessor=None, resolution=512, control_model=model, control_weight=1.0, starting_step=0.0,
                  ending_step=1.0)
    return ControlUnitRef(image=stored(rt, reference(seed)), **{**fields, **kw})


def cn_unit(rt: WorkerRuntime) -> ControlUnitRef:
    man, _ = example_inputs()
    return ControlUnitRef(image=stored(rt, man), preprocessor=None, resolution=512, control_model="cn",
                          control_weight=1.0, starting_step=0.0, ending_step=1.0)


def generate(rt: WorkerRuntime, width: int = 64, height: int = 96, ok: bool = True, **job):
    man, mask = example_inputs()
    uid, _ = rt.store.create("pk-ip", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=width, height=height, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask), **job).to_wire())
    rec = rt.store.get(uid)
    if not ok:
        return rec, []
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    return rec, [np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, n))).convert("RGB"))
                 for n in rec.images]


def test_units_apply_in_both_passes_and_every_tile_beside_a_controlnet(rt, calls):
    generate(rt, 128, 192, control_units=[ip_unit(rt, 1), cn_unit(rt), ip_unit(rt, 2, control_weight=0.5)])
    assert [(c["size"], c["ip"], c["control"]) for c in calls] == [((64, 96), 2, 1), ((128, 192), 2, 1)]
    calls.clear()
    generate(rt, 256, 384, control_units=[ip_unit(rt, 1)])
    tiles = plan_passes(256, 384, NATIVE, 0.35, STEPS).tiles
    assert [(c["size"], c["ip"], c["control"]) for c in calls] == [((64, 96), 1, 0)] + [
        ((x1 - x0, y1 - y0), 1, 0) for x0, y0, x1, y1 in tiles]


def test_a_reference_changes_the_job_s_image_and_the_same_reference_gives_the_same(rt):
    _, plain = generate(rt)
    _, one = generate(rt, control_units=[ip_unit(rt, 1)])
    _, again = generate(rt, control_units=[ip_unit(rt, 1)])
    _, other = generate(rt, control_units=[ip_unit(rt, 2)])
    _, zero = generate(rt, control_units=[ip_unit(rt, 1, control_weight=0.0)])
    assert not np.array_equal(one[0], plain[0]) and np.array_equal(again[0], one[0])
    assert not np.array_equal(other[0], one[0]) and np.array_equal(zero[0], plain[0])


def test_one_cached_copy_of_each_adapter_and_encoder_and_embeddings_by_content(rt):
    generate(rt, control_units=[ip_unit(rt, 1), ip_unit(rt, 2)])
    stats = rt.models.cache.stats
    loads = {kind: stats.kind(kind).loads for kind in ("ip-adapter", "image-encoder")}
    assert loads == {"ip-adapter": 1, "image-encoder": 1}  # two units of one adapter share it
    misses = rt.embeds.misses
    generate(rt, control_units=[ip_unit(rt, 1)])
    assert {kind: stats.kind(kind).loads for kind in loads} == loads
    assert rt.embeds.misses == misses and rt.embeds.hits >= 1


def test_a_worker_that_ran_units_draws_bit_identically_to_a_fresh_one(tmp_path, redis_url, folders):
    used = runtime(tmp_path, redis_url, folders, "used")
    generate(used, 128, 192, control_units=[ip_unit(used, 1), cn_unit(used), ip_unit(used, 2, starting_step=0.5)])
    _, after = generate(used, 128, 192)
    fresh = runtime(tmp_path, redis_url, folders, "fresh")
    _, never = generate(fresh, 128, 192)
    assert np.array_equal(after[0], never[0])


def test_an_adapter_that_does_not_fit_the_main_model_fails_the_task_naming_it(rt):
    rec, _ = generate(rt, ok=False, control_units=[ip_unit(rt, 1, model="wide")])
    assert rec.status == "Error" and rec.error_code == 240
    assert rec.error_message.startswith("Model [wide] could not be applied") and "768" in rec.error_message
    _, plain = generate(rt)  # and the pipeline is untouched
    assert plain


class OneFace:
    """A stand-in face detector (the demo model draws noise, where no detector finds a face): one face, always."""

    def detect(self, image, min_score: float = 0.9) -> list[Face]:
        return [Face(box=(16.0, 10.0, 40.0, 34.0), score=0.99, landmarks=((28.0, 20.0),) * 5)]  # 24 px: redrawn


def test_the_faces_redrawn_after_the_passes_see_the_units_too(tmp_path, redis_url, folders, calls):
    rt = runtime(tmp_path, redis_url, folders, "faces", detector=OneFace())
    rec, [with_ref] = generate(rt, control_units=[ip_unit(rt, 1)])
    assert [c["ip"] for c in calls] == [1, 1] and "refined 1 face(s)" in rec.notes, rec.notes  # the pass, the face
    _, [again] = generate(rt, control_units=[ip_unit(rt, 1)])
    _, [plain] = generate(rt)
    assert np.array_equal(again, with_ref) and not np.array_equal(plain, with_ref)
    assert [c["ip"] for c in calls[4:]] == [0, 0]


def test_a_compiled_unet_runs_eagerly_for_a_job_with_units_and_the_notes_say_so(rt):
    from workers.adapters.ip_adapter import COMPILE_OFF_NOTE

    plain_rec, _ = generate(rt)
    unet = next(e.obj for e in rt.models.cache._entries.values() if e.kind == "pipeline").unet
    unet._compiled_call_impl = compiled = unet._call_impl  # a stand-in for torch.compile's wrapper
    try:
        rec, _ = generate(rt, control_units=[ip_unit(rt, 1)])
        assert COMPILE_OFF_NOTE in rec.notes and COMPILE_OFF_NOTE not in plain_rec.notes
        assert unet._compiled_call_impl is compiled
        rec, _ = generate(rt)
        assert COMPILE_OFF_NOTE not in rec.notes
    finally:
        unet._compiled_call_impl = None
