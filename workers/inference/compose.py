"""Mannequin composition: geometry, masks and the exact paste-back of the kept clothes.

Pure functions on PIL images and numpy arrays (no torch), so every rule here is testable without a GPU.

Conventions used throughout:

* The clothes mask marks the garment in white; the garment is KEPT, everything else is redrawn.
  :func:`normalize_mask` turns any mask image into a boolean array (True = clothes = kept).
* :func:`inpaint_mask` produces the opposite picture, the one diffusers inpainting pipelines expect:
  white = "redraw here".
* The kept pixels of the final image are bit-identical to :attr:`Composition.image` (the mannequin after
  resizing); :func:`paste_back` guarantees that and blends only *outside* the garment.
* An Image2Image background reference is brought to the output size by :func:`fit_background` (its own
  ResizeMode; by default cover and centre-crop) and replaces everything outside the clothes in the starting
  image (:func:`with_background`);
  :func:`redraw_strength` says how strongly each pixel is redrawn (clothes 0, the figure of a cut-out 1,
  the background ``1 - ReferStrength``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from app.contract.limits import (
    CROP_AND_RESIZE,
    DEFAULT_BACKGROUND_RESIZE_MODE,
    DEFAULT_RESIZE_MODE,
    JUST_RESIZE,
    RESIZE_AND_FILL,
    RESIZE_MODES,
)

ResizeMode = Literal[RESIZE_MODES]

#: Colour that transparent mannequin pixels are composited onto before the image is fed to the model.
NEUTRAL_GREY: tuple[int, int, int] = (128, 128, 128)

#: Luminance (0..255) from which a mask pixel counts as white.
MASK_THRESHOLD = 128

#: The width of the band around the kept pixels where :func:`paste_back` fades them into the drawn image.
DEFAULT_FEATHER_PX = 4


@dataclass(frozen=True)
class Composition:
    """The mannequin brought to the output size, with the masks that go with it.

    Attributes:
        image: RGB image of exactly the output size. Transparent mannequin pixels are already composited
            onto :data:`NEUTRAL_GREY`. The kept clothes of every result are copied from this image.
        keep: bool array (height, width); True = clothes, kept bit-exactly; False = redrawn.
        figure: bool array (height, width), True where the mannequin was opaque (alpha > 0) when the
            mannequin had an alpha channel (a cut-out), else None.
        feather_px: the band :func:`paste_back` fades the kept pixels into (0 for a kind whose ``blend`` makes the
            seam).
        blend: None, or (weight, source): uint8 arrays (height, width) and (height, width, 3); the last step of a
            result (:func:`blend_over`) lays ``source`` over it with that weight (255: ``source`` exactly, 0: the
            result untouched): a transparent foreground's alpha, a blurred mask's edge.
    """

    image: Image.Image
    keep: np.ndarray
    figure: np.ndarray | None
    feather_px: int = DEFAULT_FEATHER_PX
    blend: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.image.mode != "RGB":
            raise ValueError(f"Composition.image must be RGB, got mode {self.image.mode!r}")
        shape = (self.image.height, self.image.width)
        if self.keep.dtype != bool or self.keep.shape != shape:
            raise ValueError(f"Composition.keep must be a bool array of shape {shape}, got "
                             f"{self.keep.dtype} {self.keep.shape}")
        if self.figure is not None and (self.figure.dtype != bool or self.figure.shape != shape):
            raise ValueError(f"Composition.figure must be None or a bool array of shape {shape}, got "
                             f"{self.figure.dtype} {self.figure.shape}")

    @cached_property
    def pixels(self) -> np.ndarray:
        """:attr:`image` as a read-only uint8 array (height, width, 3), made once: every result of a batch
        takes its kept pixels from it."""
        pixels = np.asarray(self.image)
        pixels.flags.writeable = False
        return pixels

    @cached_property
    def _seams(self) -> dict[int, _Seam]:
        return {}

    def seam(self, feather_px: int) -> _Seam:
        """Where :func:`paste_back` writes on the results of this composition (its own ``keep``): computed once
        per composition and feather width, shared by every image of a batch."""
        if feather_px not in self._seams:
            self._seams[feather_px] = _Seam.of(self.keep, feather_px)
        return self._seams[feather_px]

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def normalize_mask(mask: Image.Image) -> np.ndarray:
    """Turn a clothes mask image into a bool array (True = white = clothes = kept).

    Any PIL mode is accepted (``1``, ``L``, ``RGB``, ``RGBA``, ``LA``, ``P`` with or without a transparent
    palette entry, ...). Colour is reduced to luminance (ITU-R 601-2, PIL's ``L`` conversion). A mask with
    transparency is first composited onto black, so a fully transparent pixel is black (not clothes)
    whatever its colour, and a half-transparent white one counts by its premultiplied luminance. A pixel is
    white when that luminance is >= :data:`MASK_THRESHOLD` (128).
    """
    if _has_alpha(mask):
        la = np.asarray(mask.convert("RGBA").convert("LA"), dtype=np.uint16)
        luminance = la[..., 0] * la[..., 1] // 255
    else:
        luminance = np.asarray(mask.convert("L"), dtype=np.uint16)
    return luminance >= MASK_THRESHOLD


def _scaled_size(src_w: int, src_h: int, scale: float) -> tuple[int, int]:
    return max(1, round(src_w * scale)), max(1, round(src_h * scale))


def fit_geometry(
    img: Image.Image,
    width: int,
    height: int,
    mode: ResizeMode,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
    fill: Literal["edge"] | int | tuple[int, ...] = "edge",
) -> Image.Image:
    """Bring ``img`` to exactly ``width`` x ``height`` by the PICPIK ResizeMode ``mode``.

    * ``JustResize``: stretch to width x height (the aspect ratio is not kept).
    * ``CropAndResize``: scale (keeping the aspect ratio) so the image covers width x height, then crop the
      centre.
    * ``ResizeAndFill``: scale (keeping the aspect ratio) so the image fits inside width x height, centre it,
      and fill the margins with ``fill``: ``"edge"`` replicates the border pixels outward (edge extension;
      what the mannequin photo and its alpha channel use, so the margins continue the picture instead of
      showing a flat band the model would have to redraw around), or a constant pixel value (what the
      clothes mask uses: ``0``, nothing in the margins is clothes).

    When the margin or crop is uneven, the extra pixel goes to the right/bottom. The geometry depends only on
    the image size and the target, so images of the same size (the mannequin, its clothes mask, its alpha)
    are transformed identically, whatever ``resample`` each one uses. The result has ``img``'s mode;
    palette images (``P``, ``PA``) are refused: convert them first.
    """
    if img.mode in ("P", "PA"):
        raise ValueError(f"fit_geometry needs a non-palette image, got mode {img.mode!r}; convert it first")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    src_w, src_h = img.size
    if mode == JUST_RESIZE:
        return img.resize((width, height), resample)
    if mode == CROP_AND_RESIZE:
        scaled_w, scaled_h = _scaled_size(src_w, src_h, max(width / src_w, height / src_h))
        scaled_w, scaled_h = max(scaled_w, width), max(scaled_h, height)
        left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
        return img.resize((scaled_w, scaled_h), resample).crop((left, top, left + width, top + height))
    if mode == RESIZE_AND_FILL:
        scaled_w, scaled_h = _scaled_size(src_w, src_h, min(width / src_w, height / src_h))
        scaled_w, scaled_h = min(scaled_w, width), min(scaled_h, height)
        inner = img.resize((scaled_w, scaled_h), resample)
        left, top = (width - scaled_w) // 2, (height - scaled_h) // 2
        if fill == "edge":  # OpenCV's replicated border: numpy's "edge" padding, several times faster
            arr = np.asarray(inner)
            padded = cv2.copyMakeBorder(arr, top, height - scaled_h - top, left, width - scaled_w - left,
                                        cv2.BORDER_REPLICATE)
            return Image.fromarray(padded.reshape(height, width, *arr.shape[2:]), mode=inner.mode)
        canvas = Image.new(inner.mode, (width, height), fill)
        canvas.paste(inner, (left, top))
        return canvas
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")


def _fit_bool(
    mask: np.ndarray, width: int, height: int, mode: ResizeMode, fill: Literal["edge"] | int
) -> np.ndarray:
    """Apply :func:`fit_geometry` to a bool mask: bilinear on 0/255, then threshold (smooth, still binary)."""
    as_image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    fitted = fit_geometry(as_image, width, height, mode, Image.Resampling.BILINEAR, fill=fill)
    return np.asarray(fitted) >= MASK_THRESHOLD


def prepare(
    mannequin: Image.Image,
    clothes_mask: Image.Image,
    width: int,
    height: int,
    resize_mode: ResizeMode = DEFAULT_RESIZE_MODE,
    invert_mask: bool = False,
) -> Composition:
    """Compose the mannequin photo and its clothes mask at the output size.

    1. A clothes mask of a different size than the mannequin is resized to the mannequin's size (nearest).
    2. The mask is normalised (:func:`normalize_mask`) and flipped when ``invert_mask``.
    3. A mannequin with an alpha channel is composited onto :data:`NEUTRAL_GREY`; its alpha > 0 area
       becomes :attr:`Composition.figure`.
    4. The same geometry (:func:`fit_geometry`, ``resize_mode``) is applied to the image (Lanczos, edge
       fill), the mask (bilinear + threshold, margins = not clothes) and the alpha (bilinear, edge fill:
       a figure cut by the frame continues into the margins, as the edge-extended image does).

    When the mannequin already has the output size, no resampling happens and the kept pixels are exactly
    the input's.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if clothes_mask.size != mannequin.size:
        clothes_mask = clothes_mask.resize(mannequin.size, Image.Resampling.NEAREST)
    keep = normalize_mask(clothes_mask)
    if invert_mask:
        keep = ~keep

    figure = None
    if _has_alpha(mannequin):
        rgba = mannequin.convert("RGBA")
        alpha = rgba.getchannel("A")
        background = Image.new("RGBA", rgba.size, NEUTRAL_GREY + (255,))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        fitted_alpha = fit_geometry(alpha, width, height, resize_mode, Image.Resampling.BILINEAR, fill="edge")
        figure = np.asarray(fitted_alpha) > 0
    else:
        rgb = mannequin.convert("RGB")

    return Composition(
        image=fit_geometry(rgb, width, height, resize_mode, Image.Resampling.LANCZOS, fill="edge"),
        keep=_fit_bool(keep, width, height, resize_mode, fill=0),
        figure=figure,
    )


def pad_to_multiple(comp: Composition, multiple: int) -> Composition:
    """Grow ``comp`` on the right and bottom to the next multiple of ``multiple`` in each dimension.

    Used to run a model whose sizes must be multiples of its VAE factor (8 for Stable Diffusion) at any
    output size. The image and the figure are edge-replicated; the padding is never clothes (it is redrawn).
    Cropping the result back to ``(0, 0, comp.width, comp.height)`` gives the original geometry.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    pad_w = -comp.width % multiple
    pad_h = -comp.height % multiple
    if not pad_w and not pad_h:
        return comp
    pad = [(0, pad_h), (0, pad_w)]
    image = np.pad(np.asarray(comp.image), pad + [(0, 0)], mode="edge")
    return Composition(
        image=Image.fromarray(image, mode="RGB"),
        keep=np.pad(comp.keep, pad, mode="constant", constant_values=False),
        figure=None if comp.figure is None else np.pad(comp.figure, pad, mode="edge"),
        feather_px=comp.feather_px,
    )


def crop_composition(comp: Composition, box: tuple[int, int, int, int]) -> Composition:
    """The part of ``comp`` in ``box`` (left, top, right, bottom; right and bottom exclusive), its masks with it:
    a tile of a tiled refine pass (:mod:`workers.inference.passes`)."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= comp.width and 0 <= y0 < y1 <= comp.height):
        raise ValueError(f"box {box} is not inside a {comp.width}x{comp.height} composition")
    return Composition(
        image=comp.image.crop(box),
        keep=np.ascontiguousarray(comp.keep[y0:y1, x0:x1]),
        figure=None if comp.figure is None else np.ascontiguousarray(comp.figure[y0:y1, x0:x1]),
        feather_px=comp.feather_px,
        blend=None if comp.blend is None else tuple(np.ascontiguousarray(a[y0:y1, x0:x1]) for a in comp.blend),
    )


def inpaint_mask(comp: Composition) -> Image.Image:
    """The mask to give a diffusers inpainting pipeline: mode ``L``, 255 where the model redraws (not kept)."""
    return Image.fromarray((~comp.keep).astype(np.uint8) * np.uint8(255), mode="L")


def _garment_distance(keep: np.ndarray, limit: int) -> np.ndarray:
    """Chessboard distance (in pixels) from each pixel to the garment: 0 on it, capped at ``limit + 1``.

    OpenCV's distance transform with the chessboard metric (``DIST_C``, 3x3) is exact: every distance is an
    integer number of king moves."""
    if not keep.any():
        return np.full(keep.shape, limit + 1, dtype=np.int32)
    distance = cv2.distanceTransform((~keep).astype(np.uint8), cv2.DIST_C, 3)
    return np.minimum(distance, limit + 1).astype(np.int32)


@dataclass(frozen=True)
class _Seam:
    """What :func:`paste_back` needs of a kept area: the bounding box of the kept pixels with the kept part of
    it (a 0/1 mask, as OpenCV's masked copy takes it), and the feather band around them as flat pixel indices
    with each one's weight of the source."""

    box: tuple[slice, slice]
    kept: np.ndarray
    band: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, keep: np.ndarray, feather_px: int) -> _Seam:
        rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
        if not rows.size:
            return cls((slice(0), slice(0)), np.zeros((0, 0), dtype=np.uint8), np.zeros(0, dtype=np.intp),
                       np.zeros((0, 1)))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        band = np.zeros(0, dtype=np.intp)
        weight = np.zeros((0, 1))
        if feather_px:
            # the band lies within feather_px of the kept pixels: the distances are computed on the kept box
            # grown by that much (the nearest kept pixel of a pixel there is in the box, and a king's shortest
            # path to it stays within the rectangle of the two, so the distances are the whole image's)
            height, width = keep.shape
            top, left = max(0, rows[0] - feather_px), max(0, cols[0] - feather_px)
            bottom, right = min(height, rows[-1] + 1 + feather_px), min(width, cols[-1] + 1 + feather_px)
            distance = _garment_distance(keep[top:bottom, left:right], feather_px)
            near = np.flatnonzero((distance > 0) & (distance <= feather_px))
            local_rows, local_cols = np.divmod(near, right - left)
            band = (local_rows + top) * width + (local_cols + left)
            weight = (1.0 - distance.reshape(-1)[near] / (feather_px + 1))[:, None]
        return cls(box, keep[box].astype(np.uint8), band, weight)


def paste_back(
    generated: Image.Image | np.ndarray,
    comp: Composition,
    feather_px: int | None = None,
    *,
    keep: np.ndarray | None = None,
    source: Image.Image | None = None,
) -> Image.Image:
    """:func:`paste_back_pixels` as an RGB image."""
    return Image.fromarray(paste_back_pixels(generated, comp, feather_px, keep=keep, source=source), mode="RGB")


def paste_back_pixels(
    generated: Image.Image | np.ndarray,
    comp: Composition,
    feather_px: int | None = None,
    *,
    keep: np.ndarray | None = None,
    source: Image.Image | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """Put the kept pixels (the clothes of ``comp``, by default) back into a generated image, exactly.

    ``generated``: an RGB image, or a uint8 array (height, width, 3), as a pipeline's ``output_type="np"``
    result is once scaled to 0..255. Returns the uint8 pixels (height, width, 3) of ``comp``'s size
    (``generated`` is resized to it first if needed, Lanczos):

    * on the kept pixels (``keep``, default ``comp.keep``): the pixels of ``source`` (default
      ``comp.image``), bit for bit;
    * in a band of ``feather_px`` pixels around them (chessboard distance d = 1..feather_px): a blend
      ``w * source + (1 - w) * generated`` with ``w = 1 - d / (feather_px + 1)``, so the seam fades from the
      kept pixels into the generated image; the band lies entirely outside the kept pixels, so their edge
      gets no halo;
    * everywhere else: the generated pixels, untouched.

    ``feather_px = 0`` gives a hard cut; None: the composition's own (:attr:`Composition.feather_px`). ``keep`` and
    ``source`` generalise the garment to any kept area, e.g.
    the clothes plus a background held exactly (:func:`workers.inference.inpaint.run_inpaint` with ReferStrength 1):
    ``keep`` must then contain ``comp.keep`` and ``source`` must equal ``comp.image`` there, so that the
    clothes stay exact.

    ``overwrite``: ``generated`` (a C-contiguous uint8 array of ``comp``'s size) may be written into and becomes
    the result's memory, instead of a copy of it (what a pipeline's result, converted once, can give).
    """
    if feather_px is None:
        feather_px = comp.feather_px
    if feather_px < 0:
        raise ValueError(f"feather_px must be >= 0, got {feather_px}")
    size = (comp.width, comp.height)
    if keep is not None and (keep.dtype != bool or keep.shape != comp.keep.shape):
        raise ValueError(f"keep must be a bool array of shape {comp.keep.shape}, got {keep.dtype} {keep.shape}")
    if source is not None and source.size != size:
        raise ValueError(f"source must have the composition's size {size}, got {source.size}")
    original = comp.pixels if source is None else np.asarray(source.convert("RGB"))
    seam = comp.seam(feather_px) if keep is None else _Seam.of(keep, feather_px)
    if isinstance(generated, np.ndarray):
        if generated.shape[:2] != (comp.height, comp.width):
            result = None
        elif overwrite and generated.flags.c_contiguous and generated.flags.writeable:
            result = generated
        else:
            result = generated.copy()
        generated = Image.fromarray(generated, mode="RGB") if result is None else generated
    else:
        result = None
    if result is None:
        generated = generated.convert("RGB")
        if generated.size != size:
            generated = generated.resize(size, Image.Resampling.LANCZOS)
        result = np.array(generated)
    if seam.band.size:
        # the band's pixels by flat index: a boolean mask over the whole image would be scanned per use
        flat_original, flat_result = original.reshape(-1, 3), result.reshape(-1, 3)
        blended = seam.weight * flat_original[seam.band] + (1.0 - seam.weight) * flat_result[seam.band]
        flat_result[seam.band] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if seam.kept.size:  # OpenCV's masked copy, into the result's own memory: several times numpy's copyto
        box = result[seam.box]
        copied = cv2.copyTo(original[seam.box], seam.kept, box)
        if not np.shares_memory(copied, box):  # OpenCV wrote elsewhere (a layout it could not take as it is)
            box[...] = copied
    return result


# --- background reference (Image2Image) ----------------------------------------------------------------

def fit_background(bg: Image.Image, width: int, height: int,
                   mode: ResizeMode = DEFAULT_BACKGROUND_RESIZE_MODE) -> Image.Image:
    """Bring a background reference to exactly ``width`` x ``height`` by ``Image2Image.ResizeMode``
    (:func:`fit_geometry`, Lanczos; margins of ``ResizeAndFill`` by edge extension). By default
    ``CropAndResize``: scaled (keeping its aspect ratio) to cover the whole frame and the centre cropped,
    whatever the mannequin's ResizeMode: a background has no subject that must stay whole, and neither
    stretching nor margins look like a background unless asked for.

    Returns an RGB image. A reference with transparency is composited onto :data:`NEUTRAL_GREY` first, like
    a mannequin; palette images are converted.
    """
    if _has_alpha(bg):
        rgba = bg.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, NEUTRAL_GREY + (255,)), rgba).convert("RGB")
    else:
        rgb = bg.convert("RGB")
    return fit_geometry(rgb, width, height, mode, Image.Resampling.LANCZOS)


def with_background(comp: Composition, background: Image.Image) -> Composition:
    """The starting image of an Image2Image request: ``comp`` with every pixel outside the clothes taken
    from ``background`` (brought to the composition's size by :func:`fit_background`). Same masks as
    ``comp``; the clothes pixels are ``comp.image``'s, bit for bit."""
    fitted = np.asarray(fit_background(background, comp.width, comp.height))
    start = np.where(comp.keep[..., None], np.asarray(comp.image), fitted)
    return Composition(image=Image.fromarray(start, mode="RGB"), keep=comp.keep, figure=comp.figure,
                       feather_px=comp.feather_px, blend=comp.blend)


def held_exactly(comp: Composition, background: Image.Image) -> tuple[np.ndarray, Image.Image]:
    """ReferStrength 1: the pixels a result keeps exactly (the clothes and the background, not the figure of a
    cut-out) and the image they come from (``comp`` with ``background`` outside the clothes): the ``keep`` and
    ``source`` of :func:`paste_back_pixels`."""
    start = with_background(comp, background)
    return redraw_strength(start, 1.0) == 0, start.image


def redraw_strength(comp: Composition, refer_strength: float) -> np.ndarray:
    """Per-pixel img2img strength of an Image2Image request (float32, height x width; 0 = kept as is,
    1 = drawn from pure noise):

    * the clothes (``comp.keep``): 0, they are kept (pasted back exactly);
    * the figure outside the clothes, when the mannequin was a cut-out (``comp.figure``): 1, always, so a
      person is drawn even when the background is held;
    * the background (everything else; without alpha, everything outside the clothes): ``1 - refer_strength``.
    """
    if not 0.0 <= refer_strength <= 1.0:
        raise ValueError(f"refer_strength must be between 0 and 1, got {refer_strength}")
    strength = np.full(comp.keep.shape, 1.0 - refer_strength, dtype=np.float32)
    if comp.figure is not None:
        strength[comp.figure] = 1.0
    strength[comp.keep] = 0.0
    return strength


# --- other kept areas: a transparent foreground (GenerateBackgrounds), a masked image (ModifyMaskedPixels) ---------

def _over_grey(img: Image.Image) -> Image.Image:
    """``img`` as RGB, a transparent one composited onto :data:`NEUTRAL_GREY`."""
    if not _has_alpha(img):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, NEUTRAL_GREY + (255,)), rgba).convert("RGB")


def prepare_foreground(foreground: Image.Image, width: int, height: int,
                       resize_mode: ResizeMode = DEFAULT_RESIZE_MODE) -> Composition:
    """A transparent foreground (GenerateBackgrounds) at the output size: the RGBA image fitted by ``resize_mode``
    (:func:`fit_geometry`, Lanczos on premultiplied alpha as Pillow resizes RGBA; the margins of ``ResizeAndFill``
    transparent), its pixels of alpha 255 kept (bit for bit the input's when no resizing happens), every other pixel
    drawn, and the drawn image's last step :func:`blend_over` with the foreground's alpha: a pixel of alpha 1..254 is
    ``a * foreground + (1 - a) * scene``, a transparent one the scene alone. No feather band: the alpha is the seam.
    The model starts from the foreground over :data:`NEUTRAL_GREY`."""
    fitted = fit_geometry(foreground.convert("RGBA"), width, height, resize_mode, Image.Resampling.LANCZOS, fill=0)
    pixels = np.asarray(fitted)
    alpha = np.ascontiguousarray(pixels[..., 3])
    return Composition(image=_over_grey(fitted), keep=alpha == 255, figure=None, feather_px=0,
                       blend=(alpha, np.ascontiguousarray(pixels[..., :3])))


def blur_mask(redraw: np.ndarray, blur_px: int) -> np.ndarray:
    """A bool redraw mask as uint8 0..255 whose edge fades out over ``2 * blur_px`` pixels outside it: grown by
    ``blur_px`` (a square of ``2 * blur_px + 1``), then blurred by a Gaussian of the same square (sigma
    ``blur_px / 2``). Every pixel of the mask stays 255 (what is white is redrawn entirely, however small), and a pixel
    farther than ``2 * blur_px`` from it (chessboard distance) stays 0. ``blur_px`` 0: the mask as it is."""
    soft = redraw.astype(np.uint8) * np.uint8(255)
    if blur_px <= 0:
        return soft
    size = 2 * blur_px + 1
    grown = cv2.dilate(soft, np.ones((size, size), np.uint8))
    return cv2.GaussianBlur(grown, (size, size), blur_px / 2, borderType=cv2.BORDER_REPLICATE)


def prepare_masked(image: Image.Image, mask: Image.Image | None, width: int, height: int,
                   resize_mode: ResizeMode = DEFAULT_RESIZE_MODE, invert_mask: bool = False,
                   mask_blur: int = 0) -> Composition:
    """An image and its mask (ModifyMaskedPixels) at the output size.

    1. The mask (white = redraw; None: nothing) is brought to the image's size (nearest), normalised
       (:func:`normalize_mask`) and flipped when ``invert_mask``.
    2. The image (a transparent one over :data:`NEUTRAL_GREY`) and the mask get the same geometry
       (:func:`fit_geometry`); the margins ``ResizeAndFill`` adds around the image are drawn (outpainting).
    3. The mask, within the image, fades out over ``2 * mask_blur`` pixels around it (:func:`blur_mask`: its white
       pixels stay fully redrawn); the margins are drawn fully.
    4. Kept exactly: every pixel where the blurred mask is 0 (the fitted image's, bit for bit the input's when no
       resizing happens, as for an outpainting of the image's own height or width). Drawn: the rest, then laid
       under the image with weight ``255 - blurred mask`` (:func:`blend_over`), so the blur's edge is a blend and
       no feather band is needed.
    """
    redraw = np.zeros((image.height, image.width), dtype=bool)
    if mask is not None:
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.Resampling.NEAREST)
        redraw = normalize_mask(mask)
    if invert_mask:
        redraw = ~redraw
    rgb = fit_geometry(_over_grey(image), width, height, resize_mode, Image.Resampling.LANCZOS, fill="edge")
    inside = _fit_bool(np.ones(redraw.shape, dtype=bool), width, height, resize_mode, fill=0)
    soft = blur_mask(_fit_bool(redraw, width, height, resize_mode, fill=0), mask_blur)
    soft[~inside] = 255
    pixels = np.asarray(rgb)
    return Composition(image=rgb, keep=soft == 0, figure=None, feather_px=0,
                       blend=(np.ascontiguousarray(255 - soft), pixels))


def blend_over(drawn: np.ndarray, comp: Composition) -> np.ndarray:
    """The last step of a result of ``comp``'s size (uint8, height x width x 3): ``comp.blend``'s source laid over it
    with its weight, rounded (a weight of 255 gives the source exactly, 0 leaves ``drawn``); ``drawn`` itself
    without a blend."""
    if comp.blend is None:
        return drawn
    weight, source = comp.blend
    w = weight.astype(np.uint32)[..., None]
    mixed = (w * source + (255 - w) * drawn.astype(np.uint32) + 127) // 255
    return mixed.astype(np.uint8)


# --- nothing kept: GenerateImages ----------------------------------------------------------------------------------

def prepare_blank(width: int, height: int) -> Composition:
    """The composition of a text-to-image (GenerateImages): :data:`NEUTRAL_GREY` of the output size, nothing kept,
    the whole frame redrawn (the inpainting mask all white: what a 9-channel inpainting model was trained with for
    an unconditioned frame, and for a 4-channel model exactly text-to-image). An Image2Image reference replaces the
    grey (:func:`with_background`) and holds the latents at ``1 - ReferStrength``: image-to-image."""
    return Composition(image=Image.new("RGB", (width, height), NEUTRAL_GREY),
                       keep=np.zeros((height, width), dtype=bool), figure=None, feather_px=0)
