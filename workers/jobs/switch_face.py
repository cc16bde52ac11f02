"""One SwitchFace task, from the job message to the stored PNG, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

The stored photo (made upright by its EXIF orientation) is searched for faces by the face detector
(:mod:`workers.faces.detect`, with the Main model's ``faces.min_score``; every face it is sure of counts, whatever its
size) in reading order (:func:`workers.faces.detect.reading_order`: left to right by the boxes' left edges, then top
to bottom). Face number ``face_index`` (1-based; none: ErrorCode 230 ``RawFaceIndex 3: the image has 2 face(s)``) is
redrawn by the Main model (:func:`workers.faces.redraw.redraw_face`: its crop at the native area, img2img at
:data:`~app.contract.limits.SWITCH_FACE_STRENGTH`, blended back by the feathered mask) with the model's trigger words,
:data:`~workers.faces.redraw.SWITCH_PROMPT` and ``faces.prompt``, from the task's seed, while one IP-Adapter unit
(:mod:`workers.adapters`, the machinery of a generation's units: the cached adapter and encoder, the embeddings
cache) gives it the identity of the new face, at the adapter's configured ControlWeight over every step.

Every pixel farther than the blend margin from that face keeps its value, bit for bit (the other faces too); an
input with alpha gives an RGBA result with its alpha exactly, any other an RGB one. TotalSteps is 0 until the face
is found, then its steps; the time budget grows by its work.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from app.contract.codes import ErrorCode, face_index_message, not_adapter_message
from app.contract.jobs import ControlUnitRef, SwitchFaceJobMessage
from app.contract.limits import DEFAULT_RESOLUTION, IP_ADAPTER, SWITCH_FACE_FIELDS, SWITCH_FACE_STRENGTH, ModelType
from app.contract.registry import ModelEntry
from workers.adapters.ip_adapter import COMPILE_OFF_NOTE, AdapterFitError, AdapterUnit, adapters_applied, check_fits
from workers.faces.redraw import SWITCH_PROMPT, FaceRedraw, no_step_note, redraw_face
from workers.jobs.generate import reference_embeds
from workers.jobs.restore_faces import finish_photo
from workers.lifecycle.errors import JobError
from workers.lifecycle.progress import ProgressWriter
from workers.lifecycle.stored import open_input
from workers.lifecycle.task import Timings, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease, ModelLoadError
from workers.runtime import WorkerRuntime
from workers.submodels.spec import build_prompt

log = logging.getLogger("atelier.worker")

FACE_INDEX_FIELD = SWITCH_FACE_FIELDS[1]  # RawFaceIndex


def _face_unit(rt: WorkerRuntime, held: Lease, entry: ModelEntry, model: ModelEntry, job: SwitchFaceJobMessage,
               pipe) -> AdapterUnit:
    """The IP-Adapter unit that carries the new face: the adapter and its encoder from the model cache (in the Main
    model's dtype), the new face's embeddings (through the embeddings cache, as a generation unit's reference), the
    adapter's configured ControlWeight, every step. ErrorCode 240 for a ControlModel that is no IP-Adapter or one
    that does not fit the Main model's UNet."""
    if model.adapter != IP_ADAPTER:
        raise JobError(ErrorCode.MODEL, not_adapter_message(model.model_code, IP_ADAPTER))
    dtype = rt.models.dtype_of(entry)
    adapter = rt.models.ip_adapter(held, model, rt.registry, dtype)
    weight = model.defaults.control_weight
    ref = ControlUnitRef(image=job.new_face, preprocessor=None, resolution=DEFAULT_RESOLUTION,
                         control_model=model.model_code, control_weight=weight, starting_step=0.0, ending_step=1.0,
                         persona=job.persona)
    embeds = reference_embeds(rt, held, rt.registry, model, ref, adapter.embeds, dtype)
    try:
        check_fits(pipe.unet, adapter, embeds)
    except AdapterFitError as e:
        log.error("IP-Adapter %s on %s: %s", model.model_code, entry.model_code, e)
        raise JobError(ErrorCode.MODEL, f"Model [{model.model_code}] could not be applied: {e}") from e
    return AdapterUnit(adapter, embeds, weight)


def switched_note(index: int, found: int, adapter: str) -> str:
    """What the task's Notes say after the face was redrawn."""
    return f"switched face {index} of {found} with {adapter}"


def run_switch_face_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one SwitchFace job message to its end."""
    if not version_ok(rt, message):
        return
    job = SwitchFaceJobMessage.model_validate(message)

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        entry = rt.registry.require(job.main_model, ModelType.MAIN)
        model = rt.registry.require(job.adapter, ModelType.CONTROL_MODEL)
        source = open_input(rt, job.image)
        pixels = np.array(source.convert("RGB"))
        redraw = FaceRedraw(prompt=build_prompt([SWITCH_PROMPT, entry.faces.prompt], entry.trigger_words),
                            strength=SWITCH_FACE_STRENGTH, steps=entry.defaults.steps,
                            guidance_scale=entry.defaults.guidance_scale, native=entry.native_size, seed=job.seed)
        progress = ProgressWriter(rt.store, job.task_uid, rt.settings.progress_interval_s, watch)
        t0, loaded = time.monotonic(), held.load_seconds
        faces = rt.models.face_detector(held).detect(pixels, entry.faces.min_score)
        if job.face_index > len(faces):
            raise JobError(ErrorCode.BAD_INPUT, face_index_message(FACE_INDEX_FIELD, job.face_index, len(faces)))
        if redraw.steps_per_face == 0:
            note = no_step_note("SwitchFace's strength", redraw.strength, redraw.steps)
        else:
            watch.extend(rt.settings.job_time_per_megapixel_step_s * redraw.megapixel_steps(1))
            try:
                with rt.models.vae_for(held, entry, rt.registry, False) as pipe:
                    unit = _face_unit(rt, held, entry, model, job, pipe)
                    watch.check()
                    with adapters_applied(pipe, [unit], guidance_scale=redraw.guidance_scale) as run:
                        if run.compile_off:
                            rt.store.add_note(job.task_uid, COMPILE_OFF_NOTE)
                        redraw_face(pipe, pixels, faces[job.face_index - 1], redraw, on_step=progress,
                                    stats=timings.pipeline, pipeline_kwargs=run.kwargs(pipe))
            except ModelLoadError as e:
                log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
                raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
            note = switched_note(job.face_index, len(faces), model.model_code)
        timings.inference = time.monotonic() - t0 - (held.load_seconds - loaded)  # the detection and the redraw
        timings.load = held.load_seconds
        finish_photo(rt, job.task_uid, watch, timings, progress, source, pixels, note)
        return 1, f"face {job.face_index} of {len(faces)} of a {source.width}x{source.height} photo switched"

    run_task(rt, job.task_uid, label=job.main_model, total_steps=0, budget_s=rt.settings.job_time_base_s, work=work,
             oom_message="out of GPU memory redrawing the face: send a smaller photo")
