"""The contract between gateway and workers: the job message and the task record.

The job message travels through Celery; it is small (references to stored images, never pixels)
and versioned (``v``): a worker refuses a version it does not know instead of guessing.
The task record lives in Redis (see :mod:`app.contract.taskstore`).
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from app.contract.limits import DEFAULT_BACKGROUND_RESIZE_MODE, DEFAULT_REFER_STRENGTH, DEFAULT_RESIZE_MODE

JOB_VERSION = 1
GENERATE_TASK_NAME = "atelier.generate"


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
    clothes_mask: str
    resize_mode: str = DEFAULT_RESIZE_MODE
    invert_mask: bool = False
    background_image: str | None = None
    refer_strength: float = DEFAULT_REFER_STRENGTH
    background_resize_mode: str = DEFAULT_BACKGROUND_RESIZE_MODE
    control_units: list[ControlUnitRef] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
