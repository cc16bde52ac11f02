"""One GenerateFromMannequin task, from the job message to stored PNGs: plan, run, store.

Queuing -> Running -> Finished, or Error with a code and a one-line message (never a traceback; that
goes to the worker's log). Safe to run twice (acks_late re-delivery): a task that already ended is
skipped, and results are written under the TaskUID.

1. **plan**: the Main model, the stored inputs composed to the output size, the submodels, the prompts
   (translated when asked; the models' trigger words first), a control map per control unit;
2. **run**: the warm pipeline (with the deployment's VAE, the job's submodels, its ControlNets), held in
   the model cache for the whole job, denoising with progress written to the task record;
3. **store**: PNGs under the TaskUID, the task Finished.

Each job logs one line with its timings: queue wait, model loads, inference, store; the same timings, its
outcome and its images are counted in the worker's metrics (:func:`workers.metrics.record_job`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis
import torch
from PIL import Image, ImageOps

from app.contract.codes import ErrorCode, model_message, worker_lost_message
from app.contract.jobs import JOB_VERSION, JobMessage
from app.contract.limits import SUBMODEL_TYPES
from app.contract.registry import ModelEntry, Registry
from app.contract.storage import AUTO_MASK_NAME
from app.contract.taskstore import TaskStore
from workers.inference.compose import Composition, fit_background, fit_geometry, prepare
from workers.inference.control import control_pipeline, run_control_inpaint
from workers.inference.inpaint import run_inpaint
from workers.inference.preprocess import preprocess
from workers.masks.engines import EngineError, garment_mask
from workers.masks.refine import drop_specks
from workers.metrics import record_job
from workers.models.cache import Lease, ModelLoadError, is_oom
from workers.models.sources import local_path
from workers.png import encode_png
from workers.runtime import WorkerRuntime
from workers.submodels.apply import apply_submodels
from workers.submodels.spec import SubmodelError, SubModelSpec, build_prompt
from workers.translate.detect import is_english
from workers.translate.translator import TranslatorLoadError, translate_prompts

log = logging.getLogger("atelier.worker")


class JobError(Exception):
    """A job that cannot finish: the task ends in Error with ``code`` and ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class JobCanceled(Exception):
    """The task's owner canceled it (CancelTask): it ends Canceled."""


class JobLost(Exception):
    """The lease was lost: the task was taken for a dead worker's and runs elsewhere; this run leaves no trace."""


class JobWatch:
    """Beside a running job: its lease renewed twice a second (by the process's :class:`LeaseRenewal` thread),
    and a cancellation or a lost lease noticed; the job's step callback (:meth:`check`) turns those, and a run
    past the time budget, into exceptions at the next denoising step.

    A step that hangs (a stuck driver) cannot be interrupted from here: past twice the budget the watch stops
    renewing the lease, so the task is given to another worker (and counts a death) while this one is stuck.
    """

    RENEW_EVERY_S = 0.5

    def __init__(self, store: TaskStore, uid: str, worker: str, lease_s: float, budget_s: float):
        self.store, self.uid, self.worker, self.lease_s, self.budget_s = store, uid, worker, lease_s, budget_s
        self.started = time.monotonic()
        self.canceled = threading.Event()
        self.lost = threading.Event()

    def __enter__(self) -> JobWatch:
        RENEWAL.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        RENEWAL.discard(self)

    def renew(self) -> bool:
        """Renew the lease once (the renewal thread calls this); False once it must no longer be renewed."""
        if time.monotonic() - self.started > 2 * self.budget_s:
            log.error("task %s: stuck past twice its time budget (%.0fs); no longer renewing its lease",
                      self.uid, self.budget_s)
            return False
        try:
            state = self.store.renew(self.uid, self.worker, self.lease_s)
        except redis.RedisError as e:  # Redis restarting: the lease holds for a while, try again
            log.warning("task %s: could not renew its lease: %s", self.uid, e)
            return True
        if state == "cancel":
            self.canceled.set()
        elif state == "lost":
            self.lost.set()
            return False
        return True

    def check(self) -> None:
        """Raise at a denoising step: JobLost, JobCanceled, or JobError(TIMEOUT) past the time budget."""
        if self.lost.is_set():
            raise JobLost(self.uid)
        if self.canceled.is_set():
            raise JobCanceled(self.uid)
        elapsed = time.monotonic() - self.started
        if elapsed > self.budget_s:
            raise JobError(ErrorCode.TIMEOUT, f"ran longer than its time budget of {self.budget_s:.0f}s"
                                              " (ATELIER_JOB_TIME_BASE_S, ATELIER_JOB_TIME_PER_MEGAPIXEL_STEP_S)")


class LeaseRenewal:
    """The one thread of a process that renews the leases of its running jobs (their :class:`JobWatch`), each
    :attr:`JobWatch.RENEW_EVERY_S` after the last. One thread for the process's life rather than one per job:
    starting a thread, and waking it to join it, cost every job a fraction of a millisecond. Started on the
    first job of a process (a prefork child starts its own)."""

    def __init__(self) -> None:
        self._due: dict[JobWatch, float] = {}
        self._renewing: list[JobWatch] = []  # being renewed now, outside the lock
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, watch: JobWatch) -> None:
        with self._changed:
            self._due[watch] = time.monotonic() + watch.RENEW_EVERY_S
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="atelier-lease-renewal", daemon=True)
                self._thread.start()
            self._changed.notify()

    def discard(self, watch: JobWatch) -> None:
        """No more renewals of ``watch``: when this returns, none is under way either."""
        with self._changed:
            self._due.pop(watch, None)
            self._changed.wait_for(lambda: watch not in self._renewing)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                ready = [watch for watch, due in self._due.items() if due <= now]
                if not ready:
                    self._changed.wait(min(self._due.values()) - now if self._due else None)
                    continue
                for watch in ready:
                    self._due[watch] = now + watch.RENEW_EVERY_S
                self._renewing = ready
            done = [watch for watch in ready if not self._renew(watch)]  # Redis round trips, outside the lock
            with self._changed:
                for watch in done:
                    self._due.pop(watch, None)
                self._renewing = []
                self._changed.notify_all()

    @staticmethod
    def _renew(watch: JobWatch) -> bool:
        try:
            return watch.renew()
        except Exception:  # noqa: BLE001 - the thread renews every job's lease: it must outlive any one failure
            log.exception("task %s: lease renewal failed", watch.uid)
            return True


RENEWAL = LeaseRenewal()


def time_budget(settings, job: JobMessage, steps: int) -> float:
    """Seconds a job may take: a base plus a share per megapixel, step and image (docs/deployment.md)."""
    megapixels = job.width * job.height / 1e6
    return settings.job_time_base_s + settings.job_time_per_megapixel_step_s * megapixels * steps * job.batch_size


class ProgressWriter:
    """Writes Step/TotalSteps to the task record at most every ``interval`` seconds, the first time ``interval``
    after it was made (a job shorter than that writes no progress: its Finished comes first, and a Redis round
    trip per step is a good share of a GPU step), and lets the :class:`JobWatch` stop the job at this step."""

    def __init__(self, store: TaskStore, uid: str, interval: float, watch: JobWatch | None = None):
        self.store, self.uid, self.interval, self.watch = store, uid, interval, watch
        self._last = time.monotonic()
        #: the latest (step, total) reported: the Finished mark writes it (the task's last step is not written)
        self.seen: tuple[int, int] | None = None

    def __call__(self, step: int, total: int) -> None:
        self.seen = (step, total)
        if self.watch is not None:
            self.watch.check()
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            try:
                self.store.set_progress(self.uid, step, total)
            except redis.RedisError as e:  # Redis restarting: progress is not worth the job
                log.warning("task %s: could not write its progress: %s", self.uid, e)


@dataclass
class Timings:
    """Seconds spent by one job in each phase (``load`` counts the model loads of the plan and the run)."""

    queue_wait: float = 0.0
    load: float = 0.0
    inference: float = 0.0
    store: float = 0.0
    #: ``pipeline_s``: the part of ``inference`` spent inside the pipeline's calls (``run_inpaint``'s ``stats``)
    pipeline: dict[str, float] = field(default_factory=dict)
    #: the last (Step, TotalSteps) of the run, written with the Finished mark
    steps: tuple[int, int] | None = None

    def line(self) -> str:
        return (f"queue wait {self.queue_wait:.2f}s, load {self.load:.2f}s, inference {self.inference:.2f}s,"
                f" store {self.store:.2f}s")


@dataclass
class Plan:
    """What :func:`_run` needs, every input read and checked."""

    entry: ModelEntry
    comp: Composition
    background: Image.Image | None
    specs: list[SubModelSpec]
    prompt: str
    negative: str
    control_maps: list[Image.Image] = field(default_factory=list)
    control_models: list[ModelEntry] = field(default_factory=list)


def version_ok(rt: WorkerRuntime, message: dict) -> bool:
    """Whether this worker reads the job message's version; a task of another version ends in Error."""
    if message.get("v") == JOB_VERSION:
        return True
    uid = str(message.get("task_uid", ""))
    log.error("task %s: job message version %r not supported (want %d)", uid, message.get("v"), JOB_VERSION)
    if uid and rt.store.get(uid):
        rt.store.mark_error(uid, ErrorCode.UNSUPPORTED_JOB, f"job message version {message.get('v')} not supported")
        record_job("?", "error", error_code=ErrorCode.UNSUPPORTED_JOB)
    return False


#: ``work(lease, timings, watch) -> (images stored, what the log line says of them)``
Work = Callable[[Lease, Timings, JobWatch], tuple[int, str]]


def run_task(rt: WorkerRuntime, uid: str, *, label: str, total_steps: int, budget_s: float, work: Work,
             oom_message: str) -> None:
    """The life of one task on this worker, whatever its action: take its lease (skipped when it already
    ended or runs elsewhere; ended 502 when its runs keep killing workers), watch it (lease renewal,
    cancellation, time budget), hold its models for the run, and end it: Finished by ``work``, else Canceled
    or Error with a code and a one-line message. Returns normally whatever happened, so that the worker
    takes the next job. ``label`` names the task's model in the log and the metrics."""
    store = rt.store
    state, attempt = store.start(uid, rt.worker_id, rt.settings.lease_s, total_steps,
                                 max_deaths=rt.settings.max_worker_deaths)
    if state == "poison":  # a leftover copy of its message found it after the last of its workers died
        store.mark_error(uid, ErrorCode.WORKER_LOST, worker_lost_message(attempt))
        log.error("task %s: its run killed %d workers; ended in Error", uid, attempt)
        return
    if state != "started":
        log.info("task %s: %s; not run here", uid,
                 {"ended": "already ended", "busy": "running on another worker", "missing": "expired"}[state])
        return
    rec = store.get(uid)
    timings = Timings(queue_wait=max(0.0, time.time() - rec.created_at) if rec else 0.0)
    if attempt > 1:
        store.add_note(uid, f"run again (attempt {attempt}): the worker running it before stopped")
    watch = JobWatch(store, uid, rt.worker_id, rt.settings.lease_s, budget_s)
    lease = rt.cache.lease()
    me = rt.worker_id
    count, code = 0, None
    try:
        with watch, lease:
            count, what = work(lease, timings, watch)
    except JobLost:
        log.warning("task %s: its lease was lost (taken for a dead worker's); dropped here", uid)
        outcome = "lost"
    except JobCanceled:
        log.info("task %s canceled by its owner", uid)
        outcome = "canceled" if store.mark_canceled(uid, worker=me) else "lost"
    except JobError as e:
        log.warning("task %s failed: %s", uid, e.message)
        code = e.code
        outcome = "error" if store.mark_error(uid, e.code, e.message, worker=me) else "lost"
    except Exception as e:  # noqa: BLE001 - the task must end in Error, whatever happened
        if is_oom(e):
            torch.cuda.empty_cache()
            msg = oom_message
            log.warning("task %s failed: %s (%s)", uid, msg, e)
            code = ErrorCode.OUT_OF_MEMORY
        else:
            log.exception("task %s: internal error", uid)
            code, msg = ErrorCode.INTERNAL, f"Internal error ({type(e).__name__})"
        outcome = "error" if store.mark_error(uid, code, msg, worker=me) else "lost"
    else:
        outcome = "finished"
        models = ", ".join(f"{name} ({how})" for name, how in lease.used.items())
        log.info("task %s finished: %s; models %s; %s", uid, what, models, timings.line())
    done = outcome == "finished"
    record_job(label, outcome, queue_wait=timings.queue_wait, load=lease.load_seconds,
               inference=timings.inference if done else None, store=timings.store if done else None,
               images=count if done else 0, error_code=code if outcome == "error" else None)


def run_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one GenerateFromMannequin job message to its end (:func:`run_task`)."""
    if not version_ok(rt, message):
        return
    job = JobMessage.model_validate(message)
    entry = rt.registry.get(job.main_model)
    steps = entry.defaults.steps if entry is not None else 0

    def work(lease: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        count = _generate(rt, lease, job, timings, watch)
        return count, f"{count} image(s) of {job.width}x{job.height}"

    run_task(rt, job.task_uid, label=job.main_model, total_steps=steps * job.batch_size,
             budget_s=time_budget(rt.settings, job, steps), work=work,
             oom_message=f"out of GPU memory at {job.width}x{job.height} x{job.batch_size}:"
                         " lower BatchSize or Width/Height")


def _generate(rt: WorkerRuntime, lease: Lease, job: JobMessage, timings: Timings, watch: JobWatch) -> int:
    registry = rt.registry
    entry = registry.get(job.main_model)
    if entry is None or entry.model_type != "Main":
        raise JobError(ErrorCode.MODEL, model_message(job.main_model))
    try:
        plan = _plan(rt, lease, registry, entry, job)
        watch.check()
        images = _run(rt, lease, registry, plan, job, timings, watch)
    except ModelLoadError as e:
        log.error("task %s: %s", job.task_uid, e)  # the cause (with server paths) stays in the log
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be loaded") from e
    except SubmodelError as e:
        log.error("task %s: %s", job.task_uid, e)
        raise JobError(ErrorCode.MODEL, f"Model [{e.model_code}] could not be applied: {e.message}") from e
    timings.load = lease.load_seconds
    t0 = time.monotonic()
    names = []
    for i, img in enumerate(images):
        names.append(rt.storage.write_result(job.task_uid, i, png_bytes(img, rt.settings.result_png_level)))
    watch.check()
    if not rt.store.mark_finished(job.task_uid, names, job.seed, worker=rt.worker_id,
                                  pipeline_s=timings.pipeline.get("pipeline_s", 0.0), steps=timings.steps):
        raise JobLost(job.task_uid)
    timings.store = time.monotonic() - t0
    return len(names)


# --- plan ------------------------------------------------------------------------------------------------


def _plan(rt: WorkerRuntime, lease: Lease, registry: Registry, entry: ModelEntry, job: JobMessage) -> Plan:
    comp = _composition(rt, lease, registry, job)
    background = None
    if job.background_image:
        raw = open_input(rt, job.background_image)
        background = fit_background(raw, comp.width, comp.height, job.background_resize_mode)
    specs = _submodel_specs(rt, registry, job)
    trigger_words = [*entry.trigger_words, *(w for spec in specs for w in spec.trigger_words)]
    prompt, negative = _prompts(rt, lease, registry, job, trigger_words)
    plan = Plan(entry, comp, background, specs, prompt, negative)
    for unit in job.control_units:
        plan.control_maps.append(_control_map(rt, lease, registry, job, unit, comp))
        cm = registry.get(unit.control_model)
        if cm is None or cm.model_type != "ControlModel":
            raise JobError(ErrorCode.MODEL, model_message(unit.control_model))
        plan.control_models.append(cm)
    return plan


def _composition(rt: WorkerRuntime, lease: Lease, registry: Registry, job: JobMessage) -> Composition:
    """The job's mannequin and clothes mask composed at its size: from the worker's cache when a recent job had
    the same stored inputs and geometry (a shop's variants of one photo), else read and made (and kept, with
    read-only arrays). A mask the clothes segmenter makes is not cached (it is the job's own result)."""
    cache = rt.compositions
    key = None
    if cache is not None and job.clothes_mask is not None:
        key = (job.mannequin_image, job.clothes_mask, job.width, job.height, job.resize_mode, job.invert_mask)
        comp = cache.get(key)
        if comp is not None:
            return comp
    mannequin = open_input(rt, job.mannequin_image)
    if job.clothes_mask is not None:
        mask = open_input(rt, job.clothes_mask)
    else:
        mask = _auto_clothes_mask(rt, lease, registry, job, mannequin)
    comp = prepare(mannequin, mask, job.width, job.height, job.resize_mode, job.invert_mask)
    if key is not None:
        for array in (comp.keep, comp.figure):
            if array is not None:
                array.flags.writeable = False
        cache.put(key, comp)
    return comp


def _auto_clothes_mask(rt: WorkerRuntime, lease: Lease, registry: Registry, job: JobMessage,
                       mannequin: Image.Image) -> Image.Image:
    """The clothes mask of a request without one: the job's ClothesSegmenter finds the garment classes on the
    mannequin photo (a cut-out is laid on neutral grey first, and its transparent part is never garment). The
    mask is stored with the task's results (:data:`AUTO_MASK_NAME`, served as ``ClothesMaskUrl``)."""
    entry = registry.get(job.clothes_segmenter or "")
    if entry is None or entry.model_type != "ClothesSegmenter":
        raise JobError(ErrorCode.MODEL, model_message(str(job.clothes_segmenter)))
    engine = rt.models.mask_engine(lease, entry, registry)
    rgba = mannequin.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (200, 200, 200, 255))
    flat.alpha_composite(rgba)
    try:
        labels = engine.classes(np.asarray(flat.convert("RGB")))
    except EngineError as e:
        log.error("task %s: clothes segmenter %s failed: %s", job.task_uid, entry.model_code, e)
        raise JobError(ErrorCode.MODEL, f"Model [{entry.model_code}] could not be used") from e
    classes = job.garment_classes or entry.garment_classes or list(engine.default_classes)
    mask = drop_specks(garment_mask(labels, classes))
    mask[np.asarray(rgba.getchannel("A")) < 128] = 0
    if not mask.any():
        raise JobError(ErrorCode.BAD_INPUT, f"the clothes segmenter {entry.model_code} found no garment (classes"
                                            f" {', '.join(map(str, classes))}) on the mannequin image: send"
                                            " Mannequin.ClothesMaskIndex")
    out = Image.fromarray(mask, "L")
    png = png_bytes(out, rt.settings.result_png_level)
    rt.store.set_clothes_mask(job.task_uid, rt.storage.write_result(job.task_uid, AUTO_MASK_NAME, png))
    return out


def png_bytes(img: Image.Image | np.ndarray, level: int) -> bytes:
    """A result as PNG at ``level`` (``ATELIER_RESULT_PNG_LEVEL``; :func:`workers.png.encode_png`, lossless)."""
    return encode_png(img, level)


def open_input(rt: WorkerRuntime, key: str) -> Image.Image:
    try:
        img = Image.open(rt.storage.input_path(key))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # phone photos: the mask was drawn on the upright image
        return img
    except (OSError, ValueError) as e:
        log.error("stored input %s is unreadable: %s", key, e)  # the path stays in the log
        raise JobError(ErrorCode.BAD_INPUT, f"stored input image {key[:12]} is unreadable"
                                            f" ({'missing' if isinstance(e, FileNotFoundError) else type(e).__name__})"
                       ) from e


def _submodel_specs(rt: WorkerRuntime, registry: Registry, job: JobMessage) -> list[SubModelSpec]:
    """The job's submodels, resolved. One at weight 0 contributes nothing, its trigger words included: it is
    left out (and the task's Notes say so)."""
    specs = []
    for ref in job.sub_models:
        entry = registry.get(ref.model_code)
        if entry is None or entry.model_type not in SUBMODEL_TYPES:
            raise JobError(ErrorCode.MODEL, model_message(ref.model_code))
        weight = ref.lora_weight if ref.lora_weight is not None else entry.defaults.lora_weight
        if weight == 0:
            rt.store.add_note(job.task_uid, f"SubModelList: {entry.model_code} at weight 0 left out")
            continue
        specs.append(SubModelSpec(model_code=entry.model_code, model_type=entry.model_type,
                                  path=local_path(entry, registry, rt.settings.models_dir), weight=weight,
                                  trigger_words=list(entry.trigger_words)))
    return specs


def _prompts(rt: WorkerRuntime, lease: Lease, registry: Registry, job: JobMessage,
             trigger_words: list[str]) -> tuple[str, str]:
    """Translate (when asked) and join the prompts; the models' trigger words are added once."""
    translator = None
    if job.translate_prompts and not all(is_english(p) for p in job.positive_prompts + job.negative_prompts):
        try:
            translator = rt.models.translator(lease, registry)
        except TranslatorLoadError as e:
            log.error("translator unavailable: %s", e)
    positive = translate_prompts(job.positive_prompts, translator, job.translate_prompts)
    negative = translate_prompts(job.negative_prompts, translator, job.translate_prompts)
    for note in dict.fromkeys(positive.notes + negative.notes):
        rt.store.add_note(job.task_uid, note)
    return build_prompt(positive.prompts, trigger_words), ", ".join(p for p in negative.prompts if p)


def _control_map(rt: WorkerRuntime, lease: Lease, registry: Registry, job: JobMessage, unit,
                 comp: Composition) -> Image.Image:
    """The control map of one unit, made from its image in the composition's geometry."""
    if unit.image == job.mannequin_image:
        image = comp.image
    else:
        image = fit_geometry(open_input(rt, unit.image).convert("RGB"), comp.width, comp.height, job.resize_mode)
    if unit.preprocessor is None:
        return image
    pre = registry.get(unit.preprocessor)
    if pre is None or pre.model_type != "PreProcessor":
        raise JobError(ErrorCode.MODEL, model_message(unit.preprocessor))
    try:
        return preprocess(pre.preprocessor, image, unit.resolution, local_path(pre, registry, rt.settings.models_dir),
                          rt.maps, device=rt.models.device, detectors=rt.models.detectors(lease))
    except (OSError, ValueError) as e:
        log.error("pre-processor %s failed: %s", pre.model_code, e)
        raise JobError(ErrorCode.MODEL, f"Model [{pre.model_code}] could not be used") from e


# --- run -------------------------------------------------------------------------------------------------


def _run(rt: WorkerRuntime, lease: Lease, registry: Registry, plan: Plan, job: JobMessage,
         timings: Timings, watch: JobWatch) -> list[np.ndarray]:
    progress = ProgressWriter(rt.store, job.task_uid, rt.settings.progress_interval_s, watch)
    common = dict(seed=job.seed, batch_size=job.batch_size, steps=plan.entry.defaults.steps,
                  guidance_scale=plan.entry.defaults.guidance_scale, on_step=progress,
                  background=plan.background, refer_strength=job.refer_strength, stats=timings.pipeline, output="np")
    with rt.models.vae_for(lease, plan.entry, registry, job.use_main_model_vae) as pipe, \
            apply_submodels(pipe, plan.specs, lambda spec: rt.models.submodel(lease, spec)):
        nets = [rt.models.controlnet(lease, cm, registry, rt.models.dtype_of(plan.entry)) for cm in plan.control_models]
        loaded = lease.load_seconds
        t0 = time.monotonic()
        if not nets:
            images = run_inpaint(pipe, plan.comp, plan.prompt, plan.negative, **common)
        else:
            cpipe = control_pipeline(pipe, nets)
            cpipe.vae = pipe.vae  # the VAE of this job (the cached control pipeline may hold another)
            units = job.control_units
            images = run_control_inpaint(
                cpipe, plan.comp, plan.prompt, plan.negative, control_images=plan.control_maps,
                controlnet_conditioning_scale=[u.control_weight for u in units],
                control_guidance_start=[u.starting_step for u in units],
                control_guidance_end=[u.ending_step for u in units], **common)
        timings.inference = time.monotonic() - t0 - (lease.load_seconds - loaded)
    timings.steps = progress.seen
    return images
