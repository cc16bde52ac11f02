"""Enlarging an image: Pillow's Lanczos filter, or a super-resolution model (an ``Upscaler`` of models_config) run
tile by tile, then Lanczos to the exact size asked. docs/API.md "Upscalers".

* :func:`load_upscaler`: a weights file -> :class:`SuperResolution`, through spandrel's ``ModelLoader``, which
  detects the architecture from the file's tensors (ESRGAN and Real-ESRGAN RRDBNet, Real-ESRGAN Compact,
  SwinIR, HAT, DAT, OmniSR, SPAN ...). A file it does not recognise, or a model that does not enlarge RGB
  images (a denoiser, a face restorer, an inpainter, a greyscale model), is an :class:`UpscalerFileError`.
* :func:`upscale_tiled` (pure numpy around the model's ``run``): one application of the model on overlapping
  tiles, cross-faded. The device holds one tile's activations, the host one strip of float accumulators, so the
  memory a model needs is bounded by the tile, not the image. Along an edge shared with a neighbour, each tile
  gives no weight to the outer quarter of the overlap (what a convolution sees there is the tile's padding, not
  the neighbour's pixels), then fades in linearly over the middle half: for a network whose receptive field
  reaches at most a quarter of the overlap from a pixel, the tiled result is the untiled one (up to float
  rounding); for a wider one, the seams are cross-faded rather than cut.
* :func:`plan_upscale`: how many applications an enlargement needs (the model runs while the image is smaller
  than the size asked on either side, as A1111 does; at most :data:`MAX_APPLICATIONS`).
* :func:`enlarge` / :func:`resize_image`: a whole image to exactly ``width`` x ``height``: the model's
  applications (RGB), then Lanczos, up or down, to the exact size; an alpha channel is resized by Lanczos alone.
  Without a model: Lanczos (an RGBA image premultiplied by Pillow, so that transparent pixels do not bleed).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The most applications of a model for one enlargement (an x2 model takes 64 px to 4096 px in 6).
MAX_APPLICATIONS = 8
#: What one application of an Upscaler adds to a job's time budget, in denoising steps' worth of its output
#: megapixels (ATELIER_JOB_TIME_PER_MEGAPIXEL_STEP_S each): an RRDBNet x4 costs about one SD 1.5 step per output
#: megapixel, the transformer upscalers (SwinIR, HAT) a few; generous, as a budget is a guard against a hung job.
UPSCALE_STEPS = 4

#: ``run(tile)``: a float32 ``(3, h, w)`` tile in 0..1 -> its float32 ``(3, h*scale, w*scale)`` upscale in 0..1.
Run = Callable[[np.ndarray], np.ndarray]


class UpscalerFileError(ValueError):
    """A weights file that is not an upscaler this service runs (unreadable, an unknown architecture, not a
    super-resolution model of RGB images)."""


@dataclass
class SuperResolution:
    """A loaded upscaler: spandrel's model descriptor on its device, in its dtype. ``scale``: its factor (2, 4 ...);
    ``architecture``: spandrel's name of it (``RealESRGAN Compact``, ``ESRGAN``, ``SwinIR`` ...)."""

    descriptor: Any
    scale: int
    architecture: str
    device: Any
    dtype: Any

    def run(self, tile: np.ndarray) -> np.ndarray:
        """One tile through the model (:data:`Run`)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(tile))[None].to(self.device, self.dtype)
        with torch.inference_mode():
            y = self.descriptor(x)
        return y[0].float().cpu().numpy()


def load_upscaler(file: Path, device: str, dtype: Any) -> SuperResolution:
    """The upscaler in ``file``, on ``device``, in ``dtype`` when the architecture supports it (float16/bfloat16
    on a GPU), else float32. Raises :class:`UpscalerFileError`; a CUDA out-of-memory error is raised as is."""
    import torch
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    file = Path(file)
    if not file.is_file():
        raise UpscalerFileError(f"weights file {file} does not exist")
    try:
        descriptor = ModelLoader(device="cpu").load_from_file(file)
    except UnsupportedModelError:
        raise UpscalerFileError(f"{file.name}: spandrel recognises no super-resolution architecture in its"
                                " tensors") from None
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file fails in torch, safetensors or the unpickler
        raise UpscalerFileError(f"{file.name} is unreadable: {type(e).__name__}: {e}") from e
    name = getattr(descriptor.architecture, "name", type(descriptor.model).__name__)
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose != "SR" or descriptor.scale < 2:
        what = getattr(descriptor, "purpose", type(descriptor).__name__)
        raise UpscalerFileError(f"{file.name} is a {name} model for {what}, not super-resolution")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerFileError(f"{file.name} is a {name} model of {descriptor.input_channels}-channel images, not"
                                " RGB")
    if str(device).startswith("cuda") and dtype in (torch.float16, torch.bfloat16):
        supported = descriptor.supports_half if dtype == torch.float16 else descriptor.supports_bfloat16
        dtype = dtype if supported else torch.float32
    else:
        dtype = torch.float32
    descriptor.to(device=device, dtype=dtype).eval()
    return SuperResolution(descriptor, int(descriptor.scale), name, device, dtype)


# --- tiles -----------------------------------------------------------------------------------------------


def tile_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of the tiles covering ``0..length``: as few as tiles of at most ``size`` overlapping
    by at least ``overlap`` allow, all of one length (the shortest that does), spread evenly (so the last one does
    not redo most of its neighbour's work); one span when ``length <= size``."""
    if length <= size:
        return [(0, length)]
    count = math.ceil((length - overlap) / (size - overlap))
    tile = math.ceil((length + (count - 1) * overlap) / count)   # <= size; neighbours overlap by >= overlap
    return [(s, s + tile) for s in ((i * (length - tile)) // (count - 1) for i in range(count))]


def feather(span: tuple[int, int], length: int, overlap: int, scale: int) -> np.ndarray:
    """The blending weights (float32, along one axis of the output, ``(end - start) * scale`` values) of the tile
    over ``span``: 1, except along an edge it shares with a neighbour (not the image's border), where the first
    quarter of the overlap weighs 0 and the next half rises linearly to 1 (the module doc)."""
    start, end = span
    n = (end - start) * scale
    w = np.ones(n, np.float32)
    pad = (overlap // 4) * scale
    ramp = (overlap - 2 * (overlap // 4)) * scale
    if ramp <= 0:
        return w
    rise = np.concatenate([np.zeros(pad, np.float32), (np.arange(ramp, dtype=np.float32) + 0.5) / ramp])
    rise = rise[:n]
    if start > 0:
        w[: rise.size] = np.minimum(w[: rise.size], rise)
    if end < length:
        w[n - rise.size:] = np.minimum(w[n - rise.size:], rise[::-1])
    return w


def upscale_tiled(image: np.ndarray, run: Run, scale: int, size: int, overlap: int,
                  on_tile: Callable[[], None] | None = None, dtype: Any = np.uint8) -> np.ndarray:
    """One application of the model ``run`` (:data:`Run`, factor ``scale``) to the ``(H, W, 3)`` ``image`` (uint8,
    or float in 0..1), on tiles of ``size`` input pixels overlapping by ``overlap``: an ``(H*scale, W*scale, 3)``
    array of ``dtype`` (uint8, rounded; or a float type in 0..1). ``on_tile()`` runs before each tile (a job's
    cancellation and time-budget check). Tile rows are finished one after another: besides the result, the host
    holds the float accumulators of one row of tiles."""
    height, width = image.shape[:2]
    rows, cols = tile_spans(height, size, overlap), tile_spans(width, size, overlap)
    wx = [feather(c, width, overlap, scale) for c in cols]
    wy = [feather(r, height, overlap, scale) for r in rows]
    total_x = np.zeros(width * scale, np.float32)
    for (x0, x1), w in zip(cols, wx, strict=True):
        total_x[x0 * scale: x1 * scale] += w
    total_y = np.zeros(height * scale, np.float32)
    for (y0, y1), w in zip(rows, wy, strict=True):
        total_y[y0 * scale: y1 * scale] += w
    floats = image.dtype != np.uint8
    out = np.empty((height * scale, width * scale, 3), dtype)
    acc = np.zeros((0, width * scale, 3), np.float32)
    acc_from = 0  # the output row acc[0] stands for
    for r, ((y0, y1), w_row) in enumerate(zip(rows, wy, strict=True)):
        grown = np.zeros((y1 * scale - acc_from, width * scale, 3), np.float32)
        grown[: acc.shape[0]] = acc
        acc = grown
        for (x0, x1), w_col in zip(cols, wx, strict=True):
            if on_tile is not None:
                on_tile()
            tile = image[y0:y1, x0:x1].astype(np.float32)
            if not floats:
                tile /= 255.0
            got = run(tile.transpose(2, 0, 1))
            want = (3, (y1 - y0) * scale, (x1 - x0) * scale)
            if got.shape != want:
                raise ValueError(f"the upscaler gave a {got.shape} tile for a {tile.shape} one (expected {want})")
            weights = w_row[:, None] * w_col[None, :]
            acc[y0 * scale - acc_from:, x0 * scale: x1 * scale] += got.transpose(1, 2, 0) * weights[..., None]
        done_to = rows[r + 1][0] * scale if r + 1 < len(rows) else height * scale
        done = acc[: done_to - acc_from] / (total_y[acc_from:done_to, None, None] * total_x[None, :, None])
        out[acc_from:done_to] = (np.clip(done * 255.0 + 0.5, 0, 255).astype(np.uint8)
                                 if dtype == np.uint8 else done.astype(dtype))
        acc, acc_from = acc[done_to - acc_from:], done_to
    return out


# --- whole images ----------------------------------------------------------------------------------------


def enlarges(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether an upscaler runs at all taking ``size`` to ``target``: the target is wider or taller (whatever its
    factor; a job need not load a model that would not run)."""
    return target[0] > size[0] or target[1] > size[1]


def plan_upscale(size: tuple[int, int], target: tuple[int, int], scale: int) -> list[tuple[int, int]]:
    """The sizes after each application of a model of factor ``scale`` taking ``size`` towards ``target``: it
    runs while the image is narrower or lower than the target (then Lanczos brings it to the exact size, down
    or up), at most :data:`MAX_APPLICATIONS` times; none when the target is not larger on either side."""
    (w, h), sizes = size, []
    while enlarges((w, h), target) and len(sizes) < MAX_APPLICATIONS:
        w, h = w * scale, h * scale
        sizes.append((w, h))
    return sizes


def upscale_megapixels(size: tuple[int, int], target: tuple[int, int], scale: int) -> float:
    """The megapixels an upscaler of factor ``scale`` writes taking ``size`` to ``target`` (all applications): what
    its share of a job's time budget is counted in (:data:`UPSCALE_STEPS`)."""
    return sum(w * h for w, h in plan_upscale(size, target, scale)) / 1e6


def lanczos(img: Image.Image, width: int, height: int) -> Image.Image:
    """``img`` as RGBA (it has alpha) or RGB, resized by Lanczos to exactly ``width`` x ``height``. RGBA is
    resized premultiplied by Pillow, so that fully transparent pixels do not bleed their colour into the edges."""
    mode = "RGBA" if img.has_transparency_data else "RGB"  # an alpha band, or a transparent palette/grey colour
    return img.convert(mode).resize((width, height), Image.Resampling.LANCZOS)


def enlarge(rgb: np.ndarray, width: int, height: int, model: SuperResolution | None, size: int = 512,
            overlap: int = 32, on_tile: Callable[[], None] | None = None) -> tuple[np.ndarray, int]:
    """The ``(H, W, 3)`` uint8 ``rgb`` at exactly ``width`` x ``height`` (uint8): through ``model`` on tiles of
    ``size`` overlapping by ``overlap`` as often as :func:`plan_upscale` says, then Lanczos; Lanczos alone without
    a model. Also returns how many times the model ran."""
    applied = 0
    if model is not None:
        for _ in plan_upscale((rgb.shape[1], rgb.shape[0]), (width, height), model.scale):
            rgb = upscale_tiled(rgb, model.run, model.scale, size, overlap, on_tile)
            applied += 1
    if rgb.shape[:2] != (height, width):
        rgb = np.array(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))
    return rgb, applied


def resize_image(img: Image.Image, width: int, height: int, model: SuperResolution | None = None,
                 size: int = 512, overlap: int = 32,
                 on_tile: Callable[[], None] | None = None) -> tuple[Image.Image, int]:
    """``img`` at exactly ``width`` x ``height``, RGBA when it has alpha, else RGB: by :func:`lanczos` without a
    model; with one, its colours through :func:`enlarge` and its alpha (if any) by Lanczos. Also returns how many
    times the model ran (0: the size asked is not larger, Lanczos did it all)."""
    if model is None or not plan_upscale(img.size, (width, height), model.scale):
        return lanczos(img, width, height), 0
    rgb, applied = enlarge(np.asarray(img.convert("RGB")), width, height, model, size, overlap, on_tile)
    out = Image.fromarray(rgb, "RGB")
    if img.has_transparency_data:
        alpha = img.convert("RGBA").getchannel("A").resize((width, height), Image.Resampling.LANCZOS)
        out.putalpha(alpha)
    return out, applied


def upscale_note(code: str, scale: int, applied: int, width: int, height: int) -> str:
    """What an upscaler did, for the task's Notes: ``upscaled by demo-upscaler (x4) to 1024x768``; ``(x4, 2 times)``
    when it ran more than once."""
    times = f", {applied} times" if applied > 1 else ""
    return f"upscaled by {code} (x{scale}{times}) to {width}x{height}"
