"""What a job reads from storage and how its results are encoded: every job kind reads its inputs and writes
its PNGs through these, so a stored input that is missing or unreadable ends any task the same way."""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from app.contract.codes import ErrorCode
from workers.lifecycle.errors import JobError
from workers.png import encode_png

if TYPE_CHECKING:  # annotations only: the runtime builds its storage on this room's RetryingStore
    from workers.runtime import WorkerRuntime

log = logging.getLogger("atelier.worker")


def png_bytes(img: Image.Image | np.ndarray, level: int) -> bytes:
    """A result as PNG at ``level`` (``ATELIER_RESULT_PNG_LEVEL``; :func:`workers.png.encode_png`, lossless)."""
    return encode_png(img, level)


def open_input(rt: WorkerRuntime, key: str) -> Image.Image:
    """The stored input ``key`` (a content hash), decoded and made upright (EXIF orientation); a missing one, or
    one that does not decode, ends the task in Error (BAD_INPUT) naming the key's first characters. The storage
    failing is not the input's fault: the worker's store tries again, then ends the task in Error 508
    (:mod:`workers.lifecycle.storage_retry`)."""
    try:
        with rt.storage.open_input(key) as f:
            data = f.read()  # read whole here: a read that fails is the storage's, a decode that fails the image's
    except FileNotFoundError as e:
        log.error("stored input %s is missing: %s", key, e)
        raise JobError(ErrorCode.BAD_INPUT, f"stored input image {key[:12]} is unreadable (missing)") from e
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # phone photos: the mask was drawn on the upright image
        return img
    except (OSError, ValueError) as e:
        log.error("stored input %s is unreadable: %s", key, e)  # the cause stays in the log
        raise JobError(ErrorCode.BAD_INPUT, f"stored input image {key[:12]} is unreadable ({type(e).__name__})"
                       ) from e
