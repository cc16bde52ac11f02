"""One ResizeImage task, from the job message to the stored PNG, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

The stored input (made upright by its EXIF orientation) is resized by Pillow's Lanczos filter to exactly the
Width x Height asked: stretched when the aspect ratio differs (as ResizeMode JustResize does), never cropped or
padded. An input with alpha (RGBA, LA, P with transparency) gives an RGBA result, any other an RGB one. Lanczos
is the only upscaler for now (no model: the job holds nothing in the model cache).
"""
from __future__ import annotations

import time

from PIL import Image

from app.contract.jobs import ResizeJobMessage
from workers.lifecycle.stored import open_input, png_bytes
from workers.lifecycle.task import Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime


def resized(img: Image.Image, width: int, height: int) -> Image.Image:
    """``img`` as RGBA (it has alpha) or RGB, resized by Lanczos to exactly ``width`` x ``height``. RGBA is
    resized premultiplied by Pillow, so that fully transparent pixels do not bleed their colour into the edges."""
    mode = "RGBA" if img.has_transparency_data else "RGB"  # an alpha band, or a transparent palette/grey colour
    return img.convert(mode).resize((width, height), Image.Resampling.LANCZOS)


def run_resize_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one resize job message to its end."""
    if not version_ok(rt, message):
        return
    job = ResizeJobMessage.model_validate(message)

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        watch.check()
        source = open_input(rt, job.image)
        t0 = time.monotonic()
        out = resized(source, job.width, job.height)
        timings.inference = time.monotonic() - t0
        watch.check()
        t0 = time.monotonic()
        name = rt.storage.write_result(job.task_uid, 0, png_bytes(out, rt.settings.result_png_level))
        timings.store = time.monotonic() - t0
        finish(rt, job.task_uid, watch, [name], steps=(1, 1))  # keeps its Seed 0 (docs/API.md); Step 1 of 1
        return 1, f"{source.width}x{source.height} -> {out.width}x{out.height} {out.mode} by Lanczos"

    run_task(rt, job.task_uid, label="resize", total_steps=1, budget_s=rt.settings.job_time_base_s, work=work,
             oom_message="out of memory resizing the image: ask for a smaller Width x Height")
