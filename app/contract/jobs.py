"""The contract between gateway and workers: the job message and the task record.

The job message travels through Celery; it is small (references to stored images, never pixels)
and versioned (``v``): a worker refuses a version it does not know instead of guessing.
The task record lives in Redis (see :mod:`app.contract.taskstore`).
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from app.contract.limits import (
    DEFAULT_BACKGROUND_RESIZE_MODE,
    DEFAULT_BACKGROUND_THRESHOLD,
    DEFAULT_ERODE_SIZE,
    DEFAULT_FOREGROUND_THRESHOLD,
    DEFAULT_HAIR_OPTIMIZATION,
    DEFAULT_REFER_STRENGTH,
    DEFAULT_RESIZE_MODE,
    MASK_ACTIONS,
)

JOB_VERSION = 1
GENERATE_TASK_NAME = "atelier.generate"
MASK_TASK_NAME = "atelier.mask"


def task_name_for(action: str) -> str:
    """The Celery task that runs a task of ``action`` (the recovery sends a lost job again by it)."""
    return MASK_TASK_NAME if action in MASK_ACTIONS else GENERATE_TASK_NAME


class TaskStatus(StrEnum):
    QUEUING = "Queuing"
    RUNNING = "Running"
    FINISHED = "Finished"
    ERROR = "Error"
    CANCELED = "Canceled"  # reserved for CancelTask; nothing ends a task so yet


ACTIVE_STATUSES = (TaskStatus.QUEUING, TaskStatus.RUNNING)
ENDED_STATUSES = (TaskStatus.FINISHED, TaskStatus.ERROR, TaskStatus.CANCELED)


class SubModelRef(BaseModel):
    model_code: str
    lora_weight: float | None = None


class ControlUnitRef(BaseModel):
    """One control unit, every value resolved (request, else the model's configured default)."""

    image: str                      # storage key of the image the pre-processor reads
    preprocessor: str | None        # PreProcessor ModelCode; None = the image is the control map
    resolution: int
    control_model: str              # ControlModel ModelCode
    control_weight: float
    starting_step: float
    ending_step: float


class JobMessage(BaseModel):
    """What a worker needs to run one GenerateFromMannequin task. All values already validated
    and defaulted by the gateway; image fields are storage keys (content hashes)."""

    v: int = JOB_VERSION
    task_uid: str
    main_model: str
    sub_models: list[SubModelRef] = Field(default_factory=list)
    positive_prompts: list[str] = Field(default_factory=list)
    negative_prompts: list[str] = Field(default_factory=list)
    translate_prompts: bool = True
    seed: int  # already drawn by the gateway when the request said -1
    width: int
    height: int
    batch_size: int
    use_main_model_vae: bool = False
    mannequin_image: str
    clothes_mask: str | None = None          # None: the clothes segmenter makes it on the mannequin photo
    clothes_segmenter: str | None = None     # with clothes_mask None: the ClothesSegmenter's ModelCode
    garment_classes: list[int] | None = None  # ... and the classes that count as garment (None: its own)
    resize_mode: str = DEFAULT_RESIZE_MODE
    invert_mask: bool = False
    background_image: str | None = None
    refer_strength: float = DEFAULT_REFER_STRENGTH
    background_resize_mode: str = DEFAULT_BACKGROUND_RESIZE_MODE
    control_units: list[ControlUnitRef] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class MaskJobMessage(BaseModel):
    """What a worker needs to run one mask task (RemoveBackground, RemoveBackgroundsInBatch, ExtractContents).
    Values validated and defaulted by the gateway; ``images`` are storage keys (one, or several for a batch).

    Results, in ``images`` order: the cut-out (RGBA PNG of the input's size, transparent outside the object)
    then the mask (grey PNG, white = the object), or only the mask with ``only_mask``."""

    v: int = JOB_VERSION
    task_uid: str
    action: str                              # one of limits.MASK_ACTIONS
    engine: str                              # ModelCode of the engine (BackgroundRemover / PointSegmenter)
    images: list[str]
    box: list[int] | None = None             # x1, y1, x2, y2 (RemoveBackground)
    include_points: list[tuple[int, int]] = Field(default_factory=list)   # (x, y), ExtractContents
    exclude_points: list[tuple[int, int]] = Field(default_factory=list)
    erode_size: int = DEFAULT_ERODE_SIZE
    foreground_threshold: int = DEFAULT_FOREGROUND_THRESHOLD
    background_threshold: int = DEFAULT_BACKGROUND_THRESHOLD
    hair_optimization: str = DEFAULT_HAIR_OPTIMIZATION
    only_mask: bool = False

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
