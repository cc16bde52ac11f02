"""One RestoreFaces task, from the job message to the stored PNG, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

The stored photo (made upright by its EXIF orientation) is searched for faces by the face detector
(:mod:`workers.faces.detect`, with the Main model's ``faces.min_score`` and ``faces.min_size``); each face is redrawn
by the Main model at RestoreStrength (:func:`workers.faces.redraw.redraw_faces`: its crop at the native area, blended
back by a feathered mask), with the model's trigger words and ``faces.prompt`` (else
:data:`~workers.faces.redraw.RESTORE_PROMPT`), from the task's seed. Every pixel farther than the blend margin from a
face keeps its value, bit for bit; a photo without a face is stored unchanged. An input with alpha (RGBA, LA, P with
transparency) gives an RGBA result with its alpha exactly, any other an RGB one. TotalSteps is 0 until the faces
are found, then their steps; the time budget grows by their work.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

from app.contract.jobs import RestoreFacesJobMessage
from app.contract.limits import ModelType
from workers.faces.redraw import RESTORE_PROMPT, FaceRedraw, no_step_note, redraw_faces, restored_note, sized
from workers.lifecycle.progress import ProgressWriter
from workers.lifecycle.stored import open_input, png_bytes
from workers.lifecycle.task import Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime
from workers.submodels.spec import build_prompt


def with_faces(source: Image.Image, pixels: np.ndarray) -> Image.Image:
    """The result: ``pixels`` (uint8 RGB, the source's size) as RGB, or as RGBA with ``source``'s alpha exactly when
    it has one (an alpha band, or a transparent palette or grey colour)."""
    out = Image.fromarray(pixels, "RGB")
    if not source.has_transparency_data:
        return out
    return Image.merge("RGBA", (*out.split(), source.convert("RGBA").getchannel("A")))


def finish_photo(rt: WorkerRuntime, uid: str, watch: JobWatch, timings: Timings, progress: ProgressWriter,
                 source: Image.Image, pixels: np.ndarray, note: str) -> None:
    """End a face job (RestoreFaces, SwitchFace): its Notes line, its one result (``pixels`` over ``source``:
    :func:`with_faces`) stored as ``0.png``, the task Finished with the steps its redraws reported."""
    rt.store.add_note(uid, note)
    t0 = time.monotonic()
    name = rt.storage.write_result(uid, 0, png_bytes(with_faces(source, pixels), rt.settings.result_png_level))
    timings.store = time.monotonic() - t0
    finish(rt, uid, watch, [name], pipeline_s=timings.pipeline.get("pipeline_s", 0.0), steps=progress.seen or (0, 0))


def run_restore_faces_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one RestoreFaces job message to its end."""
    if not version_ok(rt, message):
        return
    job = RestoreFacesJobMessage.model_validate(message)

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        entry = rt.registry.require(job.main_model, ModelType.MAIN)
        source = open_input(rt, job.image)
        pixels = np.array(source.convert("RGB"))
        redraw = FaceRedraw(prompt=build_prompt([entry.faces.prompt or RESTORE_PROMPT], entry.trigger_words),
                            strength=job.strength, steps=entry.defaults.steps,
                            guidance_scale=entry.defaults.guidance_scale, native=entry.native_size, seed=job.seed)
        progress = ProgressWriter(rt.store, job.task_uid, rt.settings.progress_interval_s, watch)
        t0, loaded = time.monotonic(), held.load_seconds
        if redraw.steps_per_face == 0:
            note, count = no_step_note("RestoreStrength", job.strength, redraw.steps), 0
        else:
            found = rt.models.face_detector(held).detect(pixels, entry.faces.min_score)
            faces, smaller = sized(found, entry.faces.min_size)
            watch.extend(rt.settings.job_time_per_megapixel_step_s * redraw.megapixel_steps(len(faces)))
            count = 0
            if faces:
                with rt.models.vae_for(held, entry, rt.registry, False) as pipe:
                    pixels, count = redraw_faces(pipe, pixels, faces, redraw, on_step=progress,
                                                 stats=timings.pipeline)
            note = restored_note(count, len(smaller), entry.faces.min_size)
        timings.inference = time.monotonic() - t0 - (held.load_seconds - loaded)  # the detection and the redraws
        timings.load = held.load_seconds
        finish_photo(rt, job.task_uid, watch, timings, progress, source, pixels, note)
        return 1, f"{count} face(s) of a {source.width}x{source.height} photo restored"

    run_task(rt, job.task_uid, label=job.main_model, total_steps=0, budget_s=rt.settings.job_time_base_s, work=work,
             oom_message="out of GPU memory redrawing the faces: send a smaller photo")
