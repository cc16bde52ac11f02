"""One RemoveContents task, from the job message to the stored PNG, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

The stored photo (made upright by its EXIF orientation) and its Mask (white = erase; InvertMask the other way round;
brought to the photo's size by nearest neighbour) give the weight of the erased pixels (:mod:`workers.inference.erase`:
1 on the mask, feathered over MaskBlur pixels beyond it, 0 farther). The crop around it is erased by the Eraser named
(a LaMa-family file) or, with none, redrawn by the Main model's inpainting pipeline at strength 1 with an empty-scene
prompt (``limits.ERASE_PROMPT``, after the model's trigger words), from the task's seed, at the model's native area;
the result is blended in with the weight. Every pixel of weight 0 keeps its value bit for bit; an input with alpha
gives an RGBA result with its alpha exactly; an empty mask leaves the photo unchanged. The Notes say what erased.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

from app.contract.jobs import RemoveContentsJobMessage
from app.contract.limits import ERASE_NEGATIVE_PROMPT, ERASE_PROMPT, ModelType
from app.contract.registry import ModelEntry
from workers.faces.geometry import redraw_region, redraw_size
from workers.inference.compose import Composition
from workers.inference.erase import blend, erase_crop, erase_mask, feathered
from workers.inference.inpaint import Sampling, run_inpaint
from workers.jobs.restore_faces import finish_photo
from workers.lifecycle.progress import ProgressWriter
from workers.lifecycle.stored import open_input
from workers.lifecycle.task import Timings, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime
from workers.submodels.spec import build_prompt


def _inpainted(rt: WorkerRuntime, held: Lease, entry: ModelEntry, crop: np.ndarray, weight: np.ndarray, seed: int,
               progress: ProgressWriter, timings: Timings) -> np.ndarray:
    """``crop`` (uint8 h x w x 3) redrawn by the Main model ``entry`` where ``weight`` is above 0 (the fallback)."""
    h, w = weight.shape
    size = redraw_size(w, h, entry.native_size)
    start = Image.fromarray(np.ascontiguousarray(crop), "RGB").resize(size, Image.Resampling.LANCZOS)
    comp = Composition(image=start, keep=~redraw_region(weight, size), figure=None)
    sampling = Sampling(seed=seed, steps=entry.defaults.steps, guidance_scale=entry.defaults.guidance_scale,
                        on_step=progress, stats=timings.pipeline, output="np")
    with rt.models.vae_for(held, entry, rt.registry, False) as pipe:
        drawn = run_inpaint(pipe, comp, build_prompt([ERASE_PROMPT], entry.trigger_words), ERASE_NEGATIVE_PROMPT,
                            sampling)[0]
    return np.asarray(Image.fromarray(drawn, "RGB").resize((w, h), Image.Resampling.LANCZOS))


def run_remove_contents_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one RemoveContents job message to its end."""
    if not version_ok(rt, message):
        return
    job = RemoveContentsJobMessage.model_validate(message)
    settings = rt.settings

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        if job.eraser is not None:
            entry = rt.registry.require(job.eraser, ModelType.ERASER)
        else:
            entry = rt.registry.require(job.main_model, ModelType.MAIN)
        source = open_input(rt, job.image)
        pixels = np.array(source.convert("RGB"))
        mask = erase_mask(open_input(rt, job.mask), source.size, job.invert)
        weight = feathered(mask, job.mask_blur)
        box = erase_crop(weight)
        progress = ProgressWriter(rt.store, job.task_uid, settings.progress_interval_s, watch)
        t0, loaded = time.monotonic(), held.load_seconds
        if box is None:
            note, how = "the mask is empty: nothing erased", "nothing"
        else:
            left, top, right, bottom = box
            crop, part = pixels[top:bottom, left:right], weight[top:bottom, left:right]
            if job.eraser is not None:
                erased = rt.models.eraser(held, entry, rt.registry).erase(crop, part > 0)
                note = f"erased by {entry.model_code}"
            else:
                native = entry.native_size
                watch.extend(settings.job_time_per_megapixel_step_s * native[0] * native[1] / 1e6
                             * entry.defaults.steps)
                erased = _inpainted(rt, held, entry, crop, part, job.seed, progress, timings)
                note = f"erased by {entry.model_code} (inpainting with an empty-scene prompt: no Eraser named)"
            watch.check()
            full = pixels.copy()
            full[top:bottom, left:right] = erased
            pixels = blend(pixels, full, weight)
            how = f"{int(mask.sum())} masked pixel(s), crop {right - left}x{bottom - top} by {entry.model_code}"
        timings.inference = time.monotonic() - t0 - (held.load_seconds - loaded)
        timings.load = held.load_seconds
        finish_photo(rt, job.task_uid, watch, timings, progress, source, pixels, note)
        return 1, f"{source.width}x{source.height}: {how}"

    run_task(rt, job.task_uid, label=job.eraser or job.main_model or "erase", total_steps=0,
             budget_s=settings.job_time_base_s, work=work,
             oom_message="out of memory erasing: send a smaller photo or a smaller mask")
