"""Mask jobs and the clothes mask of a generation without one, in-process against the real Redis task store
and the demo engines: what is stored, in which order, and what happens with an engine that cannot load."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from app.contract.jobs import JobMessage, MaskJobMessage
from app.contract.settings import get_settings
from app.contract.storage import AUTO_MASK_NAME
from support.masks import EXAMPLES, MANNEQUINS, iou, point_on, truth
from workers.jobs.generate import run_job
from workers.jobs.masks import run_mask_job
from workers.runtime import WorkerRuntime


@pytest.fixture(scope="module")
def runtime(atelier_env) -> WorkerRuntime:
    return WorkerRuntime.build(get_settings())


def stored(rt: WorkerRuntime, name: str) -> str:
    data = (EXAMPLES / name).read_bytes()
    return rt.storage.put_input(hashlib.sha256(data).hexdigest(), data)


def result(rt: WorkerRuntime, uid: str, name: str) -> Image.Image:
    img = Image.open(io.BytesIO(rt.storage.read_result(uid, name)))
    img.load()
    return img


def mask_task(rt: WorkerRuntime, action: str, engine: str, images: list[str], **fields):
    uid, _ = rt.store.create("pk-masks", None, action, 0, 0, results_per_image=1 if fields.get("only_mask") else 2)
    job = MaskJobMessage(task_uid=uid, action=action, engine=engine, images=[stored(rt, n) for n in images], **fields)
    run_mask_job(rt, job.to_wire())
    return rt.store.get(uid)


def test_remove_background_stores_the_cutout_then_the_mask(runtime):
    photo, figure, _ = MANNEQUINS["photo"]
    rec = mask_task(runtime, "RemoveBackground", "grabcut", [photo])
    assert rec.status == "Finished", rec.error_message
    assert rec.images == ["0.png", "1.png"] and rec.consumed_points == 1
    assert rec.seed == 0  # a mask task's Seed stays what the gateway created it with (docs/API.md)
    cut, mask = result(runtime, rec.uid, "0.png"), result(runtime, rec.uid, "1.png")
    assert cut.mode == "RGBA" and mask.mode == "L" and cut.size == mask.size == (320, 480)
    alpha, grey = np.asarray(cut.getchannel("A")), np.asarray(mask)
    assert np.array_equal(alpha, grey)
    assert iou(grey > 127, truth(figure)) >= 0.9
    source = np.asarray(Image.open(EXAMPLES / photo).convert("RGB"))
    assert np.array_equal(np.asarray(cut.convert("RGB"))[grey == 255], source[grey == 255])  # pixels kept


def test_batch_only_mask_in_input_order(runtime):
    rec = mask_task(runtime, "RemoveBackgroundsInBatch", "grabcut", ["photo_mannequin.jpg", "mannequin.png"],
                    only_mask=True, erode_size=0)
    assert rec.status == "Finished" and rec.images == ["0.png", "1.png"] and rec.consumed_points == 2
    assert result(runtime, rec.uid, "0.png").size == (320, 480)
    assert result(runtime, rec.uid, "1.png").size == (256, 384)
    assert set(np.unique(np.asarray(result(runtime, rec.uid, "1.png")))) <= {0, 255}  # ErodeSize 0: a hard edge


def test_extract_contents_with_a_point_on_the_dress(runtime):
    photo, figure, garment = MANNEQUINS["flat"]
    dress = truth(garment)
    rec = mask_task(runtime, "ExtractContents", "grabcut-points", [photo], include_points=[point_on(dress)],
                    only_mask=True)
    assert rec.status == "Finished", rec.error_message
    found = np.asarray(result(runtime, rec.uid, "0.png")) > 127
    assert iou(found, dress) >= 0.85 and not (found & ~truth(figure)).any()


@pytest.mark.parametrize("engine", ["demo-u2net", "demo-sam"])
def test_model_engines_run_through_the_cache(runtime, engine):
    action = "RemoveBackground" if engine == "demo-u2net" else "ExtractContents"
    fields = {"include_points": [(128, 200)]} if engine == "demo-sam" else {}
    rec = mask_task(runtime, action, engine, ["mannequin.png"], **fields)
    assert rec.status == "Finished", rec.error_message
    assert result(runtime, rec.uid, "1.png").size == (256, 384)
    assert engine in [label for label, _ in runtime.cache.cached()]


@pytest.mark.parametrize("action, engine", [("RemoveBackground", "corrupt-onnx"),
                                            ("ExtractContents", "corrupt-sam")])
def test_a_corrupt_engine_ends_the_task_in_error_and_the_worker_goes_on(runtime, action, engine):
    fields = {"include_points": [(10, 10)]} if action == "ExtractContents" else {}
    rec = mask_task(runtime, action, engine, ["mannequin.png"], **fields)
    assert rec.status == "Error" and rec.error_code == 240
    assert rec.error_message == f"Model [{engine}] could not be loaded"
    assert runtime.cache.held() == []
    assert mask_task(runtime, "RemoveBackground", "grabcut", ["mannequin.png"]).status == "Finished"


def test_an_engine_of_the_wrong_type_is_a_model_error(runtime):
    rec = mask_task(runtime, "ExtractContents", "grabcut", ["mannequin.png"], include_points=[(1, 1)])
    assert rec.status == "Error" and rec.error_code == 240 and rec.error_message == "Model [grabcut] not exists"


def generation(rt: WorkerRuntime, segmenter: str, **fields) -> object:
    uid, _ = rt.store.create("pk-masks", None, "GenerateFromMannequin", 3, 0)
    job = JobMessage(task_uid=uid, main_model="demo-inpaint", seed=3, width=256, height=384, batch_size=1,
                     mannequin_image=stored(rt, "mannequin.png"), clothes_mask=None, clothes_segmenter=segmenter,
                     resize_mode="JustResize", **fields)
    run_job(rt, job.to_wire())
    return rt.store.get(uid)


def test_generation_without_a_mask_keeps_the_garment_found(runtime):
    rec = generation(runtime, "demo-cloth-seg")
    assert rec.status == "Finished", rec.error_message
    assert rec.clothes_mask == AUTO_MASK_NAME and rec.images == ["0.png"]
    mask = np.asarray(result(runtime, rec.uid, AUTO_MASK_NAME)) > 127
    assert iou(mask, truth("clothes_mask.png")) >= 0.9
    out = np.asarray(result(runtime, rec.uid, "0.png").convert("RGB"))
    source = np.asarray(Image.open(EXAMPLES / "mannequin.png").convert("RGB"))
    assert np.array_equal(out[mask], source[mask])  # the garment found is kept bit-exact


def test_generation_without_a_garment_found_is_a_bad_input(runtime):
    rec = generation(runtime, "demo-segformer", garment_classes=[250])
    assert rec.status == "Error" and rec.error_code == 230
    assert "found no garment" in rec.error_message and "Mannequin.ClothesMaskIndex" in rec.error_message
    rec = generation(runtime, "corrupt-cloth")
    assert rec.status == "Error" and rec.error_code == 240 and "corrupt-cloth" in rec.error_message
