"""Warm-up at worker start: one short generation of each Main model at each size its ``speed:`` options list
(``warmup_sizes`` x ``warmup_batch``; the request's default size when it compiles without sizes), so that the
first job finds the model loaded, compiled for its shapes and the GPU's kernels chosen. Run by
:meth:`workers.runtime.WorkerRuntime.warm_up` (models_config/README.md "Speed": "Warm-up at worker start").
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from app.contract.limits import DEFAULT_SIZE, ModelType
from app.contract.registry import ModelEntry, Registry
from workers.inference.compose import prepare
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models.cache import ModelLoadError, is_oom

if TYPE_CHECKING:
    from workers.models.kinds import WorkerModels

log = logging.getLogger("atelier.worker.speed")

#: How long :func:`warm_up` may take in all; what is left when it runs out is skipped (and logged).
WARMUP_BUDGET_S = 900.0


@dataclass
class WarmupReport:
    """What :func:`warm_up` did: generations run (``(ModelCode, width, height, batch, seconds)``), models that
    failed (ModelCode -> reason) and generations skipped for lack of time."""

    runs: list[tuple[str, int, int, int, float]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0


def warmup_plan(entry: ModelEntry) -> list[tuple[int, int, int]]:
    """``(width, height, batch)`` generations :func:`warm_up` runs for ``entry``: every ``warmup_sizes`` x
    ``warmup_batch``; with ``compile`` on and no sizes given, the size of a request without Width/Height
    (:data:`~app.contract.limits.DEFAULT_SIZE` squared). Nothing for other models."""
    if entry.model_type != ModelType.MAIN:
        return []
    options = entry.speed
    sizes = list(options.warmup_sizes) or ([(DEFAULT_SIZE, DEFAULT_SIZE)] if options.compile else [])
    return [(w, h, b) for w, h in sizes for b in options.warmup_batch]


def warm_up(models: WorkerModels, registry: Registry, *, budget_s: float = WARMUP_BUDGET_S) -> WarmupReport:
    """Load every Main model of ``registry`` that has something to warm up (:func:`warmup_plan`) and run one
    short generation (2 denoising steps, more with DeepCache so that both of its paths run) at each planned
    size and batch, through the job's own path (:meth:`WorkerModels.vae_for`, :func:`run_inpaint`), so that
    the first job finds the model loaded, compiled for its shapes and the GPU's kernels chosen.

    Bounded: no generation starts once ``budget_s`` has passed (what is left is counted as skipped and
    logged; one that has started, a compile, is not interrupted). Never fatal: a model that fails to load or
    to generate is logged with the reason and the warm-up goes on with the next. A deployment without
    ``compile`` or ``warmup_sizes`` anywhere (the demo) returns at once, having loaded nothing. Models sharing
    one loaded pipeline are warmed once per size and batch.
    """
    report = WarmupReport()
    plans = [(entry, plan) for entry in registry.entries_of(ModelType.MAIN) if (plan := warmup_plan(entry))]
    if not plans:
        return report
    log.info("warm-up: %d generation(s) for %s", sum(len(plan) for _, plan in plans),
             ", ".join(e.model_code for e, _ in plans))
    t0 = time.monotonic()
    warm: set[tuple[int, int, int, int]] = set()
    for entry, plan in plans:
        for index, (width, height, batch) in enumerate(plan):
            if time.monotonic() - t0 > budget_s:
                report.skipped += 1
                continue
            try:
                seconds = _generate_once(models, registry, entry, width, height, batch, warm)
            except Exception as e:  # noqa: BLE001 - whatever it is, the worker must still start
                reason = f"{type(e).__name__}: {e}"
                log.error("warm-up of %s at %dx%d x%d failed (%s%s); the worker goes on", entry.model_code,
                          width, height, batch, reason, ", out of memory" if is_oom(e) else "")
                report.failed[entry.model_code] = reason
                if isinstance(e, ModelLoadError):  # the model itself is broken: its other sizes would fail too
                    report.skipped += len(plan) - index - 1
                    break
                continue
            if seconds is not None:
                report.runs.append((entry.model_code, width, height, batch, seconds))
                log.info("warm-up: %s %dx%d x%d in %.1fs", entry.model_code, width, height, batch, seconds)
    if report.skipped:
        log.warning("warm-up: %d generation(s) skipped (their model failed, or past the %.0fs budget)",
                    report.skipped, budget_s)
    log.info("warm-up done in %.1fs: %d generation(s), %d model(s) failed", time.monotonic() - t0,
             len(report.runs), len(report.failed))
    return report


def _generate_once(models: WorkerModels, registry: Registry, entry: ModelEntry, width: int, height: int,
                   batch: int, warm: set[tuple[int, int, int, int]]) -> float | None:
    """One warm-up generation of ``entry``, as a job with the request's defaults would run it; its seconds, or
    None when its pipeline is in ``warm`` at this size and batch already (then nothing is run)."""
    with models.cache.lease() as lease, models.vae_for(lease, entry, registry, False) as pipe:
        key = (id(pipe), width, height, batch)
        if key in warm:
            return None
        t = time.monotonic()
        comp = prepare(*_warmup_inputs(width, height), width, height)
        steps = max(2, entry.speed.deep_cache_interval + 1)  # with DeepCache, both of its paths run
        run_inpaint(pipe, comp, "", "", Sampling(seed=0, batch_size=batch, steps=steps,
                                                 guidance_scale=entry.defaults.guidance_scale))
        warm.add(key)
        return time.monotonic() - t


def _warmup_inputs(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """A grey mannequin with a garment (the middle half) kept: the inputs of a typical job."""
    mannequin = Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8))
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mannequin, mask
