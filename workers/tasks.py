"""The job entry point: one GenerateFromMannequin task, from the job message to stored PNGs.

Queuing -> Running -> Finished, or Error with a code and a one-line message (never a traceback;
the traceback goes to the worker's log). Safe to run twice (acks_late re-delivery): a task that
already ended is skipped, and results are written under the TaskUID.
"""
from __future__ import annotations

import io
import logging
import time
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

from app.core.contract import GENERATE_TASK_NAME, JOB_VERSION, ErrorCode, JobMessage, TaskStatus
from app.core.redis_conn import get_redis
from app.core.registry import get_registry
from app.core.settings import get_settings
from app.core.storage import Storage
from app.core.taskstore import TaskStore
from workers.celery_app import celery
from workers.model_cache import ModelLoadError, PipelineCache

log = logging.getLogger("atelier.worker")


class JobError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@lru_cache
def _store() -> TaskStore:
    return TaskStore(get_redis(), get_settings().result_retention_s)


@lru_cache
def _cache() -> PipelineCache:
    return PipelineCache(get_settings())


class ProgressWriter:
    """Writes Step/TotalSteps to the task record at most every ``interval`` seconds (and at the end)."""

    def __init__(self, store: TaskStore, uid: str, interval: float):
        self.store, self.uid, self.interval = store, uid, interval
        self._last = 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if step >= total or now - self._last >= self.interval:
            self._last = now
            self.store.set_progress(self.uid, step, total)


def _open_input(storage: Storage, key: str) -> Image.Image:
    try:
        img = Image.open(storage.input_path(key))
        img.load()
        return ImageOps.exif_transpose(img)  # phone photos: the mask was drawn on the upright image
    except (OSError, ValueError) as e:
        raise JobError(ErrorCode.BAD_INPUT, f"stored input image {key[:12]} is unreadable: {e}") from e


def run_job(message: dict) -> None:
    settings = get_settings()
    store = _store()
    uid = str(message.get("task_uid", ""))
    if message.get("v") != JOB_VERSION:
        log.error("task %s: job message version %r not supported (want %d)", uid, message.get("v"), JOB_VERSION)
        if uid and store.get(uid):
            store.mark_error(uid, ErrorCode.UNSUPPORTED_JOB, f"job message version {message.get('v')} not supported")
        return
    job = JobMessage.model_validate(message)
    rec = store.get(job.task_uid)
    if rec is None or rec.status in (TaskStatus.FINISHED, TaskStatus.ERROR):
        log.info("task %s already ended or expired; skipping re-delivery", job.task_uid)
        return
    try:
        _generate(job, settings, store)
    except JobError as e:
        log.warning("task %s failed: %s", job.task_uid, e.message)
        store.mark_error(job.task_uid, e.code, e.message)
    except Exception as e:  # noqa: BLE001 - the task must end in Error, whatever happened
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            msg = f"out of GPU memory at {job.width}x{job.height} x{job.batch_size}: lower BatchSize or Width/Height"
            store.mark_error(job.task_uid, ErrorCode.OUT_OF_MEMORY, msg)
        else:
            log.exception("task %s: internal error", job.task_uid)
            store.mark_error(job.task_uid, ErrorCode.INTERNAL, f"Internal error ({type(e).__name__})")


def _translator(registry):
    """The deployment's prompt translator, loaded once per worker process (None if none configured)."""
    source = registry.translator
    if source is None:
        return None
    return _load_translator(source.path or source.demo)


@lru_cache(maxsize=2)
def _load_translator(where):
    from workers.demo_assets import demo_path
    from workers.translate import Translator

    if where == "translator":
        where = demo_path("translator", get_settings().models_dir)
    log.info("loading prompt translator from %s", where)
    return Translator.load(where)


def _prompts(job: JobMessage, registry, store: TaskStore, trigger_words: list[str]) -> tuple[str, str]:
    """Translate (when asked) and join the prompts; the models' trigger words are added once."""
    from workers.submodels import build_prompt
    from workers.translate import TranslatorLoadError, is_english, translate_prompts

    translator = None
    if job.translate_prompts and not all(is_english(p) for p in job.positive_prompts + job.negative_prompts):
        try:
            translator = _translator(registry)
        except TranslatorLoadError as e:
            log.error("translator unavailable: %s", e)
    positive = translate_prompts(job.positive_prompts, translator, job.translate_prompts)
    negative = translate_prompts(job.negative_prompts, translator, job.translate_prompts)
    for note in dict.fromkeys(positive.notes + negative.notes):
        store.add_note(job.task_uid, note)
    return build_prompt(positive.prompts, trigger_words), ", ".join(p for p in negative.prompts if p)


def _source_path(entry, registry) -> Path | None:
    """The file or folder of a non-Main model (built first for a demo source)."""
    from workers.demo_assets import demo_path

    if entry.source is None:
        return None
    if entry.source.demo is not None:
        return demo_path(entry.source.demo, get_settings().models_dir)
    return registry.resolve_path(entry)


def _submodel_specs(job: JobMessage, registry) -> list:
    from workers.submodels import SubModelSpec

    specs = []
    for ref in job.sub_models:
        entry = registry.get(ref.model_code)
        if entry is None or entry.model_type not in ("LoRA", "Embedding", "HyperNetwork"):
            raise JobError(ErrorCode.MODEL, f"Model [{ref.model_code}] not exists")
        weight = ref.lora_weight if ref.lora_weight is not None else entry.defaults.lora_weight
        specs.append(SubModelSpec(model_code=entry.model_code, model_type=entry.model_type,
                                  path=_source_path(entry, registry), weight=weight,
                                  trigger_words=list(entry.trigger_words)))
    return specs


@lru_cache
def _submodel_cache():
    from workers.submodels import SubmodelCache

    return SubmodelCache()


@lru_cache
def _map_cache():
    from workers.control.preprocess import MapCache

    return MapCache()


_controlnets: dict[str, object] = {}
MAX_CONTROLNETS = 4


def _controlnet(entry, registry):
    """A ControlModel, loaded once per worker process (a few kept; the oldest dropped)."""
    from workers.control.controlnet import drop_control_pipelines, load_controlnet

    if entry.model_code in _controlnets:
        return _controlnets[entry.model_code]
    if len(_controlnets) >= MAX_CONTROLNETS:
        old = _controlnets.pop(next(iter(_controlnets)))
        drop_control_pipelines(old)
    cache = _cache()
    try:
        net = load_controlnet(_source_path(entry, registry), cache.device, cache.dtype,
                              config=registry.resolve_config(entry))
    except Exception as e:
        raise ModelLoadError(entry.model_code, str(e)) from e
    _controlnets[entry.model_code] = net
    return net


def _control_maps(job: JobMessage, comp, registry, storage: Storage) -> list:
    """One control map per unit, made from its image in the composition's geometry."""
    from workers.compose import fit_geometry
    from workers.control.preprocess import preprocess

    maps = []
    for unit in job.control_units:
        if unit.image == job.mannequin_image:
            image = comp.image
        else:
            raw = _open_input(storage, unit.image).convert("RGB")
            image = fit_geometry(raw, comp.width, comp.height, job.resize_mode)
        if unit.preprocessor is None:
            maps.append(image)
            continue
        pre = registry.get(unit.preprocessor)
        if pre is None or pre.model_type != "PreProcessor":
            raise JobError(ErrorCode.MODEL, f"Model [{unit.preprocessor}] not exists")
        try:
            maps.append(preprocess(pre.preprocessor, image, unit.resolution, _source_path(pre, registry),
                                   _map_cache(), device=_cache().device))
        except (OSError, ValueError) as e:
            log.error("pre-processor %s failed: %s", pre.model_code, e)
            raise JobError(ErrorCode.MODEL, f"Model [{pre.model_code}] could not be used") from e
    return maps


def _generate(job: JobMessage, settings, store: TaskStore) -> None:
    from workers.compose import prepare
    from workers.pipeline import run_inpaint
    from workers.submodels import SubmodelError, apply_submodels

    registry = get_registry(settings.models_config)
    entry = registry.get(job.main_model)
    if entry is None or entry.model_type != "Main":
        raise JobError(ErrorCode.MODEL, f"Model [{job.main_model}] not exists")
    steps = entry.defaults.steps
    store.mark_running(job.task_uid, steps * job.batch_size)  # refined by the first progress write
    t0 = time.monotonic()

    storage = Storage(settings.data_dir)
    mannequin = _open_input(storage, job.mannequin_image)
    mask = _open_input(storage, job.clothes_mask)
    background = _open_input(storage, job.background_image).convert("RGB") if job.background_image else None
    comp = prepare(mannequin, mask, job.width, job.height, job.resize_mode, job.invert_mask)
    specs = _submodel_specs(job, registry)
    trigger_words = [*entry.trigger_words, *(w for spec in specs for w in spec.trigger_words)]
    prompt, negative = _prompts(job, registry, store, trigger_words)
    common = dict(seed=job.seed, batch_size=job.batch_size, steps=steps,
                  guidance_scale=entry.defaults.guidance_scale,
                  on_step=ProgressWriter(store, job.task_uid, settings.progress_interval_s),
                  background=background, refer_strength=job.refer_strength)
    try:
        maps = _control_maps(job, comp, registry, storage) if job.control_units else []
        with _cache().vae_for(entry, job.use_main_model_vae, registry) as pipe, \
                apply_submodels(pipe, specs, _submodel_cache()):
            if job.control_units:
                from workers.control.controlnet import control_pipeline, run_control_inpaint

                nets = [_controlnet(registry.get(u.control_model), registry) for u in job.control_units]
                cpipe = control_pipeline(pipe, nets)
                cpipe.vae = pipe.vae  # the VAE of this job (the cached control pipeline may hold another)
                units = job.control_units
                images = run_control_inpaint(
                    cpipe, comp, prompt, negative, control_images=maps,
                    controlnet_conditioning_scale=[u.control_weight for u in units],
                    control_guidance_start=[u.starting_step for u in units],
                    control_guidance_end=[u.ending_step for u in units], **common)
            else:
                images = run_inpaint(pipe, comp, prompt, negative, **common)
    except ModelLoadError as e:
        log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
    except SubmodelError as e:
        log.error("task %s: %s", job.task_uid, e)
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be applied: {e.message}") from e
    names = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        names.append(storage.write_result(job.task_uid, i, buf.getvalue()))
    store.mark_finished(job.task_uid, names, job.seed)
    log.info("task %s finished: %d image(s) in %.2fs", job.task_uid, len(names), time.monotonic() - t0)


@celery.task(name=GENERATE_TASK_NAME, acks_late=True)
def generate(message: dict) -> None:
    run_job(message)
