"""One GenerateFromMannequin task, from the job message to stored PNGs: plan, run, store, inside the life every
task has on a worker (:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

1. **plan**: the Main model, the stored inputs composed to the output size (the clothes mask made by the
   ClothesSegmenter when the request sent none: :mod:`workers.masks.clothes`), the submodels, the prompts
   (translated when asked; the models' trigger words first), a control map per control unit;
2. **run**: the warm pipeline (with the deployment's VAE, the job's submodels, its ControlNets and IP-Adapter
   units: :mod:`workers.adapters`), held in the model cache for the whole job, denoising with progress written to
   the task record;
3. **store**: the images the model's safety policy lets through (:func:`_screen`; all under ``safety: none``) as
   PNGs under the TaskUID, the task Finished.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from app.contract.codes import ErrorCode, withheld_message
from app.contract.jobs import JOB_VERSION, ControlUnitRef, ImagesJobMessage, JobMessage
from app.contract.limits import (
    CONTROL_UNITS_FIELD,
    NO_FACE_MESSAGE,
    PERSONA_CODE_FIELD,
    REFINE_UPSCALER_FIELD,
    SUBMODEL_TYPES,
    ModelType,
    is_lanczos,
)
from app.contract.personas import PersonaStore
from app.contract.registry import ModelEntry, Registry, TileOptions
from app.contract.storage import AUTO_MASK_NAME
from workers.adapters.encoder import ReferenceEmbeds, encode_reference
from workers.adapters.faceid import NoFaceFound, face_embeds, faceid_lora
from workers.adapters.ip_adapter import (
    COMPILE_OFF_NOTE,
    AdapterFitError,
    AdapterRun,
    AdapterUnit,
    adapters_applied,
    check_fits,
)
from workers.faces.redraw import FaceRedraw, no_step_note, redraw_faces, refined_note, sized
from workers.inference.compose import (
    Composition,
    blend_over,
    crop_composition,
    fit_background,
    fit_geometry,
    held_exactly,
    paste_back_pixels,
    prepare,
    redraw_strength,
)
from workers.inference.control import ControlUnits, control_pipeline, run_control_inpaint
from workers.inference.inpaint import Sampling, run_inpaint
from workers.inference.passes import Box, Passes, plan_passes, tile_weights
from workers.inference.preprocess import preprocess
from workers.inference.safety import withheld_note
from workers.inference.tileable import circular_padding
from workers.inference.upscale import UPSCALE_STEPS, SuperResolution, enlarge, upscale_megapixels, upscale_note
from workers.lifecycle.errors import JobError
from workers.lifecycle.progress import ProgressWriter
from workers.lifecycle.stored import open_input, png_bytes
from workers.lifecycle.task import Deferred, Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.masks.clothes import NoGarmentFound, clothes_mask
from workers.masks.engines import EngineError
from workers.models.cache import Lease, ModelLoadError
from workers.models.sources import local_path
from workers.personas import persona_embeds
from workers.runtime import WorkerRuntime
from workers.submodels.apply import apply_submodels
from workers.submodels.lora import patched
from workers.submodels.spec import SubmodelError, SubModelSpec, WithImage, build_prompt
from workers.translate.detect import is_english
from workers.translate.translator import TranslatorLoadError, translate_prompts

log = logging.getLogger("atelier.worker")


def tileable(job: JobMessage) -> bool:
    """Whether ``job`` draws a seamless texture (GenerateImages' Tileable): one pass at its size (an upscale and
    a tiled refine would put seams back), no face redraw, circular padding (:mod:`workers.inference.tileable`)."""
    return isinstance(job, ImagesJobMessage) and job.tileable


#: The task's note of a Tileable job.
TILEABLE_NOTE = "Tileable: drawn in one pass with circular padding (a seamless texture); faces not redrawn"


def passes_of(entry: ModelEntry | None, job: JobMessage) -> Passes:
    """The passes ``job`` runs on ``entry`` (:mod:`workers.inference.passes`); one pass for an unknown model or a
    Tileable job."""
    if entry is None or tileable(job):
        return plan_passes(job.width, job.height, (job.width, job.height), 0.0, entry.defaults.steps if entry else 0)
    strength = job.refine_strength if job.refine_strength is not None else entry.refine.strength
    return plan_passes(job.width, job.height, entry.native_size, strength, entry.defaults.steps,
                       entry.refine.tile_above)


def time_budget(settings, job: JobMessage, steps: int, passes: Passes, upscale_by: int | None = None) -> float:
    """Seconds a job may take: a base plus a share per megapixel, step and image of each pass (of each tile of a tiled
    refine pass), and with an Upscaler of factor ``upscale_by`` between the passes,
    :data:`~workers.inference.upscale.UPSCALE_STEPS` steps' worth per megapixel it writes (docs/deployment.md)."""
    work = passes.draw[0] * passes.draw[1] * steps + passes.refine_area * passes.refine_steps
    if upscale_by is not None and passes.two:
        work += UPSCALE_STEPS * upscale_megapixels(passes.draw, passes.final, upscale_by) * 1e6
    return settings.job_time_base_s + settings.job_time_per_megapixel_step_s * work / 1e6 * job.batch_size


@dataclass
class Pass:
    """What one pass draws on: its composition, background reference and control maps, at its size."""

    comp: Composition
    background: Image.Image | None
    control_maps: list[Image.Image] = field(default_factory=list)

    def crop(self, box: Box) -> Pass:
        """This pass's inputs in one tile of a tiled refine pass."""
        return Pass(crop_composition(self.comp, box), self.background.crop(box) if self.background else None,
                    [m.crop(box) for m in self.control_maps])


@dataclass
class Plan:
    """What :func:`_run` needs, every input read and checked: the passes (``draw`` is ``final`` for one pass)."""

    entry: ModelEntry
    passes: Passes
    draw: Pass
    final: Pass
    specs: list[SubModelSpec]
    prompt: str
    negative: str
    control_models: list[ModelEntry] = field(default_factory=list)
    #: the ControlNet units (``control_models``' and ``Pass.control_maps``' order) and the IP-Adapter units, with
    #: their models, in the request's order within each
    control_units: list[ControlUnitRef] = field(default_factory=list)
    adapter_units: list[tuple[ControlUnitRef, ModelEntry]] = field(default_factory=list)
    upscaler: ModelEntry | None = None      # what enlarges pass 1's images (two passes only); None: Lanczos
    #: the faces' redraw strength (:func:`face_strength`); None: the faces are not refined
    face_strength: float | None = None


def face_strength(entry: ModelEntry, job: JobMessage) -> float | None:
    """The strength the job's faces are redrawn at after its passes (docs/faces.md): the request's
    ``FaceRefine.Strength``, else the model's ``faces.strength``; None when they are not refined (``FaceRefine.Enabled``
    false, or absent and the model's ``faces.refine`` false; a Tileable job: a redrawn face is no seamless texture)."""
    if tileable(job):
        return None
    if not (job.face_refine if job.face_refine is not None else entry.faces.refine):
        return None
    return job.face_strength if job.face_strength is not None else entry.faces.strength


@dataclass(frozen=True)
class Composer:
    """How a kind of generation job composes its inputs (what it keeps, what it draws) at each size it draws at:
    ``key(job, size)``, the key of its composition in the worker's cache (None: not cached); ``reader(rt, held,
    registry, job)`` reads the job's inputs once and gives the function composing them at a size."""

    key: Callable[[JobMessage, tuple[int, int]], tuple | None]
    reader: Callable[[WorkerRuntime, Lease, Registry, JobMessage], Callable[[tuple[int, int]], Composition]]


def _mannequin_key(job: JobMessage, size: tuple[int, int]) -> tuple | None:
    if job.clothes_mask is None:  # the clothes segmenter's mask is the job's own result: not cached
        return None
    return (job.mannequin_image, job.clothes_mask, *size, job.resize_mode, job.invert_mask)


def _mannequin_reader(rt: WorkerRuntime, held: Lease, registry: Registry,
                      job: JobMessage) -> Callable[[tuple[int, int]], Composition]:
    mannequin = open_input(rt, job.mannequin_image)
    if job.clothes_mask is not None:
        mask = open_input(rt, job.clothes_mask)
    else:
        mask = _auto_clothes_mask(rt, held, registry, job, mannequin)
    return lambda size: prepare(mannequin, mask, *size, job.resize_mode, job.invert_mask)


#: GenerateFromMannequin's: the clothes kept (docs/API.md).
MANNEQUIN = Composer(_mannequin_key, _mannequin_reader)


def run_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one GenerateFromMannequin job message to its end (:func:`run_task`)."""
    run_generation(rt, message, JobMessage, MANNEQUIN)


def run_generation(rt: WorkerRuntime, message: dict, message_class: type[JobMessage], composer: Composer) -> None:
    """Run one generation job message of ``message_class`` (GenerateFromMannequin's, or a kind derived from it that
    keeps other pixels: ``composer``) to its end (:func:`run_task`)."""
    if not version_ok(rt, message):
        return
    job = message_class.model_validate(message)
    entry = rt.registry.get(job.main_model)
    steps = entry.defaults.steps if entry is not None else 0
    passes = passes_of(entry, job)

    def work(held: Lease, timings: Timings, watch: JobWatch) -> Deferred:
        return _generate(rt, held, job, timings, watch, composer)

    total_steps = (steps + passes.refine_steps * passes.refine_calls) * job.batch_size
    run_task(rt, job.task_uid, label=job.main_model, total_steps=total_steps,
             budget_s=time_budget(rt.settings, job, steps, passes), work=work,
             oom_message=f"out of GPU memory at {job.width}x{job.height} x{job.batch_size}:"
                         " lower BatchSize or Width/Height")


def prepare_ahead(rt: WorkerRuntime, message: dict, held: Lease) -> None:
    """The worker's look-ahead at the job it will most likely take next (:mod:`workers.lifecycle.overlap`): its
    stored inputs read, decoded and composed into the composition cache (when it sends its clothes mask: a mask
    the segmenter makes is the job's own work), its Main model's pipeline loaded (when it fits beside the running
    job's models) and held through ``held``. Writes
    nothing to its task. Raises whatever stops it (the job will report its own errors when it runs)."""
    if message.get("v") != JOB_VERSION:
        return
    job = JobMessage.model_validate(message)
    registry = rt.registry
    entry = registry.require(job.main_model, ModelType.MAIN)
    passes = passes_of(entry, job)
    if job.clothes_mask is not None and rt.compositions is not None:
        _compositions(rt, held, registry, job, [passes.draw, passes.final], MANNEQUIN)
    rt.models.pipeline(held, entry, registry, ahead=True)


def _generate(rt: WorkerRuntime, held: Lease, job: JobMessage, timings: Timings, watch: JobWatch,
              composer: Composer = MANNEQUIN) -> Deferred:
    """Plan and run the job, screen its images; what stores them (the worker may run it in the background while
    it takes the next job: :mod:`workers.lifecycle.overlap`)."""
    registry = rt.registry
    entry = registry.require(job.main_model, ModelType.MAIN)
    try:
        plan = _plan(rt, held, registry, entry, job, composer)
        watch.check()
        images = [blend_over(image, plan.final.comp) for image in _run(rt, held, registry, plan, job, timings, watch)]
        images = _screen(rt, held, entry, job, images)  # last: what is screened is what is stored
    except ModelLoadError as e:
        log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
    except SubmodelError as e:
        log.error("task %s: %s", job.task_uid, e)
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be applied: {e.message}") from e
    timings.load = held.load_seconds

    def store() -> tuple[int, str]:
        t0 = time.monotonic()
        names = []
        for i, img in enumerate(images):
            names.append(rt.storage.write_result(job.task_uid, i, png_bytes(img, rt.settings.result_png_level)))
        finish(rt, job.task_uid, watch, names, seed=job.seed, pipeline_s=timings.pipeline.get("pipeline_s", 0.0),
               steps=timings.steps)
        timings.store = time.monotonic() - t0
        return len(names), f"{len(names)} image(s) of {job.width}x{job.height}"

    return Deferred(store)


def _screen(rt: WorkerRuntime, held: Lease, entry: ModelEntry, job: JobMessage,
            images: list[np.ndarray]) -> list[np.ndarray]:
    """The images the Main model's safety policy lets through (``safety:``; docs/API.md "Safety"): all under
    ``none``; under ``checker``, those its checker does not flag, each flagged one named in the task's Notes, and
    Error 506 when it flags them all. Only the checker's flags are read: an image is stored as drawn or not at all."""
    checker = rt.models.safety_checker(held, entry)
    if checker is None:
        return images
    flags = checker.flags(images)
    for i, flagged in enumerate(flags):
        if flagged:
            rt.store.add_note(job.task_uid, withheld_note(i + 1, len(images)))
    kept = [image for image, flagged in zip(images, flags, strict=True) if not flagged]
    if len(kept) < len(images):
        log.info("task %s: %d of %d image(s) withheld by the safety checker of %s", job.task_uid,
                 len(images) - len(kept), len(images), entry.model_code)
    if not kept:
        raise JobError(ErrorCode.WITHHELD, withheld_message(entry.model_code, len(images)))
    return kept


# --- plan ------------------------------------------------------------------------------------------------


def _plan(rt: WorkerRuntime, held: Lease, registry: Registry, entry: ModelEntry, job: JobMessage,
          composer: Composer = MANNEQUIN) -> Plan:
    passes = passes_of(entry, job)
    rt.store.add_note(job.task_uid, passes.note())
    if tileable(job):
        rt.store.add_note(job.task_uid, TILEABLE_NOTE)
    comps = _compositions(rt, held, registry, job, [passes.draw, passes.final], composer)
    raw_background = open_input(rt, job.background_image) if job.background_image else None
    every = [(unit, registry.require(unit.control_model, ModelType.CONTROL_MODEL)) for unit in job.control_units]
    units = [(unit, model) for unit, model in every if model.adapter is None]  # ControlNets: a map per pass
    adapters = [(unit, model) for unit, model in every if model.adapter is not None]

    def at(size: tuple[int, int]) -> Pass:
        comp = comps[size]
        background = None
        if raw_background is not None:
            background = fit_background(raw_background, comp.width, comp.height, job.background_resize_mode)
        return Pass(comp, background, [_control_map(rt, held, registry, job, unit, comp) for unit, _ in units])

    final = at(passes.final)
    draw = at(passes.draw) if passes.two else final
    specs = _submodel_specs(rt, registry, job)
    trigger_words = [*entry.trigger_words, *(w for spec in specs for w in spec.trigger_words)]
    prompt, negative = _prompts(rt, held, registry, job, trigger_words)
    return Plan(entry, passes, draw, final, specs, prompt, negative, [model for _, model in units],
                [unit for unit, _ in units], adapters,
                upscaler=_upscaler(rt, registry, entry, job, passes), face_strength=face_strength(entry, job))


def _upscaler(rt: WorkerRuntime, registry: Registry, entry: ModelEntry, job: JobMessage,
              passes: Passes) -> ModelEntry | None:
    """The Upscaler between the passes: the request's ``Refine.Upscaler``, else the Main model's
    ``refine.upscaler``; None for Lanczos. A request's one that a one-pass job does not use is named in the Notes."""
    code = job.refine_upscaler if job.refine_upscaler is not None else entry.refine.upscaler
    if is_lanczos(code):
        return None
    if not passes.two:
        if job.refine_upscaler is not None:
            rt.store.add_note(job.task_uid, f"{REFINE_UPSCALER_FIELD}: {code} not used (drawn in one pass)")
        return None
    return registry.require(code, ModelType.UPSCALER)


def _compositions(rt: WorkerRuntime, held: Lease, registry: Registry, job: JobMessage,
                  sizes: list[tuple[int, int]], composer: Composer = MANNEQUIN) -> dict[tuple[int, int], Composition]:
    """The job's inputs composed (``composer``) at each of ``sizes``: from the worker's cache when a recent job had
    the same stored inputs and geometry (a shop's variants of one photo), else read and made once (and kept, with
    read-only arrays). A mask the clothes segmenter makes is made once and not cached (it is the job's own
    result)."""
    cache = rt.compositions
    comps: dict[tuple[int, int], Composition] = {}
    keys: dict[tuple[int, int], tuple] = {}
    for size in dict.fromkeys(sizes):
        key = composer.key(job, size) if cache is not None else None
        if key is not None:
            keys[size] = key
            comp = cache.get(key)
            if comp is not None:
                comps[size] = comp
    missing = [size for size in dict.fromkeys(sizes) if size not in comps]
    if not missing:
        return comps
    compose = composer.reader(rt, held, registry, job)
    for size in missing:
        comp = comps[size] = compose(size)
        if size in keys:
            for array in (comp.keep, comp.figure, *(comp.blend or ())):
                if array is not None:
                    array.flags.writeable = False
            cache.put(keys[size], comp)
    return comps


def _auto_clothes_mask(rt: WorkerRuntime, held: Lease, registry: Registry, job: JobMessage,
                       mannequin: Image.Image) -> Image.Image:
    """The clothes mask of a request without one, made by the job's ClothesSegmenter
    (:func:`workers.masks.clothes.clothes_mask`) and stored with the task's results (:data:`AUTO_MASK_NAME`,
    served as ``ClothesMaskUrl``)."""
    entry = registry.require(job.clothes_segmenter, ModelType.CLOTHES_SEGMENTER)
    engine = rt.models.mask_engine(held, entry, registry)
    classes = job.garment_classes or entry.garment_classes or list(engine.default_classes)
    try:
        mask = clothes_mask(engine, mannequin, classes)
    except EngineError as e:
        log.error("task %s: clothes segmenter %s failed: %s", job.task_uid, entry.model_code, e)
        raise JobError(ErrorCode.MODEL, f"Model [{entry.model_code}] could not be used") from e
    except NoGarmentFound:
        raise JobError(ErrorCode.BAD_INPUT, f"the clothes segmenter {entry.model_code} found no garment (classes"
                                            f" {', '.join(map(str, classes))}) on the mannequin image: send"
                                            " Mannequin.ClothesMaskIndex") from None
    out = Image.fromarray(mask, "L")
    png = png_bytes(out, rt.settings.result_png_level)
    rt.store.set_clothes_mask(job.task_uid, rt.storage.write_result(job.task_uid, AUTO_MASK_NAME, png))
    return out


def _submodel_specs(rt: WorkerRuntime, registry: Registry, job: JobMessage) -> list[SubModelSpec]:
    """The job's submodels, resolved. One at weight 0 contributes nothing, its trigger words included: it is
    left out (and the task's Notes say so)."""
    specs = []
    for ref in job.sub_models:
        entry = registry.require(ref.model_code, *SUBMODEL_TYPES)
        weight = ref.lora_weight if ref.lora_weight is not None else entry.defaults.lora_weight
        if weight == 0:
            rt.store.add_note(job.task_uid, f"SubModelList: {entry.model_code} at weight 0 left out")
            continue
        specs.append(SubModelSpec(model_code=entry.model_code, model_type=entry.model_type,
                                  path=local_path(entry, registry, rt.settings.models_dir), weight=weight,
                                  trigger_words=list(entry.trigger_words), image=ref.image))
    return specs


def _read_submodel(rt: WorkerRuntime, held: Lease, spec: SubModelSpec) -> object:
    """A submodel's parsed file from the model cache; with the request's image for a kind that takes one."""
    data = rt.models.submodel(held, spec)
    return data if spec.image is None else WithImage(data, open_input(rt, spec.image))


def _prompts(rt: WorkerRuntime, held: Lease, registry: Registry, job: JobMessage,
             trigger_words: list[str]) -> tuple[str, str]:
    """Translate (when asked) and join the prompts; the models' trigger words are added once."""
    translator = None
    if job.translate_prompts and not all(is_english(p) for p in job.positive_prompts + job.negative_prompts):
        try:
            translator = rt.models.translator(held, registry)
        except TranslatorLoadError as e:
            log.error("translator unavailable: %s", e)
    positive = translate_prompts(job.positive_prompts, translator, job.translate_prompts)
    negative = translate_prompts(job.negative_prompts, translator, job.translate_prompts)
    for note in dict.fromkeys(positive.notes + negative.notes):
        rt.store.add_note(job.task_uid, note)
    return build_prompt(positive.prompts, trigger_words), ", ".join(p for p in negative.prompts if p)


def _control_map(rt: WorkerRuntime, held: Lease, registry: Registry, job: JobMessage, unit,
                 comp: Composition) -> Image.Image:
    """The control map of one unit, made from its image in the composition's geometry."""
    if unit.image == job.mannequin_image:
        image = comp.image
    else:
        image = fit_geometry(open_input(rt, unit.image).convert("RGB"), comp.width, comp.height, job.resize_mode)
    if unit.preprocessor is None:
        return image
    pre = registry.require(unit.preprocessor, ModelType.PRE_PROCESSOR)
    try:
        return preprocess(pre.preprocessor, image, unit.resolution, local_path(pre, registry, rt.settings.models_dir),
                          rt.maps, device=rt.models.device, detectors=rt.models.detectors(held))
    except (OSError, ValueError) as e:
        log.error("pre-processor %s failed: %s", pre.model_code, e)
        raise JobError(ErrorCode.MODEL, f"Model [{pre.model_code}] could not be used") from e


# --- run -------------------------------------------------------------------------------------------------


class TwoPassProgress:
    """Both passes' steps as one count (``on_step(step, total)`` of the task): pass 1 reports its steps against its
    own total plus the refine pass's expected one; each call of the refine pass (one, or one per tile) continues
    from pass 1's total and the calls before it."""

    def __init__(self, on_step: Callable[[int, int], None], second_total: int, calls: int = 1):
        self.on_step, self.second_total, self.calls, self.first_total = on_step, second_total, calls, 0

    def first(self, step: int, total: int) -> None:
        self.first_total = total
        self.on_step(step, total + self.second_total)

    def second(self, step: int, total: int) -> None:
        self.call(0)(step, total)

    def call(self, index: int) -> Callable[[int, int], None]:
        """The progress callback of the refine pass's call ``index`` (its tile)."""

        def on_step(step: int, total: int) -> None:
            self.second_total = total * self.calls
            self.on_step(self.first_total + index * total + step, self.first_total + self.second_total)

        return on_step


def upscaled(images: list[np.ndarray], comp: Composition, model: SuperResolution | None = None,
             tile: TileOptions | None = None,
             on_tile: Callable[[], None] | None = None) -> tuple[list[np.ndarray], int]:
    """Pass 1's images brought to ``comp``'s size (Lanczos; or the Upscaler ``model`` on its ``tile``, then Lanczos:
    :func:`~workers.inference.upscale.enlarge`), the clothes pasted back exactly; and how many times the model ran
    on each."""
    tile = tile or TileOptions()
    out, applied = [], 0
    for image in images:
        big, applied = enlarge(image, comp.width, comp.height, model, tile.size, tile.overlap, on_tile)
        out.append(paste_back_pixels(big, comp, overwrite=True))
    return out, applied


def _run(rt: WorkerRuntime, held: Lease, registry: Registry, plan: Plan, job: JobMessage,
         timings: Timings, watch: JobWatch) -> list[np.ndarray]:
    """Draw the job's images: one pass, or pass 1 at the native size, upscaled, and the refine pass from it (the
    background reference then only keeps its exact pixels at ReferStrength 1: pass 1 already followed it)."""
    progress = ProgressWriter(rt.store, job.task_uid, rt.settings.progress_interval_s, watch)
    passes, steps = plan.passes, plan.entry.defaults.steps
    two = TwoPassProgress(progress, passes.refine_steps * passes.refine_calls * job.batch_size, passes.refine_calls)
    sampling = Sampling(seed=job.seed, batch_size=job.batch_size, steps=steps,
                        guidance_scale=plan.entry.defaults.guidance_scale,
                        on_step=two.first if passes.refines else progress, background=plan.draw.background,
                        refer_strength=job.refer_strength, stats=timings.pipeline, output="np")
    with rt.models.vae_for(held, plan.entry, registry, job.use_main_model_vae) as pipe, \
            apply_submodels(pipe, plan.specs, lambda spec: _read_submodel(rt, held, spec)):
        nets = [rt.models.controlnet(held, cm, registry, rt.models.dtype_of(plan.entry)) for cm in plan.control_models]
        adapters = _adapter_units(rt, held, registry, plan, pipe, job)
        model = rt.models.upscaler(held, plan.upscaler, registry) if plan.upscaler is not None else None
        if model is not None:
            watch.set_budget(time_budget(rt.settings, job, steps, passes, upscale_by=model.scale))
        loaded = held.load_seconds
        t0 = time.monotonic()
        with _faceid_loras(pipe, plan, adapters), \
                circular_padding(pipe.unet, pipe.vae, *nets) if tileable(job) else nullcontext(), \
                adapters_applied(pipe, adapters, guidance_scale=sampling.guidance_scale) as run:
            if run.compile_off:
                rt.store.add_note(job.task_uid, COMPILE_OFF_NOTE)
            images = _denoise(pipe, nets, plan, job, plan.draw, sampling, run)
            if passes.two:
                images, applied = upscaled(images, plan.final.comp, model, plan.upscaler and plan.upscaler.tiling,
                                           watch.check)
                if applied:
                    rt.store.add_note(job.task_uid, upscale_note(plan.upscaler.model_code, model.scale, applied,
                                                                 *passes.final))
            if passes.refines:
                keep_reference = job.refer_strength == 1.0
                refine = replace(sampling, on_step=two.second,
                                 background=plan.final.background if keep_reference else None)
                if passes.tiles:
                    images = _refine_tiles(pipe, nets, plan, job, refine, images, two, run)
                else:
                    images = _denoise(pipe, nets, plan, job, plan.final, refine, run, starts=images,
                                      strength=passes.strength)
            if plan.face_strength is not None:  # the faces too see the job's IP-Adapter units
                images = _refine_faces(rt, held, pipe, plan, job, images, progress, timings, watch, run)
        timings.inference = time.monotonic() - t0 - (held.load_seconds - loaded)
    timings.steps = progress.seen
    return images


def _refine_tiles(pipe, nets: list, plan: Plan, job: JobMessage, sampling: Sampling, images: list[np.ndarray],
                  progress: TwoPassProgress, run: AdapterRun) -> list[np.ndarray]:
    """The refine pass in the tiles of ``plan.passes`` (:func:`~workers.inference.passes.tile_grid`), in reading
    order: each tile of every image of the batch is redrawn in one call from the image as the tiles before left it
    (its control maps and held reference cropped with it; tile ``t`` seeded ``seed + t x BatchSize``, so no two
    tiles draw the same noise) and blended in by :func:`~workers.inference.passes.tile_weights`; the clothes (and at
    ReferStrength 1 the reference background) are pasted back exactly at the end, over the seam one call makes."""
    passes, final = plan.passes, plan.final
    images = [np.array(image) for image in images]
    for t, box in enumerate(passes.tiles):
        x0, y0, x1, y1 = box
        at = final.crop(box)
        tile = replace(sampling, seed=sampling.seed + t * job.batch_size, on_step=progress.call(t),
                       background=at.background if sampling.background is not None else None)
        crops = [image[y0:y1, x0:x1] for image in images]
        refined = _denoise(pipe, nets, plan, job, at, tile, run, starts=[np.ascontiguousarray(c) for c in crops],
                           strength=passes.strength)
        weights = tile_weights(box, passes.final)[..., None]
        for crop, new in zip(crops, refined):
            crop[...] = np.rint(crop * (1.0 - weights) + new * weights).astype(np.uint8)
    if sampling.background is None:
        return [paste_back_pixels(image, final.comp, overwrite=True) for image in images]
    keep, source = held_exactly(final.comp, sampling.background)  # ReferStrength 1, as one call keeps it
    return [paste_back_pixels(image, final.comp, keep=keep, source=source, overwrite=True) for image in images]


def _refine_faces(rt: WorkerRuntime, held: Lease, pipe, plan: Plan, job: JobMessage, images: list[np.ndarray],
                  progress: ProgressWriter, timings: Timings, watch: JobWatch,
                  run: AdapterRun | None = None) -> list[np.ndarray]:
    """The faces of the drawn images redrawn (docs/faces.md): found by the detector, those of the model's face
    sizes redrawn with the job's prompts plus ``faces.prompt`` at the face strength (image i from Seed + i), never a
    kept pixel (the clothes; with ReferStrength 1 the held background too). TotalSteps grows by their steps and the
    time budget by their work once they are found; the Notes say how many were refined."""
    entry = plan.entry
    redraw = FaceRedraw(prompt=", ".join(p for p in (plan.prompt, entry.faces.prompt) if p), negative=plan.negative,
                        strength=plan.face_strength, steps=entry.defaults.steps,
                        guidance_scale=entry.defaults.guidance_scale, native=entry.native_size, seed=job.seed)
    if redraw.steps_per_face == 0:
        rt.store.add_note(job.task_uid, no_step_note("FaceRefine.Strength", redraw.strength, redraw.steps))
        return images
    detector = rt.models.face_detector(held)
    sizes = entry.face_sizes
    found = [sized(detector.detect(image, entry.faces.min_score), *sizes) for image in images]
    todo = sum(len(chosen) for chosen, _ in found)
    watch.extend(rt.settings.job_time_per_megapixel_step_s * redraw.megapixel_steps(todo))
    keep = plan.final.comp.keep
    if plan.final.background is not None and job.refer_strength == 1.0:  # the background is held exactly too
        keep = redraw_strength(plan.final.comp, 1.0) == 0
    drawn = progress.seen[1] if progress.seen else 0  # the passes' steps, reported as they ran
    out, refined, done = [], 0, 0
    for i, (image, (chosen, _)) in enumerate(zip(images, found, strict=True)):
        def on_step(step: int, total: int, done: int = done, count: int = len(chosen)) -> None:
            per_face = total // count
            progress(drawn + done * per_face + step, drawn + todo * per_face)

        redrawn, count = redraw_faces(pipe, image, chosen, replace(redraw, seed=job.seed + i), keep=keep,
                                      on_step=on_step, stats=timings.pipeline,
                                      pipeline_kwargs=run.kwargs(pipe) if run is not None else None)
        out.append(redrawn)
        refined, done = refined + count, done + len(chosen)
    outside = sum(len(left) for _, left in found)
    rt.store.add_note(job.task_uid, refined_note(refined, outside, todo - refined, sizes))
    return out


def _denoise(pipe, nets: list, plan: Plan, job: JobMessage, at: Pass, sampling: Sampling, run: AdapterRun,
             **refine) -> list[np.ndarray]:
    """One pass of the job's pipeline (with its ControlNets and IP-Adapter units, if any) on ``at``; ``refine``:
    ``starts`` and ``strength`` of a refine pass."""
    if not nets:
        return run_inpaint(pipe, at.comp, plan.prompt, plan.negative, sampling, pipeline_kwargs=run.kwargs(pipe),
                           **refine)
    cpipe = control_pipeline(pipe, nets)
    cpipe.vae = pipe.vae  # the VAE of this job (the cached control pipeline may hold another)
    units = plan.control_units
    return run_control_inpaint(cpipe, at.comp, plan.prompt, plan.negative, sampling, ControlUnits(
        control_images=at.control_maps, controlnet_conditioning_scale=[u.control_weight for u in units],
        control_guidance_start=[u.starting_step for u in units],
        control_guidance_end=[u.ending_step for u in units]), pipeline_kwargs=run.kwargs(cpipe), **refine)


# --- IP-Adapter units -------------------------------------------------------------------------------------


def _adapter_units(rt: WorkerRuntime, held: Lease, registry: Registry, plan: Plan, pipe,
                   job: JobMessage | None = None) -> list[AdapterUnit]:
    """The job's IP-Adapter units: each adapter and its encoder from the model cache (in the Main model's dtype),
    its reference's embeddings (:func:`reference_embeds`; a FaceID adapter's: :func:`_face_reference_embeds`), its
    ControlWeight and step window. An adapter that does not fit the Main model's UNet (another width, other layers: a
    file of another family) is the model error of the unit's ControlModel."""
    dtype = rt.models.dtype_of(plan.entry)
    units = []
    for ref, model in plan.adapter_units:
        adapter = rt.models.ip_adapter(held, model, registry, dtype)
        if model.face_model is not None:
            at = next((i for i, u in enumerate(job.control_units) if u is ref), None) if job is not None else None
            embeds = _face_reference_embeds(rt, held, registry, model, ref, adapter, dtype, at)
        else:
            embeds = reference_embeds(rt, held, registry, model, ref, adapter.embeds, dtype)
        try:
            check_fits(pipe.unet, adapter, embeds)
        except AdapterFitError as e:
            log.error("IP-Adapter %s on %s: %s", model.model_code, plan.entry.model_code, e)
            raise JobError(ErrorCode.MODEL, f"Model [{model.model_code}] could not be applied: {e}") from e
        units.append(AdapterUnit(adapter, embeds, ref.control_weight, ref.starting_step, ref.ending_step))
    return units


def reference_embeds(rt: WorkerRuntime, held: Lease, registry: Registry, model: ModelEntry, ref: ControlUnitRef,
                      kind: str, dtype) -> ReferenceEmbeds:
    """What a unit's adapter reads of its reference: the unit's image (``ImageIndex``, stored by content hash)
    through the adapter's encoder, from the worker's embeddings cache when a recent job had the same image and
    encoder. A persona unit (``PersonaCode``) reads the persona's images instead: :func:`persona_embeds`, the mean
    of their embeddings, computed once and stored beside them. (A face's embeddings replace this function's result.)"""
    encoder = rt.models.image_encoder(held, model, registry, dtype)
    if ref.persona is not None:
        return persona_embeds(rt.storage, PersonaStore(rt.store.r), encoder, ref.persona, kind, rt.embeds)
    key = (encoder.key, ref.image, kind)
    embeds = rt.embeds.get(key) if rt.embeds is not None else None
    if embeds is None:
        embeds = encode_reference(encoder, open_input(rt, ref.image), kind)
        if rt.embeds is not None:
            rt.embeds.put(key, embeds)
    return embeds


def _face_reference_embeds(rt: WorkerRuntime, held: Lease, registry: Registry, model: ModelEntry,
                           ref: ControlUnitRef, adapter, dtype, at: int | None) -> ReferenceEmbeds:
    """What a FaceID unit's adapter reads of its reference (:mod:`workers.adapters.faceid`): the main face of the
    unit's image found by the worker's face detector, aligned, embedded by the entry's face model (and, faceid-plus,
    the CLIP encoder's states of the face crop); from the embeddings cache by the image's content hash. A reference
    without a face ends the task in Error 230 naming the unit's ``ImageIndex`` (``at``: the unit's place in
    ControlNetList)."""
    face_model = rt.models.face_model(held, model, registry)
    encoder = None
    if adapter.embeds == "face_id_plus":
        if model.image_encoder is None:
            raise JobError(ErrorCode.MODEL, f"Model [{model.model_code}] could not be applied: a {adapter.variant}"
                                            " file reads the face crop through a CLIP encoder: give the entry"
                                            " `image_encoder:`")
        encoder = rt.models.image_encoder(held, model, registry, dtype)
    unit = f"{CONTROL_UNITS_FIELD}[{at if at is not None else 0}]"

    def embed(image: Image.Image, where: str) -> ReferenceEmbeds:
        try:
            return face_embeds(image, rt.models.face_detector(held).detect(image), face_model, adapter.embeds, encoder)
        except NoFaceFound:
            raise JobError(ErrorCode.BAD_INPUT, f"{where}: {NO_FACE_MESSAGE}") from None

    if ref.persona is not None:  # the mean of the persona's faces' embeddings, computed once and stored
        faces_encoder = FaceEncoder(key=(face_model.key, encoder.key if encoder is not None else None),
                                    model=encoder.model if encoder is not None else FaceEncoder.CPU)
        return persona_embeds(rt.storage, PersonaStore(rt.store.r), faces_encoder, ref.persona, adapter.embeds,
                              rt.embeds, encode=lambda _, image, kind: embed(
                                  image, f"{unit}.{PERSONA_CODE_FIELD}: an image of Persona [{ref.persona}]"))
    key = (face_model.key, encoder.key if encoder is not None else None, ref.image, adapter.embeds)
    embeds = rt.embeds.get(key) if rt.embeds is not None else None
    if embeds is None:
        embeds = embed(open_input(rt, ref.image), f"{unit}.ImageIndex")
        if rt.embeds is not None:
            rt.embeds.put(key, embeds)
    return embeds


@dataclass(frozen=True)
class FaceEncoder:
    """What :func:`~workers.personas.persona_embeds` reads of an encoder, for a FaceID unit's persona: the key of
    its face model and CLIP encoder (the stored embeddings' name) and where its embeddings live (``model``'s device
    and dtype: the CLIP encoder's, or the CPU in float32 for the face model's alone)."""

    key: tuple
    model: object

    CPU: ClassVar = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)


def _faceid_loras(pipe, plan: Plan, units: list[AdapterUnit]):
    """The LoRA parts of the job's FaceID units patched into the UNet's weights for the job and put back bit for
    bit afterwards (:func:`workers.submodels.lora.patched`, at weight 1 as diffusers loads them), over the job's
    own LoRAs, once per adapter however many units name it (diffusers loads it once per file). A unit at weight 0
    or with an empty step window brings none (it computes exactly the image without it). A LoRA part that does not
    fit the UNet is the unit's model error (``SubmodelError``)."""
    loras = {}
    for (_, model), unit in zip(plan.adapter_units, units):
        if unit.adapter.lora and unit.weight != 0 and unit.end > unit.start and id(unit.adapter) not in loras:
            loras[id(unit.adapter)] = (model.model_code, faceid_lora(unit.adapter.lora, pipe.unet, unit.adapter.name),
                                       1.0)
    return patched(pipe, list(loras.values())) if loras else nullcontext()
