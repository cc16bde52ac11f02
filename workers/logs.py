"""The worker's logging: one format, no progress bars, no known-harmless warnings on every load.

* Progress bars: diffusers ("Loading pipeline components"), transformers ("Loading weights") and the
  Hugging Face hub draw tqdm bars into the log on every load; they are switched off.
* Known-harmless warnings, dropped by exact pattern (anything else still shows):
  - diffusers' ``AutoencoderTiny`` registers ``block_out_channels`` in its own config (the pipelines read
    it for the VAE scale factor) and then warns that the saved attribute "will be ignored" on every load;
  - a pipeline given an ``AutoencoderTiny`` where its class annotation says ``AutoencoderKL`` warns
    "Expected types for vae", though every SD pipeline runs both (the demo VAE is an ``AutoencoderTiny``).
"""
from __future__ import annotations

import logging
import os
import re

import diffusers.utils.logging
import transformers.utils.logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

HARMLESS: dict[str, tuple[re.Pattern[str], ...]] = {
    "diffusers.configuration_utils": (
        re.compile(r"^The config attributes \{'block_out_channels': \[[\d, ]*\]\} were passed to AutoencoderTiny,"
                   r" but are not expected and will be ignored"),
    ),
    "diffusers.pipelines.pipeline_utils": (
        re.compile(r"^Expected types for vae: \((<class '[\w.]*AutoencoderKL'>(, )?)+,?\),"
                   r" got <class '[\w.]*AutoencoderTiny'>"),
    ),
}


class DropHarmless(logging.Filter):
    """Drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[re.Pattern[str], ...]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def configure_worker_logging(level: int = logging.INFO) -> None:
    """Set up the worker process's logging: the format, and :func:`quiet_libraries` (idempotent)."""
    logging.basicConfig(level=level, format=FORMAT)
    quiet_libraries()


def quiet_libraries() -> None:
    """No progress bars, no known-harmless warnings from diffusers and transformers (idempotent)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    for name, patterns in HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropHarmless) for f in logger.filters):
            logger.addFilter(DropHarmless(patterns))
