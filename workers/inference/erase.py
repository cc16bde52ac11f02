"""RemoveContents: the area of a mask erased, by an Eraser (a LaMa-family inpainting file read through spandrel) or,
without one, by a Main model's inpainting pipeline with an empty-scene prompt (docs/API.md "RemoveContents").

The geometry, shared by both ways (pure functions):

* :func:`erase_mask`: the request's Mask as a bool array of the photo's size (brought to it by nearest neighbour
  when it differs), white (grey level >= ``MASK_WHITE_LEVEL``) = erase, the other way round with InvertMask;
* :func:`feathered`: the weight (0..1) of the erased pixels: 1 on the mask and, beyond it, a Gaussian fall-off
  over ``MaskBlur`` pixels, cut to 0 farther than ``MaskBlur`` pixels (Chebyshev distance) from every mask pixel.
  Those pixels keep their values bit for bit: the blend (:func:`~workers.faces.geometry.paste_crop`) leaves every
  pixel of weight 0 untouched;
* :func:`erase_crop`: the part of the photo the model works on: the weight's bounding box grown by a margin of
  context (a quarter of its longer side, at least :data:`MIN_CONTEXT`).

The Eraser sees the crop (at most :data:`ERASER_MAX_SIDE` on its longer side, padded by reflection to a multiple of
8) and the binary mask of the weight's support; the pipeline redraws the crop at the Main model's native area
(:func:`~workers.faces.geometry.redraw_size`) where the weight reaches, at strength 1. Either result is brought back
to the crop's size and blended in with the weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from app.contract.limits import MASK_WHITE_LEVEL

#: The least context (pixels) kept around the erased area in the crop a model sees.
MIN_CONTEXT = 16
#: An Eraser works on the crop brought down to at most this side (LaMa's training size is 256..512; its Fourier
#: units see the whole input, so it stays coherent well above, and the cost stays bounded at any photo size).
ERASER_MAX_SIDE = 1024

Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive)


class EraserFileError(ValueError):
    """A weights file that is not an eraser this service runs (unreadable, an unknown architecture, not an
    inpainting model of RGB images)."""


def erase_mask(mask: Image.Image, size: tuple[int, int], invert: bool) -> np.ndarray:
    """The pixels to erase (bool, ``size``'s height x width): ``mask``'s grey level at or above
    ``MASK_WHITE_LEVEL`` (below it with ``invert``), brought to ``size`` (``(width, height)``) by nearest neighbour;
    a transparent pixel of a mask with alpha counts as black."""
    grey = mask.convert("RGBA") if mask.has_transparency_data else mask
    if grey.mode == "RGBA":
        black = Image.new("RGBA", grey.size, (0, 0, 0, 255))
        grey = Image.alpha_composite(black, grey)
    grey = grey.convert("L")
    if grey.size != tuple(size):
        grey = grey.resize(size, Image.Resampling.NEAREST)
    white = np.asarray(grey) >= MASK_WHITE_LEVEL
    return ~white if invert else white


def feathered(mask: np.ndarray, blur: int) -> np.ndarray:
    """The weight (float32, 0..1) of the erased pixels: 1 on ``mask``, a Gaussian fall-off (kernel ``2 blur + 1``,
    sigma ``blur / 2``) beyond it, exactly 0 farther than ``blur`` pixels (Chebyshev) from every mask pixel."""
    hard = mask.astype(np.float32)
    if blur <= 0 or not mask.any():
        return hard
    k = 2 * blur + 1
    soft = cv2.GaussianBlur(hard, (k, k), sigmaX=blur / 2, sigmaY=blur / 2, borderType=cv2.BORDER_REPLICATE)
    reach = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    return np.where(reach, np.maximum(hard, np.clip(soft, 0.0, 1.0)), 0.0).astype(np.float32)


def erase_crop(alpha: np.ndarray) -> Box | None:
    """The crop a model erases in: the bounding box of ``alpha > 0`` grown by a quarter of its longer side (at
    least :data:`MIN_CONTEXT`) each way, inside the image; None when nothing is to be erased."""
    ys, xs = np.nonzero(alpha > 0)
    if ys.size == 0:
        return None
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    margin = max(MIN_CONTEXT, math.ceil(max(right - left, bottom - top) / 4))
    height, width = alpha.shape
    return max(0, left - margin), max(0, top - margin), min(width, right + margin), min(height, bottom + margin)


def blend(image: np.ndarray, erased: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rint(alpha * erased + (1 - alpha) * image)`` (uint8 height x width x 3) where ``alpha`` is above 0; every
    other pixel is ``image``'s, bit for bit. ``image`` is not changed."""
    out = image.copy()
    touched = alpha > 0
    weight = alpha[touched][:, None]
    mixed = weight * erased[touched].astype(np.float32) + (1 - weight) * image[touched].astype(np.float32)
    out[touched] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


# --- the Eraser (spandrel) ---------------------------------------------------------------------------------


@dataclass
class Eraser:
    """A loaded inpainting model (spandrel's ``MaskedImageModelDescriptor``) on ``device`` in ``dtype``."""

    descriptor: Any
    name: str
    device: str
    dtype: Any

    def erase(self, crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``crop`` (uint8 h x w x 3) with the pixels of ``mask`` (bool h x w) filled by the model: the same size,
        uint8. Run at most :data:`ERASER_MAX_SIDE` on the longer side, padded by reflection to a multiple of 8."""
        import torch

        h, w = mask.shape
        scale = min(1.0, ERASER_MAX_SIDE / max(h, w))
        small = (max(8, round(w * scale)), max(8, round(h * scale)))
        img, hole = crop, mask.astype(np.uint8)
        if small != (w, h):
            img = cv2.resize(crop, small, interpolation=cv2.INTER_AREA)
            hole = cv2.resize(hole, small, interpolation=cv2.INTER_NEAREST)
        sh, sw = hole.shape
        ph, pw = (-sh) % 8, (-sw) % 8
        mode = "reflect" if sh > ph and sw > pw else "edge"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
        hole = np.pad(hole, ((0, ph), (0, pw)), mode=mode)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(self.device, self.dtype) / 255.0
        m = torch.from_numpy(hole)[None, None].to(self.device, self.dtype)
        with torch.inference_mode():
            y = self.descriptor(x, m)
        out = (y[0].float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()[:sh, :sw]
        if small != (w, h):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(out)


def load_eraser(file: Path, device: str, dtype: Any) -> Eraser:
    """The eraser in ``file``, on ``device``, in float32 whatever ``dtype`` (the worker's): LaMa's Fourier units run
    their FFTs in the input's dtype, which cuFFT does not take in bfloat16 (and spandrel marks LaMa as not float16).
    Raises :class:`EraserFileError`."""
    import torch
    from spandrel import MaskedImageModelDescriptor, ModelLoader, UnsupportedModelError

    file = Path(file)
    if not file.is_file():
        raise EraserFileError(f"weights file {file} does not exist")
    try:
        descriptor = ModelLoader(device="cpu").load_from_file(file)
    except UnsupportedModelError:
        raise EraserFileError(f"{file.name}: spandrel recognises no inpainting architecture in its tensors") from None
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file fails in torch, safetensors or the unpickler
        raise EraserFileError(f"{file.name} is unreadable: {type(e).__name__}: {e}") from e
    name = getattr(descriptor.architecture, "name", type(descriptor.model).__name__)
    if not isinstance(descriptor, MaskedImageModelDescriptor):
        raise EraserFileError(f"{file.name} is a {name} model for {descriptor.purpose}, not inpainting")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise EraserFileError(f"{file.name} is a {name} model of {descriptor.input_channels}-channel images, not RGB")
    descriptor.to(device=device, dtype=torch.float32).eval()
    return Eraser(descriptor, name, device, torch.float32)
