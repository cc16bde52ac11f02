"""The mask engines: each kind of ``engine:`` of models_config/ (``limits.MASK_ENGINES``), loaded once
through the worker's model cache (:meth:`workers.models.kinds.WorkerModels.mask_engine`) from local files;
nothing here ever downloads.

* ``grabcut`` (BackgroundRemover, PointSegmenter): OpenCV's GrabCut, no weights. Seeded by ``Box`` when given,
  else by a rectangle a small margin inside the frame (the object must not touch the border), with the
  backdrop's colour learnt from outside the rectangle; for points,
  by a colour flood fill from each include point (probable object), discs around the points (sure object /
  sure background for exclude points) and the frame's border (probable background). Runs on the image
  scaled to at most :data:`GRABCUT_MAX_SIDE` pixels a side; the edge is scaled back smoothly.
* ``rembg`` (BackgroundRemover): an ONNX file of one of rembg's models (``rembg_model``: u2net, isnet,
  birefnet ...), run by rembg's own session class for that model (its pre- and post-processing) on
  onnxruntime. With ``Box``, the box is cut out first and the rest is background.
* ``sam`` (PointSegmenter): a transformers ``SamModel`` folder with its ``SamProcessor``; include points
  are label 1, exclude points label 0, one mask out.
* ``rembg-cloth`` (ClothesSegmenter): rembg's ``u2net_cloth_seg`` ONNX file; classes 0 background,
  1 upper-body, 2 lower-body, 3 full-body clothes.
* ``segformer`` (ClothesSegmenter): a transformers semantic-segmentation folder (``AutoModelForSemantic
  Segmentation`` + ``AutoImageProcessor``), e.g. a SegFormer trained on clothes (ATR labels).

A background or point engine gives a *soft mask* (``uint8``, 255 = the object) that :mod:`workers.masks.refine`
turns into the answer; a clothes engine gives a *class map* (an id per pixel), of which the garment classes
are the clothes mask.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

#: GrabCut works on the image scaled to at most this many pixels a side (its cost grows with the pixels).
GRABCUT_MAX_SIDE = 640
GRABCUT_ITERATIONS = 5
#: GrabCut with a rectangle: inside it, colours within this many times the backdrop's own spread start as
#: background (see :func:`_backdrop_seeds`).
BACKDROP_SPREAD = 1.5
#: GrabCut without a box: the rectangle leaves this share of the image's shorter side as a margin (at least 2 px).
GRABCUT_MARGIN = 0.015
#: A box with fewer pixels than this outside it covers the whole image: the backdrop is then taken along its edge.
MIN_BACKDROP_PIXELS = 64
#: GrabCut with points: each point marks a disc of this share of the shorter side (at least 2 px) as sure
#: object (include) or sure background (exclude); the frame is half as wide.
POINT_RADIUS = 0.012
#: An include point's colour region: neighbours within this many levels per channel of the point's colour
#: (on a median-blurred image) are probably the object.
POINT_FILL_TOLERANCE = 18
#: rembg's u2net_cloth_seg input: ImageNet's mean and standard deviation per RGB channel, at 768x768.
CLOTH_SEG_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CLOTH_SEG_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLOTH_SEG_SIZE: tuple[int, int] = (768, 768)
#: How much of a library's error message an EngineError quotes (the rest goes to nobody: some are pages long).
CAUSE_CHARS = 200
#: The labels of rembg's u2net_cloth_seg; all three are garment by default.
CLOTH_SEG_CLASSES: dict[int, str] = {0: "background", 1: "upper-body clothes", 2: "lower-body clothes",
                                     3: "full-body clothes"}
#: A semantic-segmentation model's labels that count as garment by default (matched in the lower-cased
#: label, e.g. ATR's ``Upper-clothes``, ``Skirt``, ``Pants``, ``Dress``, ``Belt``, ``Scarf``).
GARMENT_WORDS: tuple[str, ...] = ("cloth", "skirt", "pants", "dress", "belt", "scarf", "coat", "jacket", "shirt",
                                  "top", "jumpsuit", "sweater", "shorts", "trousers", "vest", "romper")


class EngineError(Exception):
    """An engine's files could not be loaded or run (a corrupt ONNX file, a folder that is no model)."""


def _cause(e: Exception) -> str:
    """A library's exception in an :class:`EngineError`'s message: its type and the start of its text."""
    return f"{type(e).__name__}: {str(e)[:CAUSE_CHARS]}"


@dataclass
class Request:
    """What an engine is asked: the image (RGB ``uint8``), an optional box (x1, y1, x2, y2) and points (x, y)."""

    image: np.ndarray
    box: tuple[int, int, int, int] | None = None
    include: list[tuple[int, int]] = field(default_factory=list)
    exclude: list[tuple[int, int]] = field(default_factory=list)


# --- GrabCut (no weights) ---------------------------------------------------------------------------------


def _scaled(image: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _back(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A small binary mask (0/1) to the image's size as a soft mask (its edge ramps over one small pixel)."""
    soft = (mask * 255).astype(np.uint8)
    if soft.shape == shape:
        return soft
    return cv2.resize(soft, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _run_grabcut(bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """GrabCut from an initial labelling; the same image and seeds always give the same mask (OpenCV's
    random generator, which seeds its colour models, is reset first)."""
    cv2.setRNGSeed(0)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(bgr, mask, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def _backdrop_seeds(bgr: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """The initial labelling for a rectangle: ``outside`` it surely background; inside, pixels of the
    backdrop's colour (its median in Lab, from the pixels outside, within :data:`BACKDROP_SPREAD` times their
    own spread) probably background, the rest probably the object. Seeding GrabCut's colour models so,
    rather than with the whole rectangle as object, keeps a soft floor shadow or a JPEG halo from being
    learnt as the object."""
    lab = cv2.cvtColor(cv2.GaussianBlur(bgr, (5, 5), 0), cv2.COLOR_BGR2LAB).astype(np.float32)
    border = lab[outside]
    median = np.median(border, axis=0)
    spread = float(np.percentile(np.linalg.norm(border - median, axis=1), 99))
    distance = np.linalg.norm(lab - median, axis=2)
    mask = np.where(distance > max(BACKDROP_SPREAD * spread, 6.0), cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[outside] = cv2.GC_BGD
    if not (mask == cv2.GC_PR_FGD).any():  # all of it looks like the backdrop: GrabCut's own start
        mask[~outside] = cv2.GC_PR_FGD
    return mask


class GrabCutEngine:
    """OpenCV GrabCut: a product photo on a plain background (``Box`` or a margin rectangle), or the region
    of the include points."""

    kind = "grabcut"
    model_bytes = 0

    def soft_mask(self, req: Request) -> np.ndarray:
        small, scale = _scaled(req.image)
        bgr = np.ascontiguousarray(small[..., ::-1])
        h, w = small.shape[:2]
        if req.include:
            found = self._points(bgr, [(x * scale, y * scale) for x, y in req.include],
                                 [(x * scale, y * scale) for x, y in req.exclude])
        else:
            if req.box is not None:
                x1, y1, x2, y2 = (round(v * scale) for v in req.box)
            else:
                m = max(2, round(GRABCUT_MARGIN * min(h, w)))
                x1, y1, x2, y2 = m, m, w - m, h - m
            outside = np.ones((h, w), bool)
            outside[y1:y2, x1:x2] = False
            if outside.sum() < MIN_BACKDROP_PIXELS:  # a box on the whole image: the backdrop along its edge
                outside[:] = True
                outside[y1 + 2:y2 - 2, x1 + 2:x2 - 2] = False
            found = _run_grabcut(bgr, _backdrop_seeds(bgr, outside))
        return _back(found, req.image.shape[:2])

    @staticmethod
    def _points(bgr: np.ndarray, include: list[tuple[float, float]],
                exclude: list[tuple[float, float]]) -> np.ndarray:
        h, w = bgr.shape[:2]
        radius = max(2, round(POINT_RADIUS * min(h, w)))
        mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        smooth = cv2.medianBlur(bgr, 5)
        for x, y in include:  # the colour region around each include point: probably the object
            fill = np.zeros((h + 2, w + 2), np.uint8)
            cv2.floodFill(smooth, fill, (int(x), int(y)), 0, (POINT_FILL_TOLERANCE,) * 3, (POINT_FILL_TOLERANCE,) * 3,
                          4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (255 << 8))
            mask[fill[1:-1, 1:-1] > 0] = cv2.GC_PR_FGD
        border = max(1, radius // 2)
        frame = np.zeros((h, w), bool)
        frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
        mask[frame & (mask != cv2.GC_PR_FGD)] = cv2.GC_BGD
        for x, y in exclude:
            cv2.circle(mask, (int(x), int(y)), radius, int(cv2.GC_BGD), -1)
        for x, y in include:
            cv2.circle(mask, (int(x), int(y)), radius, int(cv2.GC_FGD), -1)
        if not (mask == cv2.GC_BGD).any() and not (mask == cv2.GC_PR_BGD).any():
            return (mask != cv2.GC_BGD).astype(np.uint8)  # the fill took the whole frame: nothing to cut
        return _run_grabcut(bgr, mask)


# --- rembg (ONNX files in rembg's layout) ----------------------------------------------------------------


def _providers(device: str) -> list[str]:
    import onnxruntime

    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def rembg_session(model_name: str, file: Path, device: str) -> Any:
    """rembg's session for ``model_name`` reading ``file`` (never its download: rembg's own lookup of
    ``~/.u2net`` and its downloader are bypassed, so the file configured is the file run)."""
    import onnxruntime
    from rembg.sessions import sessions

    if model_name not in sessions:
        raise EngineError(f"rembg has no model named {model_name!r}")
    base = sessions[model_name]
    local = type(f"Local{base.__name__}", (base,),
                 {"download_models": classmethod(lambda cls, *a, **k: str(file)),
                  "name": classmethod(lambda cls, *a, **k: model_name)})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    options.log_severity_level = 3
    try:
        return local(model_name, options, providers=_providers(device))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds for a corrupt file
        raise EngineError(f"{file.name} is not a readable ONNX model ({_cause(e)})") from e


class RembgEngine:
    """Background removal by one of rembg's models from a local ONNX file."""

    kind = "rembg"

    def __init__(self, file: Path, model_name: str, device: str):
        self.session = rembg_session(model_name, file, device)
        self.model_bytes = file.stat().st_size

    def soft_mask(self, req: Request) -> np.ndarray:
        h, w = req.image.shape[:2]
        x1, y1, x2, y2 = req.box if req.box is not None else (0, 0, w, h)
        crop = Image.fromarray(req.image[y1:y2, x1:x2])
        try:
            predicted = self.session.predict(crop)[0]
        except Exception as e:  # noqa: BLE001 - a file with the wrong inputs fails here
            raise EngineError(f"running the model failed ({_cause(e)})") from e
        out = np.zeros((h, w), np.uint8)
        out[y1:y2, x1:x2] = np.asarray(predicted.convert("L").resize(crop.size, Image.Resampling.BILINEAR))
        return out


class RembgClothEngine:
    """rembg's ``u2net_cloth_seg`` from a local ONNX file: a class per pixel (:data:`CLOTH_SEG_CLASSES`)."""

    kind = "rembg-cloth"
    default_classes: tuple[int, ...] = (1, 2, 3)

    def __init__(self, file: Path, device: str):
        self.session = rembg_session("u2net_cloth_seg", file, device)
        self.model_bytes = file.stat().st_size

    def classes(self, image: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(image)
        s = self.session
        try:
            logits = s.inner_session.run(None, s.normalize(pil, CLOTH_SEG_MEAN, CLOTH_SEG_STD, CLOTH_SEG_SIZE))[0]
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"running the model failed ({_cause(e)})") from e
        labels = np.argmax(logits[0], axis=0).astype(np.uint8)
        return np.asarray(Image.fromarray(labels).resize(pil.size, Image.Resampling.NEAREST))


# --- transformers folders (SAM, SegFormer) --------------------------------------------------------------


class SamEngine:
    """Segment Anything from a transformers folder (``SamModel`` + ``SamProcessor``)."""

    kind = "sam"

    def __init__(self, folder: Path, device: str):
        from transformers import SamModel, SamProcessor

        try:
            self.processor = SamProcessor.from_pretrained(folder)
            self.model = SamModel.from_pretrained(folder).to(device).eval()
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a folder that is no model
            raise EngineError(f"{folder.name} is not a SAM model folder ({_cause(e)})") from e
        self.device = device

    def soft_mask(self, req: Request) -> np.ndarray:
        import torch

        points = [[list(map(float, p)) for p in (*req.include, *req.exclude)]]
        labels = [[1] * len(req.include) + [0] * len(req.exclude)]
        kwargs: dict[str, Any] = {"input_points": [points], "input_labels": [labels]} if points[0] else {}
        if req.box is not None:
            kwargs["input_boxes"] = [[list(map(float, req.box))]]
        inputs = self.processor(images=Image.fromarray(req.image), return_tensors="pt", **kwargs).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu(),
            binarize=False)
        logits = masks[0][0, 0].numpy()
        return np.rint(255.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))).astype(np.uint8)


class SegformerEngine:
    """A transformers semantic-segmentation folder (SegFormer clothes models): a label per pixel."""

    kind = "segformer"

    def __init__(self, folder: Path, device: str):
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        try:
            self.processor = AutoImageProcessor.from_pretrained(folder)
            self.model = AutoModelForSemanticSegmentation.from_pretrained(folder).to(device).eval()
        except Exception as e:  # noqa: BLE001
            raise EngineError(f"{folder.name} is not a semantic-segmentation model folder"
                              f" ({_cause(e)})") from e
        self.device = device
        labels = getattr(self.model.config, "id2label", {}) or {}
        self.labels = {int(k): str(v) for k, v in labels.items()}
        self.default_classes = tuple(i for i, name in sorted(self.labels.items())
                                     if any(word in name.lower() for word in GARMENT_WORDS))

    def classes(self, image: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.processor(images=Image.fromarray(image), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        up = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return up.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def garment_mask(labels: np.ndarray, classes: list[int] | tuple[int, ...]) -> np.ndarray:
    """255 where the class map holds one of ``classes``."""
    return np.where(np.isin(labels, list(classes)), 255, 0).astype(np.uint8)


def load_engine(engine: str, path: Path | None, *, device: str, rembg_model: str | None = None) -> Any:
    """The engine of kind ``engine`` from its local file or folder. Raises :class:`EngineError`."""
    if engine == "grabcut":
        return GrabCutEngine()
    if path is None or not path.exists():
        raise EngineError(f"its {'file' if engine.startswith('rembg') else 'folder'} is missing")
    if engine == "rembg":
        return RembgEngine(path, rembg_model or "u2net", device)
    if engine == "rembg-cloth":
        return RembgClothEngine(path, device)
    if engine == "sam":
        return SamEngine(path, device)
    if engine == "segformer":
        return SegformerEngine(path, device)
    raise EngineError(f"unknown engine {engine!r}")
