"""One ResizeImage task, from the job message to the stored PNG, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

The stored input (made upright by its EXIF orientation) is brought to exactly the Width x Height asked: stretched
when the aspect ratio differs (as ResizeMode JustResize does), never cropped or padded. An input with alpha (RGBA,
LA, P with transparency) gives an RGBA result, any other an RGB one. Without an Upscaler (the default), by Pillow's
Lanczos filter; with one (the request's ``Upscaler``, a ModelCode of models_config), its model enlarges the colours
tile by tile as many times as the size asks, then Lanczos gives the exact size, the alpha by Lanczos alone
(:mod:`workers.inference.upscale`). The Notes say which ran: ``resized by Lanczos to WxH`` (the gateway's) or
``upscaled by <ModelCode> (x4) to WxH``.
"""
from __future__ import annotations

import logging
import time

from app.contract.codes import ErrorCode
from app.contract.jobs import ResizeJobMessage
from app.contract.limits import ModelType
from app.contract.registry import TileOptions
from workers.inference.upscale import UPSCALE_STEPS, enlarges, resize_image, upscale_megapixels, upscale_note
from workers.lifecycle.errors import JobError
from workers.lifecycle.stored import open_input, png_bytes
from workers.lifecycle.task import Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease, ModelLoadError
from workers.runtime import WorkerRuntime

log = logging.getLogger("atelier.worker")


def run_resize_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one resize job message to its end."""
    if not version_ok(rt, message):
        return
    job = ResizeJobMessage.model_validate(message)
    settings = rt.settings

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        watch.check()
        source = open_input(rt, job.image)
        model = entry = None
        if job.upscaler is not None:
            entry = rt.registry.require(job.upscaler, ModelType.UPSCALER)
        if entry is not None and enlarges(source.size, (job.width, job.height)):  # else it would not run
            try:
                model = rt.models.upscaler(held, entry, rt.registry)
            except ModelLoadError as e:
                log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
                raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
            timings.load = held.load_seconds
            work_mp = upscale_megapixels(source.size, (job.width, job.height), model.scale)
            watch.set_budget(settings.job_time_base_s
                             + settings.job_time_per_megapixel_step_s * UPSCALE_STEPS * work_mp)
        t0 = time.monotonic()
        tile = entry.tiling if entry is not None else TileOptions()
        out, applied = resize_image(source, job.width, job.height, model, tile.size, tile.overlap,
                                    on_tile=watch.check)
        timings.inference = time.monotonic() - t0
        how = "by Lanczos"
        if applied:
            rt.store.add_note(job.task_uid, upscale_note(entry.model_code, model.scale, applied, job.width,
                                                         job.height))
            how = f"by {entry.model_code} (x{model.scale}, {applied} time(s)) and Lanczos"
        elif entry is not None:
            rt.store.add_note(job.task_uid, f"resized by Lanczos to {job.width}x{job.height}: not larger than the"
                                            f" image, the Upscaler {entry.model_code} did not run")
        watch.check()
        t0 = time.monotonic()
        name = rt.storage.write_result(job.task_uid, 0, png_bytes(out, settings.result_png_level))
        timings.store = time.monotonic() - t0
        finish(rt, job.task_uid, watch, [name], steps=(1, 1))  # keeps its Seed 0 (docs/API.md); Step 1 of 1
        return 1, f"{source.width}x{source.height} -> {out.width}x{out.height} {out.mode} {how}"

    run_task(rt, job.task_uid, label=job.upscaler or "resize", total_steps=1, budget_s=settings.job_time_base_s,
             work=work, oom_message="out of memory resizing the image: ask for a smaller Width x Height (or give"
                                    " the Upscaler a smaller `tile:`)")
