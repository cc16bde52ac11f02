"""GenerateBackgrounds and ModifyMaskedPixels tasks: GenerateFromMannequin's job (:mod:`workers.jobs.generate`:
passes, refine, faces, control units, submodels, safety) with another kept area, each its own :class:`Composer`:

* GenerateBackgrounds: the transparent foreground's opaque pixels kept, a scene drawn around them, its
  semi-transparent edge laid over the scene by its alpha (:func:`~workers.inference.compose.prepare_foreground`);
* ModifyMaskedPixels: the image outside its blurred mask kept, the mask and the margins an outpainting adds drawn
  (:func:`~workers.inference.compose.prepare_masked`).
"""
from __future__ import annotations

from collections.abc import Callable

from app.contract.jobs import BackgroundsJobMessage, JobMessage, ModifyJobMessage
from app.contract.registry import Registry
from workers.inference.compose import Composition, prepare_foreground, prepare_masked
from workers.jobs.generate import Composer, run_generation
from workers.lifecycle.stored import open_input
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime


def _foreground_reader(rt: WorkerRuntime, held: Lease, registry: Registry,
                       job: JobMessage) -> Callable[[tuple[int, int]], Composition]:
    foreground = open_input(rt, job.mannequin_image)
    return lambda size: prepare_foreground(foreground, *size, job.resize_mode)


def _masked_reader(rt: WorkerRuntime, held: Lease, registry: Registry,
                   job: ModifyJobMessage) -> Callable[[tuple[int, int]], Composition]:
    image = open_input(rt, job.mannequin_image)
    mask = open_input(rt, job.clothes_mask) if job.clothes_mask is not None else None
    return lambda size: prepare_masked(image, mask, *size, job.resize_mode, job.invert_mask, job.mask_blur)


FOREGROUND = Composer(lambda job, size: ("foreground", job.mannequin_image, *size, job.resize_mode),
                      _foreground_reader)
MASKED = Composer(lambda job, size: ("masked", job.mannequin_image, job.clothes_mask, *size, job.resize_mode,
                                     job.invert_mask, job.mask_blur), _masked_reader)


def run_backgrounds_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one GenerateBackgrounds job message to its end."""
    run_generation(rt, message, BackgroundsJobMessage, FOREGROUND)


def run_modify_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one ModifyMaskedPixels job message to its end."""
    run_generation(rt, message, ModifyJobMessage, MASKED)
