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

NO_TRANSLATOR_NOTE = "TranslatePrompts: no translator configured, prompts passed through unchanged"


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


def _generate(job: JobMessage, settings, store: TaskStore) -> None:
    from workers.compose import prepare
    from workers.pipeline import run_inpaint

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
    comp = prepare(mannequin, mask, job.width, job.height, job.resize_mode, job.invert_mask)

    try:
        pipe = _cache().get(entry, registry)
    except ModelLoadError as e:
        raise JobError(ErrorCode.MODEL, str(e)) from e

    words = list(dict.fromkeys([*job.positive_prompts, *entry.trigger_words]))
    if job.translate_prompts:
        store.add_note(job.task_uid, NO_TRANSLATOR_NOTE)
    images = run_inpaint(pipe, comp, ", ".join(words), ", ".join(job.negative_prompts), seed=job.seed,
                         batch_size=job.batch_size, steps=steps, guidance_scale=entry.defaults.guidance_scale,
                         on_step=ProgressWriter(store, job.task_uid, settings.progress_interval_s))
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
