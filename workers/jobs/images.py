"""GenerateImages tasks: GenerateFromMannequin's job (:mod:`workers.jobs.generate`: control units, submodels,
Image2Image reference, safety) with nothing kept (:func:`~workers.inference.compose.prepare_blank`: the whole frame
drawn), and with ``tileable`` a seamless texture (:mod:`workers.inference.tileable`, applied by the run)."""
from __future__ import annotations

from collections.abc import Callable

from app.contract.jobs import ImagesJobMessage, JobMessage
from app.contract.registry import Registry
from workers.inference.compose import Composition, prepare_blank
from workers.jobs.generate import Composer, run_generation
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime


def _blank_reader(rt: WorkerRuntime, held: Lease, registry: Registry,
                  job: JobMessage) -> Callable[[tuple[int, int]], Composition]:
    return lambda size: prepare_blank(*size)


BLANK = Composer(lambda job, size: None, _blank_reader)  # nothing read: nothing worth caching


def run_images_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one GenerateImages job message to its end."""
    run_generation(rt, message, ImagesJobMessage, BLANK)
