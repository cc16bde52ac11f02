"""ControlNet for the mannequin pipeline: the person stands exactly as the mannequin stands.

Three parts:

* :mod:`workers.control.preprocess`: control maps (``openpose``, ``depth``, ``canny``, ``lineart``, ...)
  made by controlnet-aux's detectors from the *composed* mannequin image (``Composition.image``) and
  brought back to its exact size, with annotator weights read from a local folder; detectors cached per
  process, maps in an LRU :class:`~workers.control.preprocess.MapCache`.
* :mod:`workers.control.controlnet`: :func:`load_controlnet` (diffusers folder or single file, local files
  only), :func:`control_pipeline` (a ``StableDiffusionControlNetInpaintPipeline`` that *shares* the cached
  base pipeline's modules) and :func:`run_control_inpaint` (:func:`workers.pipeline.run_inpaint` plus
  control images, ControlWeight, StartingStep and EndingStep).
* :mod:`workers.control.demo`: tiny random-weight ControlNets and annotator files, built from code, for
  demos and tests.

Importing this package is cheap: the names below are resolved on first use (PEP 562), so ``import
workers.control`` imports neither torch nor diffusers, and controlnet-aux (slow to import: it imports every
detector it has, timm included) is imported only inside the functions that run a detector or write its
weights, never at module import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # preprocess (light: numpy + PIL)
    "KINDS": "preprocess",
    "MapCache": "preprocess",
    "annotator_files": "preprocess",
    "clear_detector_cache": "preprocess",
    "get_detector": "preprocess",
    "map_key": "preprocess",
    "preprocess": "preprocess",
    "validate_resolution": "preprocess",
    # controlnet (torch + diffusers)
    "clear_control_pipeline_cache": "controlnet",
    "control_pipeline": "controlnet",
    "drop_control_pipelines": "controlnet",
    "load_controlnet": "controlnet",
    "run_control_inpaint": "controlnet",
    # demo builders (torch + diffusers; controlnet-aux inside the annotator writers)
    "ensure_demo_controlnet": "demo",
    "write_demo_annotators": "demo",
    "write_lineart_annotators": "demo",
    "write_midas_annotators": "demo",
    "write_openpose_annotators": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from workers.control.controlnet import (
        clear_control_pipeline_cache,
        control_pipeline,
        drop_control_pipelines,
        load_controlnet,
        run_control_inpaint,
    )
    from workers.control.demo import (
        ensure_demo_controlnet,
        write_demo_annotators,
        write_lineart_annotators,
        write_midas_annotators,
        write_openpose_annotators,
    )
    from workers.control.preprocess import (
        KINDS,
        MapCache,
        annotator_files,
        clear_detector_cache,
        get_detector,
        map_key,
        preprocess,
        validate_resolution,
    )
