"""One DescribeImages task, from the job message to its texts, with the same life as every job
(:func:`workers.lifecycle.task.run_task`: lease, watch, cancel, time budget, errors).

Each stored image (made upright by its EXIF orientation; one with alpha over white) is captioned by the Describer
(:class:`~workers.inference.describe.Describer`, in English as such models write); with a TranslateDescription
other than ``en``, the captions are translated by the Describer's translator of that language (its
``translators:``; the gateway refuses a language it has none of). The texts are the task's ``TxtList``, one per
image in ImageList's order; the task stores no image.
"""
from __future__ import annotations

import time

from app.contract.jobs import DescribeJobMessage
from app.contract.limits import DEFAULT_DESCRIBE_LANGUAGE, ModelType
from workers.lifecycle.stored import open_input
from workers.lifecycle.task import Timings, finish, run_task, version_ok
from workers.lifecycle.watch import JobWatch
from workers.models.cache import Lease
from workers.runtime import WorkerRuntime


def run_describe_job(rt: WorkerRuntime, message: dict) -> None:
    """Run one DescribeImages job message to its end."""
    if not version_ok(rt, message):
        return
    job = DescribeJobMessage.model_validate(message)

    def work(held: Lease, timings: Timings, watch: JobWatch) -> tuple[int, str]:
        entry = rt.registry.require(job.describer, ModelType.DESCRIBER)
        images = []
        for key in job.images:
            watch.check()
            images.append(open_input(rt, key))
        describer = rt.models.describer(held, entry, rt.registry)
        translator = None
        if job.language != DEFAULT_DESCRIBE_LANGUAGE:
            translator = rt.models.describe_translator(held, entry, job.language, rt.registry)
        timings.load = held.load_seconds
        t0 = time.monotonic()
        texts = describer.describe(images)
        watch.check()
        if translator is not None:
            texts = translator.translate(texts)
            rt.store.add_note(job.task_uid, f"described by {entry.model_code}, translated into {job.language} by"
                                            f" {translator.name}")
        else:
            rt.store.add_note(job.task_uid, f"described by {entry.model_code}")
        timings.inference = time.monotonic() - t0
        n = len(texts)
        finish(rt, job.task_uid, watch, [], steps=(n, n), texts=texts)
        return n, f"{n} image(s) described in {job.language}"

    run_task(rt, job.task_uid, label=job.describer, total_steps=len(job.images), budget_s=rt.settings.job_time_base_s,
             work=work, oom_message="out of memory describing the images: send fewer or smaller images")
