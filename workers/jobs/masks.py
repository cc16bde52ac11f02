"""One mask task (RemoveBackground, RemoveBackgroundsInBatch, ExtractContents), from the job message to
stored PNGs, with the same life as a generation (:func:`workers.lifecycle.task.run_task`: lease, watch, cancel,
time budget, errors).

For each input image: the engine's soft mask (:mod:`workers.masks.engines`), refined as the request asks
(:mod:`workers.masks.refine`), then stored as results in the contract's order: the cut-out (RGBA PNG of the
input's size, transparent background) and the mask (grey PNG, white = the object), or only the mask.
"""
from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from app.contract.codes import ErrorCode
from app.contract.jobs import MaskJobMessage
from app.contract.limits import MASK_ACTION_ENGINE_TYPE
from workers.lifecycle.errors import JobError
from workers.lifecycle.stored import open_input, png_bytes
from workers.lifecycle.task import Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.masks import refine
from workers.masks.engines import EngineError, Request
from workers.models.cache import Lease, ModelLoadError
from workers.runtime import WorkerRuntime

log = logging.getLogger("atelier.worker")

#: A mask job's time budget: ATELIER_JOB_TIME_BASE_S plus this share of it per input image beyond the first.
PER_IMAGE_SHARE = 0.25


def run_mask_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one mask job message to its end."""
    if not version_ok(rt, message):
        return
    job = MaskJobMessage.model_validate(message)
    budget = rt.settings.job_time_base_s * (1 + PER_IMAGE_SHARE * (len(job.images) - 1))

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        count = _masks(rt, held, job, timings, watch)
        return count, f"{len(job.images)} image(s) by {job.engine}"

    run_task(rt, job.task_uid, label=job.engine, total_steps=len(job.images), budget_s=budget, work=work,
             oom_message="out of GPU memory running the mask engine: send a smaller image")


def _masks(rt: WorkerRuntime, held: Lease, job: MaskJobMessage, timings: Timings, watch: JobWatch) -> int:
    registry = rt.registry  # read once: the models config as it stands for this whole job
    entry = registry.require(job.engine, MASK_ACTION_ENGINE_TYPE[job.action])
    try:
        engine = rt.models.mask_engine(held, entry, registry)
    except ModelLoadError as e:
        log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
    timings.load = held.load_seconds
    matting = refine.hair_matting_on(job.hair_optimization, entry.engine)
    names: list[str] = []
    level = rt.settings.result_png_level
    for i, key in enumerate(job.images):
        watch.check()
        image = np.asarray(open_input(rt, key).convert("RGB"))
        t0 = time.monotonic()
        req = Request(image, tuple(job.box) if job.box else None, list(job.include_points), list(job.exclude_points))
        try:
            soft = engine.soft_mask(req)
        except EngineError as e:
            log.error("task %s: engine %s failed: %s", job.task_uid, entry.model_code, e)
            raise JobError(ErrorCode.MODEL, f"Model [{entry.model_code}] could not be used") from e
        colours = None
        if matting and image.shape[0] * image.shape[1] <= refine.MATTING_MAX_PIXELS:
            alpha, colours = refine.hair_matting(image, soft, job.foreground_threshold, job.background_threshold,
                                                 job.erode_size, _pymatting())
        else:
            if matting:
                rt.store.add_note(job.task_uid, f"HairOptimization: skipped for images over"
                                                f" {refine.MATTING_MAX_PIXELS} pixels")
            alpha = refine.refine(soft, foreground=job.foreground_threshold, background=job.background_threshold,
                                  erode_size=job.erode_size)
        if not job.only_mask and colours is None:
            colours = refine.decontaminate(image, alpha)
        timings.inference += time.monotonic() - t0
        t0 = time.monotonic()
        if not job.only_mask:
            cut = Image.fromarray(refine.cutout(colours, alpha), "RGBA")
            names.append(rt.storage.write_result(job.task_uid, len(names), png_bytes(cut, level)))
        names.append(rt.storage.write_result(job.task_uid, len(names), png_bytes(Image.fromarray(alpha, "L"), level)))
        timings.store += time.monotonic() - t0
        rt.store.set_progress(job.task_uid, i + 1, len(job.images))
    finish(rt, job.task_uid, watch, names)  # a mask task keeps its Seed 0 (docs/API.md)
    return len(names)


def _pymatting():
    """PyMatting, imported when hair matting first runs (it compiles its kernels with numba)."""
    import pymatting

    return pymatting
