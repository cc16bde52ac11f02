"""The mask engines (workers/masks/engines.py) on the example mannequins, whose true figure and garment
masks are known (examples/, scripts/make_examples.py), and on files that are not models."""
from __future__ import annotations

import numpy as np
import pytest

from support.masks import MANNEQUINS, iou, point_on, rgb, truth
from workers.demo import demo_path
from workers.masks.engines import EngineError, GrabCutEngine, Request, garment_mask, load_engine


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mask-models")


@pytest.mark.parametrize("example", sorted(MANNEQUINS))
def test_grabcut_finds_the_figure(example):
    photo, figure, _ = MANNEQUINS[example]
    found = GrabCutEngine().soft_mask(Request(rgb(photo))) > 127
    assert iou(found, truth(figure)) >= 0.9


@pytest.mark.parametrize("example", sorted(MANNEQUINS))
def test_grabcut_seeded_by_a_box(example):
    photo, figure, _ = MANNEQUINS[example]
    true = truth(figure)
    ys, xs = np.nonzero(true)
    box = (int(xs.min()) - 6, int(ys.min()) - 6, int(xs.max()) + 7, int(ys.max()) + 7)
    found = GrabCutEngine().soft_mask(Request(rgb(photo), box=box)) > 127
    assert iou(found, true) >= 0.9
    outside = np.ones_like(true)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert not found[outside].any()                      # nothing outside the box


@pytest.mark.parametrize("example", sorted(MANNEQUINS))
def test_a_point_on_the_dress_extracts_the_dress(example):
    photo, figure, garment = MANNEQUINS[example]
    dress, background = truth(garment), ~truth(figure)
    found = GrabCutEngine().soft_mask(Request(rgb(photo), include=[point_on(dress)])) > 127
    assert (found & dress).sum() >= 0.9 * dress.sum()     # covers the dress
    assert (found & background).sum() <= 0.01 * background.sum()   # and not the background
    assert iou(found, dress) >= 0.85


def test_an_exclude_point_is_left_out():
    photo, figure, garment = MANNEQUINS["flat"]
    image, figure_mask = rgb(photo), truth(figure)
    body = figure_mask & ~truth(garment)
    x, y = point_on(body)
    found = GrabCutEngine().soft_mask(Request(image, include=[point_on(figure_mask)], exclude=[(x, y)])) > 127
    assert not found[y, x]


def test_rembg_engine_runs_a_u2net_file_and_never_downloads(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))     # rembg's own model lookup: nothing there
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "empty"))
    engine = load_engine("rembg", demo_path("u2net-onnx", demo_dir), device="cpu", rembg_model="u2net")
    photo, figure, _ = MANNEQUINS["flat"]
    soft = engine.soft_mask(Request(rgb(photo)))
    assert soft.shape == truth(figure).shape and soft.dtype == np.uint8
    assert iou(soft > 127, truth(figure)) >= 0.9                   # the demo graph is hand-set to work here
    boxed = engine.soft_mask(Request(rgb(photo), box=(0, 0, 128, 384)))
    assert not boxed[:, 128:].any()
    assert not (tmp_path / "empty").exists()


def test_clothes_engines_give_a_class_per_pixel(demo_dir):
    cloth = load_engine("rembg-cloth", demo_path("cloth-onnx", demo_dir), device="cpu")
    for example in MANNEQUINS.values():
        photo, _, garment = example
        labels = cloth.classes(rgb(photo))
        assert labels.shape == truth(garment).shape
        assert iou(garment_mask(labels, cloth.default_classes) > 0, truth(garment)) >= 0.9
    seg = load_engine("segformer", demo_path("segformer", demo_dir), device="cpu")
    labels = seg.classes(rgb(MANNEQUINS["flat"][0]))
    assert labels.shape == (384, 256) and labels.max() < 18
    assert seg.default_classes == (4, 5, 6, 7, 8, 17)               # ATR: clothes labels by name


def test_sam_engine_answers_points_and_boxes(demo_dir):
    engine = load_engine("sam", demo_path("sam", demo_dir), device="cpu")
    image = rgb(MANNEQUINS["flat"][0])
    for req in (Request(image, include=[(128, 200)], exclude=[(5, 5)]), Request(image, box=(10, 10, 200, 300))):
        soft = engine.soft_mask(req)
        assert soft.shape == image.shape[:2] and soft.dtype == np.uint8


@pytest.mark.parametrize("engine, what", [("rembg", "file"), ("rembg-cloth", "file"), ("sam", "folder"),
                                          ("segformer", "folder")])
def test_files_that_are_not_models_are_an_engine_error(tmp_path, engine, what):
    with pytest.raises(EngineError, match="missing"):
        load_engine(engine, tmp_path / "nothing", device="cpu")
    if what == "file":
        path = tmp_path / "bad.onnx"
        path.write_bytes(b"\x08\x07 not a protobuf" * 10)
    else:
        path = tmp_path / "bad"
        path.mkdir()
        (path / "config.json").write_text('{"model_type": "sam", "vision_config": 7}')
    with pytest.raises(EngineError):
        load_engine(engine, path, device="cpu")


def test_grabcut_gives_the_same_mask_for_the_same_request():
    photo, figure, garment = MANNEQUINS["photo"]
    image = rgb(photo)
    first = GrabCutEngine().soft_mask(Request(image))
    GrabCutEngine().soft_mask(Request(image, include=[point_on(truth(garment))]))  # moves OpenCV's generator
    assert np.array_equal(GrabCutEngine().soft_mask(Request(image)), first)
