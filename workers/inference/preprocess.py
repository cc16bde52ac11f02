"""Control maps from the composed mannequin image, made by controlnet-aux's detectors.

:func:`preprocess` turns ``Composition.image`` (the mannequin already brought to the output size, see
:func:`workers.inference.compose.prepare`) into the picture a ControlNet is conditioned on: a pose skeleton, a depth
map, edges or line art. The detector runs at ``resolution`` (controlnet-aux's ``detect_resolution`` and
``image_resolution``: the short side is scaled to it and both sides are rounded to multiples of 64), and the
map is then resized back to the image's exact width x height. controlnet-aux scales the whole frame (no
crop, no margin), so the resize back maps corner to corner and the map lines up with the composition pixel
for pixel up to the resampling: a ControlNet sees the pose exactly where the mannequin stands.

Kinds (:data:`KINDS`), with the annotator files each needs in ``annotator_dir`` (controlnet-aux's own
default file names, read by its own ``from_pretrained(local_dir)``):

===================  ======================================================  ==============================
kind                 files                                                   detector
===================  ======================================================  ==============================
``canny``            none                                                    ``CannyDetector`` (100 / 200)
``openpose``         ``body_pose_model.pth``, ``hand_pose_model.pth``,        ``OpenposeDetector``, body only
                     ``facenet.pth`` (the loader always reads all three)
``openpose_full``    the same                                                body, hands and face
``depth``            ``dpt_hybrid-midas-501f0c75.pt``                        ``MidasDetector`` (DPT-Hybrid)
``lineart``          ``sk_model.pth``, ``sk_model2.pth`` (both always read)  ``LineartDetector``
``lineart_coarse``   the same                                                ``LineartDetector(coarse)``
===================  ======================================================  ==============================

The files are checked *before* controlnet-aux is called: given a path that is not a directory its loaders
call ``hf_hub_download`` (the network), and MiDaS downloads a missing ``dpt_hybrid`` file by itself
(``basicsr``); here a missing file is a :class:`FileNotFoundError` naming it, nothing is ever downloaded.

Caching: detectors are kept in the worker's model cache (keyed by :func:`detector_key`); maps are cached
in a :class:`MapCache` (LRU, bounded in entries and bytes) by :func:`map_key`: the
SHA-256 of the image's mode, size and pixel bytes, the kind, the resolution and, for the kinds with
weights, the annotator folder (two folders with different weights give different maps).

This module imports only numpy and PIL; controlnet-aux (and with it torch, timm, OpenCV...) is imported
on the first detector load, inside :func:`load_detector`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.contract.limits import RESOLUTION_RANGE, RESOLUTION_STEP
from workers.lru import Lru

OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
MIDAS_FILES = ("dpt_hybrid-midas-501f0c75.pt",)
LINEART_FILES = ("sk_model.pth", "sk_model2.pth")


@dataclass(frozen=True)
class Kind:
    """A kind of control map: which detector makes it, from which annotator files, with which options."""

    detector: str
    files: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_weights(self) -> bool:
        return bool(self.files)


KINDS: dict[str, Kind] = {
    "canny": Kind("canny", (), {"low_threshold": 100, "high_threshold": 200}),
    "openpose": Kind("openpose", OPENPOSE_FILES, {"include_hand": False, "include_face": False}),
    "openpose_full": Kind("openpose", OPENPOSE_FILES, {"include_hand": True, "include_face": True}),
    "depth": Kind("midas", MIDAS_FILES, {}),
    "lineart": Kind("lineart", LINEART_FILES, {"coarse": False}),
    "lineart_coarse": Kind("lineart", LINEART_FILES, {"coarse": True}),
}


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown control kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def annotator_files(kind: str) -> tuple[str, ...]:
    """The file names ``kind`` needs in its annotator folder (empty for ``canny``)."""
    return _kind(kind).files


def validate_resolution(resolution: int) -> int:
    """``resolution`` if it is an int in 64..2048 and a multiple of 64, else ``ValueError``."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an integer, got {resolution!r}")
    resolution = int(resolution)
    if not RESOLUTION_RANGE.lo <= resolution <= RESOLUTION_RANGE.hi or resolution % RESOLUTION_STEP:
        raise ValueError(
            f"resolution must be a multiple of {RESOLUTION_STEP} between {RESOLUTION_RANGE.lo} and"
            f" {RESOLUTION_RANGE.hi}, got {resolution}"
        )
    return resolution


def _annotator_folder(kind: str, annotator_dir: Path | str | None) -> Path | None:
    """The resolved annotator folder of ``kind`` (``None`` for kinds without weights), after checking that
    every file its controlnet-aux loader reads is there."""
    spec = _kind(kind)
    if not spec.needs_weights:
        return None
    if annotator_dir is None:
        raise ValueError(f"control kind {kind!r} needs an annotator folder with {', '.join(spec.files)}")
    folder = Path(annotator_dir).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"annotator folder {folder} for {kind!r} does not exist (or is not a directory)")
    missing = [name for name in spec.files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"annotator folder {folder} lacks {', '.join(missing)} for {kind!r} (needs {', '.join(spec.files)})"
        )
    return folder


# --- map cache ---------------------------------------------------------------------------------------------

MapKey = tuple[str, str, int, str | None]


def map_key(image: Image.Image, kind: str, resolution: int, annotator_dir: Path | str | None = None) -> MapKey:
    """The cache key of a control map: (SHA-256 of the image's mode, size and pixel bytes, kind, resolution,
    resolved annotator folder or ``None`` for kinds without weights)."""
    spec = _kind(kind)
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    folder = str(Path(annotator_dir).expanduser().resolve()) if spec.needs_weights and annotator_dir else None
    return digest.hexdigest(), kind, int(resolution), folder


class MapCache(Lru[MapKey, Image.Image]):
    """Least-recently-used cache of control maps, bounded in entries and in bytes (the oldest go first).

    Thread-safe. Images are copied in and out, so a caller that draws on a map it got cannot change what
    the cache holds. ``hits`` and ``misses`` count :meth:`get` results.
    """

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 2**20):
        super().__init__(max_entries, max_bytes, size=lambda image: image.width * image.height * len(image.getbands()),
                         copy=Image.Image.copy)


# --- detectors ---------------------------------------------------------------------------------------------

def _import_controlnet_aux():
    """controlnet-aux, imported on first use (its ``__init__`` imports every detector: seconds, and a
    shower of deprecation warnings from timm, scipy and mediapipe that say nothing about our use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux
    return controlnet_aux


def _load_detector(detector: str, folder: Path | None, device: str) -> Any:
    aux = _import_controlnet_aux()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if detector == "canny":
            return aux.CannyDetector()
        if detector == "openpose":
            loaded = aux.OpenposeDetector.from_pretrained(str(folder))
        elif detector == "midas":
            loaded = aux.MidasDetector.from_pretrained(str(folder), model_type="dpt_hybrid")
        elif detector == "lineart":
            loaded = aux.LineartDetector.from_pretrained(str(folder))
        else:  # pragma: no cover - KINDS and this function go together
            raise ValueError(f"no loader for detector {detector!r}")
    return loaded.to(device)


def detector_key(kind: str, annotator_dir: Path | str | None = None,
                 device: str = "cpu") -> tuple[str, str | None, str]:
    """What identifies a loaded detector: (detector, resolved annotator folder, device). ``openpose`` and
    ``openpose_full`` share one detector, as do the two line-art kinds; ``canny`` has no weights and runs
    on the CPU."""
    spec = _kind(kind)
    folder = _annotator_folder(kind, annotator_dir)
    return spec.detector, None if folder is None else str(folder), "cpu" if folder is None else str(device)


def load_detector(kind: str, annotator_dir: Path | str | None = None, device: str = "cpu") -> Any:
    """The controlnet-aux detector for ``kind``, loaded from ``annotator_dir`` (its files checked first) on
    ``device``. Not cached here: the worker keeps detectors in its model cache (``workers/models``)."""
    detector, folder, device = detector_key(kind, annotator_dir, device)
    return _load_detector(detector, None if folder is None else Path(folder), device)


def _as_rgb_array(result: Any) -> np.ndarray:
    array = np.asarray(result)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def preprocess(
    kind: str,
    image: Image.Image,
    resolution: int,
    annotator_dir: Path | None = None,
    cache: MapCache | None = None,
    *,
    device: str = "cpu",
    detectors: Callable[[str, Path | None], Any] | None = None,
) -> Image.Image:
    """The ``kind`` control map of ``image`` (pass the composed image, ``Composition.image``): an RGB image
    of exactly ``image``'s size.

    The detector runs at ``resolution`` (64..2048, a multiple of 64), given as both its
    ``detect_resolution`` and its ``image_resolution``; its output is then resized (bilinear) to
    ``image``'s width x height. ``annotator_dir`` holds the detector's weights (see the module doc; not
    needed for ``canny``). With a ``cache``, a map already made for the same pixels, kind, resolution and
    folder is returned without running the detector. ``detectors(kind, folder)`` gives the detector (the
    worker's model cache); by default it is loaded for this call (:func:`load_detector`).
    """
    spec = _kind(kind)
    resolution = validate_resolution(resolution)
    rgb = image.convert("RGB")
    folder = _annotator_folder(kind, annotator_dir)
    key = map_key(rgb, kind, resolution, folder) if cache is not None else None
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached

    detector = (detectors or (lambda k, f: load_detector(k, f, device)))(kind, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = detector(
            np.asarray(rgb),
            detect_resolution=resolution,
            image_resolution=resolution,
            output_type="np",
            **spec.options,
        )
    control = Image.fromarray(_as_rgb_array(result), mode="RGB")
    if control.size != rgb.size:
        control = control.resize(rgb.size, Image.Resampling.BILINEAR)
    if cache is not None:
        cache.put(key, control)
    return control
