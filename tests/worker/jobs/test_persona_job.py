"""Persona units in real generate jobs (run_job, the real Redis, tiny demo models through the production loaders):
a persona of one image draws exactly what that image draws through ImageIndex; a persona of several is the mean of
their embeddings, computed once (the encoder runs once per image, then never again: not by the same worker, nor by
a fresh one, which reads the stored embeddings); a deleted persona is Error 240 even with its embeddings cached."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from app.contract.jobs import ControlUnitRef, JobMessage
from app.contract.personas import PersonaStore
from app.contract.settings import Settings
from support.api import example_inputs, stored
from support.personas import make_persona
from workers.adapters.encoder import encode_reference, load_image_encoder
from workers.demo.adapters import ensure_demo_clip_vision, ensure_demo_ip_adapter
from workers.demo.model import ensure_demo_model
from workers.jobs.generate import run_job
from workers.lifecycle.errors import JobError
from workers.personas import embeds_name, mean_embeds, persona_embeds, persona_images
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    main = ensure_demo_model(d / "main")
    return {"main": main, "ip": ensure_demo_ip_adapter(d / "ip", base_model=main),
            "clip": ensure_demo_clip_vision(d / "clip")}


def runtime(tmp_path: Path, redis_url: str, folders: dict[str, Path]) -> WorkerRuntime:
    models = [{"ModelCode": "main", "Name": "main", "ModelType": "Main", "source": {"path": str(folders["main"])},
               "defaults": {"steps": 3}, "native": {"width": 64, "height": 64}},
              {"ModelCode": "ip", "Name": "ip", "ModelType": "ControlModel", "adapter": "ip-adapter",
               "source": {"file": str(folders["ip"])}, "image_encoder": {"path": str(folders["clip"])}}]
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models}))
    return WorkerRuntime.build(Settings(data_dir=tmp_path / "data", models_config=config, redis_url=redis_url,
                                        device="cpu", progress_interval_s=0))


@pytest.fixture()
def rt(tmp_path, redis_url, folders) -> WorkerRuntime:
    return runtime(tmp_path, redis_url, folders)


@pytest.fixture()
def encoder_calls(monkeypatch) -> list[int]:
    """Every forward of a CLIP vision encoder (the images it was given)."""
    seen: list[int] = []
    original = CLIPVisionModelWithProjection.forward

    def spy(self, pixel_values=None, *args, **kwargs):
        seen.append(int(pixel_values.shape[0]))
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(CLIPVisionModelWithProjection, "forward", spy)
    return seen


def reference(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8))


def unit(**kw) -> ControlUnitRef:
    fields = dict(image=None, preprocessor=None, resolution=512, control_model="ip", control_weight=1.0,
                  starting_step=0.0, ending_step=1.0)
    return ControlUnitRef(**{**fields, **kw})


def generate(rt: WorkerRuntime, u: ControlUnitRef, ok: bool = True):
    man, mask = example_inputs(64, 64)
    uid, _ = rt.store.create("pk-persona", None, "GenerateFromMannequin", 7, 0)
    run_job(rt, JobMessage(task_uid=uid, main_model="main", seed=7, width=64, height=64, batch_size=1,
                           mannequin_image=stored(rt, man), clothes_mask=stored(rt, mask),
                           control_units=[u]).to_wire())
    rec = rt.store.get(uid)
    if not ok:
        return rec
    assert rec.status == "Finished", (rec.error_code, rec.error_message)
    return np.asarray(Image.open(io.BytesIO(rt.storage.read_result(uid, rec.images[0]))).convert("RGB"))


def test_a_persona_of_one_image_draws_exactly_what_the_image_draws(rt):
    code = make_persona(rt, reference(1))
    by_persona = generate(rt, unit(persona=code))
    rt.embeds = None  # nothing shared between the two: each computes its own embeddings
    by_index = generate(rt, unit(image=stored(rt, reference(1))))
    assert np.array_equal(by_persona, by_index)
    assert not np.array_equal(by_persona, generate(rt, unit(image=stored(rt, reference(2)))))


def test_several_images_are_averaged_and_encoded_once(tmp_path, redis_url, folders, rt, encoder_calls):
    code = make_persona(rt, reference(1), reference(2))
    first = generate(rt, unit(persona=code))
    assert sum(encoder_calls) == 2  # each image once (a plain adapter reads image_embeds: one forward each)
    again = generate(rt, unit(persona=code))
    assert sum(encoder_calls) == 2 and np.array_equal(first, again)  # the worker's LRU
    fresh = runtime(tmp_path / "other", redis_url, folders)
    fresh.storage = rt.storage  # the same deployment's storage, a new worker process
    assert np.array_equal(generate(fresh, unit(persona=code)), first)
    assert sum(encoder_calls) == 2  # the stored embeddings
    assert not np.array_equal(first, generate(rt, unit(image=stored(rt, reference(1)))))


@pytest.mark.parametrize("kind", ["image_embeds", "hidden_states"])   # plain adapters; plus / face ones
def test_persona_embeds_is_the_mean_of_the_images_embeddings(rt, folders, kind):
    encoder = load_image_encoder(folders["clip"], "cpu", torch.float32)
    code = make_persona(rt, reference(3), reference(4), reference(5))
    personas = PersonaStore(rt.store.r)
    got = persona_embeds(rt.storage, personas, encoder, code, kind)
    singles = [encode_reference(encoder, img, kind) for img in persona_images(rt.storage, personas, code)]
    want = mean_embeds(singles)
    assert got.kind == kind and got.positive.shape == singles[0].positive.shape
    assert torch.equal(got.positive, want.positive) and torch.equal(got.negative, want.negative)
    assert torch.allclose(got.positive, sum(s.positive for s in singles) / 3, atol=1e-6)
    assert not torch.allclose(got.positive, singles[0].positive)
    assert rt.storage.read_persona_embeds(code, embeds_name(encoder, kind)) is not None
    again = persona_embeds(rt.storage, personas, encoder, code, kind, owner="pk-persona")   # from storage
    assert torch.equal(again.positive, got.positive) and torch.equal(again.negative, got.negative)
    with pytest.raises(JobError) as e:   # another owner's: as if it did not exist
        persona_embeds(rt.storage, personas, encoder, code, kind, owner="pk-other")
    assert e.value.code == 240 and e.value.message == f"Persona [{code}] not exists"


def test_a_deleted_persona_is_error_240_even_with_its_embeddings_cached(rt, encoder_calls):
    code = make_persona(rt, reference(1))
    generate(rt, unit(persona=code))
    assert PersonaStore(rt.store.r).delete("pk-persona", code)
    assert rt.storage.delete_persona(code) == 2  # the image and the stored embeddings
    rec = generate(rt, unit(persona=code), ok=False)
    assert rec.status == "Error" and rec.error_code == 240 and rec.error_message == f"Persona [{code}] not exists"
