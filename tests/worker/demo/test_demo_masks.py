"""The demo mask models (workers/demo/masks.py): built by code in the real formats of the mask engines --
rembg's u2net and u2net_cloth_seg ONNX files, a transformers SAM folder and a SegFormer clothes folder --
published once, and usable the way the engines use them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from rembg import new_session
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, SamModel, SamProcessor

from workers.demo import demo_path
from workers.demo.masks import ATR_CLOTHES_LABELS, SAM_IMAGE_SIZE, SEGFORMER_SIZE

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: demo kind -> (folder name, file name or None for a folder source, marker file)
LAYOUT = {
    "u2net-onnx": ("demo-u2net", "u2net.onnx", "atelier_demo_u2net.json"),
    "cloth-onnx": ("demo-cloth-seg", "u2net_cloth_seg.onnx", "atelier_demo_cloth_seg.json"),
    "sam": ("demo-sam", None, "atelier_demo_sam.json"),
    "segformer": ("demo-segformer", None, "atelier_demo_segformer.json"),
}


def rembg_input(image: Image.Image, size: int) -> np.ndarray:
    """rembg's BaseSession.normalize: LANCZOS resize to size x size, / max, ImageNet mean / std, NCHW."""
    array = np.array(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    array = array / max(np.max(array), 1e-6)
    array = (array - np.array(MEAN)) / np.array(STD)
    return array.transpose(2, 0, 1)[None].astype(np.float32)


def run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(float)" and list(inp.shape) == list(x.shape)
    return session.run(None, {inp.name: x})


def mannequin() -> Image.Image:
    return Image.open(EXAMPLES / "mannequin.png").convert("RGB")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def figure_mask() -> np.ndarray:
    """Where the mannequin is: everything that differs from the flat backdrop."""
    rgb = np.asarray(mannequin()).astype(int)
    return np.abs(rgb - rgb[0, 0]).sum(axis=-1) > 0


@pytest.mark.parametrize("kind", list(LAYOUT))
def test_builds_once_and_publishes_the_expected_layout(kind, tmp_path):
    folder, file_name, marker_file = LAYOUT[kind]
    started = time.perf_counter()
    path = demo_path(kind, tmp_path)
    assert time.perf_counter() - started < 5.0  # a few ms here; the budget is for a slow 2-core CPU
    expected = tmp_path / folder / file_name if file_name else tmp_path / folder
    assert path == expected and path.exists()
    assert path.is_file() if file_name else path.is_dir()
    marker = json.loads((tmp_path / folder / marker_file).read_text())
    assert marker["build"] == 1 and marker["kind"].startswith("atelier-demo-")
    size = sum(p.stat().st_size for p in (tmp_path / folder).rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024
    if kind in ("sam", "segformer"):
        assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / folder).rglob("*")}
    inode = (tmp_path / folder).stat().st_ino
    assert demo_path(kind, tmp_path) == path  # a second call: the same path, nothing rebuilt
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / folder).rglob("*")} == stamps
    assert (tmp_path / folder).stat().st_ino == inode
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


@pytest.mark.parametrize("kind", ["u2net-onnx", "cloth-onnx"])
def test_onnx_files_are_valid_opset_17(kind, tmp_path):
    model = onnx.load(str(demo_path(kind, tmp_path)))
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}[""] == 17


def example(name: str) -> Image.Image:
    if not (EXAMPLES / name).exists():
        pytest.skip(f"examples/{name} is not there")
    return Image.open(EXAMPLES / name)


def example_mask(name: str) -> np.ndarray:
    return np.asarray(example(name).convert("L")) > 127


@pytest.mark.parametrize("photo, figure", [("mannequin.png", None),
                                           ("photo_mannequin.jpg", "photo_mannequin_figure.png")])
def test_u2net_saliency_covers_the_figure_not_the_backdrop(photo, figure, tmp_path):
    image = example(photo).convert("RGB")
    figure = figure_mask() if figure is None else example_mask(figure)
    out = run_onnx(demo_path("u2net-onnx", tmp_path), rembg_input(image, 320))
    assert len(out) == 1 and out[0].shape == (1, 1, 320, 320) and out[0].dtype == np.float32
    # as rembg's U2netSession: min-max normalise the first output, back to the image size
    pred = out[0][:, 0]
    pred = np.squeeze((pred - pred.min()) / (pred.max() - pred.min()))
    mask = Image.fromarray((pred.clip(0, 1) * 255).astype("uint8"), mode="L")
    salient = np.asarray(mask.resize(image.size, Image.Resampling.LANCZOS)) > 127
    assert salient[figure].mean() > 0.9
    assert salient[~figure].mean() < 0.05
    assert iou(salient, figure) > 0.85


@pytest.mark.parametrize("photo, garment", [("mannequin.png", "clothes_mask.png"),
                                            ("photo_mannequin.jpg", "photo_mannequin_garment.png")])
def test_cloth_seg_finds_the_dress_as_full_body_clothes(photo, garment, tmp_path):
    image = example(photo).convert("RGB")
    truth = example_mask(garment)
    out = run_onnx(demo_path("cloth-onnx", tmp_path), rembg_input(image, 768))
    assert len(out) == 1 and out[0].shape == (1, 4, 768, 768) and out[0].dtype == np.float32
    classes = np.argmax(out[0], axis=1)[0]
    assert set(np.unique(classes)) <= {0, 3}  # upper / lower body are never predicted by the demo
    full = Image.fromarray(((classes == 3) * 255).astype("uint8"), mode="L")
    full = np.asarray(full.resize(image.size, Image.Resampling.BILINEAR)) > 127
    assert iou(full, truth) >= 0.8


def test_rembg_sessions_load_the_demo_files(tmp_path, monkeypatch):
    """rembg itself finds an existing ``<name>.onnx`` in ``$U2NET_HOME`` (no download, no checksum)."""
    image = mannequin()
    monkeypatch.setenv("U2NET_HOME", str(demo_path("u2net-onnx", tmp_path).parent))
    session = new_session("u2net", providers=["CPUExecutionProvider"])
    (mask,) = session.predict(image)
    assert mask.size == image.size and iou(np.asarray(mask) > 127, figure_mask()) > 0.85

    monkeypatch.setenv("U2NET_HOME", str(demo_path("cloth-onnx", tmp_path).parent))
    session = new_session("u2net_cloth_seg", providers=["CPUExecutionProvider"])
    (mask,) = session.predict(image, cc="full")
    truth = np.asarray(Image.open(EXAMPLES / "clothes_mask.png").convert("L")) > 127
    assert mask.size == image.size and iou(np.asarray(mask) > 127, truth) >= 0.8


def test_sam_point_prompt_gives_a_mask_of_the_original_size(tmp_path):
    folder = demo_path("sam", tmp_path)
    model = SamModel.from_pretrained(folder).eval()
    processor = SamProcessor.from_pretrained(folder)
    assert processor.image_processor.size["longest_edge"] == SAM_IMAGE_SIZE
    assert model.config.vision_config.image_size == SAM_IMAGE_SIZE

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (384, 256, 3), dtype=np.uint8))  # h x w
    inputs = processor(images=image, input_points=[[[100, 200]]], input_labels=[[1]], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, SAM_IMAGE_SIZE, SAM_IMAGE_SIZE)
    assert inputs["original_sizes"].tolist() == [[384, 256]]
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    low_res = SAM_IMAGE_SIZE // 4
    assert outputs.pred_masks.shape == (1, 1, 1, low_res, low_res) and outputs.iou_scores.shape == (1, 1, 1)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    assert len(masks) == 1 and masks[0].shape == (1, 1, 384, 256) and masks[0].dtype == torch.bool

    # the same again from the stored weights: deterministic
    with torch.no_grad():
        again = SamModel.from_pretrained(folder).eval()(**inputs, multimask_output=False)
    assert torch.equal(again.pred_masks, outputs.pred_masks)


def test_sam_is_seeded(tmp_path):
    a = load_file(demo_path("sam", tmp_path / "a") / "model.safetensors")
    b = load_file(demo_path("sam", tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_segformer_gives_18_atr_logits(tmp_path):
    folder = demo_path("segformer", tmp_path)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert model.config.id2label == ATR_CLOTHES_LABELS and model.config.label2id["Dress"] == 7

    image = mannequin()
    inputs = processor(images=image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, SEGFORMER_SIZE, SEGFORMER_SIZE)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape == (1, 18, SEGFORMER_SIZE // 4, SEGFORMER_SIZE // 4)
    (labels,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
    assert labels.shape == (384, 256) and int(labels.max()) < 18
