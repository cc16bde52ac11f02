"""The contract between gateway and workers: the job messages, the action table and the task statuses.

A job message travels through Celery; it is small (references to stored images, never pixels)
and versioned (``v``): a worker refuses a version it does not know instead of guessing.
The task record lives in Redis (see :mod:`app.contract.taskstore`).

:data:`ACTION_SPECS`, the action table, names every Action of the wire and says whether it creates a task; if it
does, its :class:`JobTask`: the Celery task that runs its job and the message class the job travels as. The
gateway's submit and recovery send a job by it, the gateway builds its handler table from it
(``app/actions/__init__.py``, which refuses to start on a disagreement) and the worker registers one Celery task
per name of :data:`JOB_TASK_NAMES`. It lives here, beside the messages it names, so that a new action's message
and its row are written in one file (docs/architecture.md "Add an action").
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from app.contract.limits import (
    DEFAULT_BACKGROUND_RESIZE_MODE,
    DEFAULT_BACKGROUND_THRESHOLD,
    DEFAULT_DESCRIBE_LANGUAGE,
    DEFAULT_ERODE_SIZE,
    DEFAULT_FOREGROUND_THRESHOLD,
    DEFAULT_HAIR_OPTIMIZATION,
    DEFAULT_MASK_BLUR,
    DEFAULT_REFER_STRENGTH,
    DEFAULT_RESIZE_MODE,
    DESCRIBE_IMAGES_ACTION,
    GENERATE_BACKGROUNDS_ACTION,
    GENERATE_IMAGES_ACTION,
    MASK_ACTIONS,
    MODIFY_MASKED_ACTION,
    PERSONA_ACTIONS,
    REMOVE_CONTENTS_ACTION,
    RESIZE_ACTION,
    RESTORE_FACES_ACTION,
    SWITCH_FACE_ACTION,
)

JOB_VERSION = 1
GENERATE_TASK_NAME = "atelier.generate"
MASK_TASK_NAME = "atelier.mask"
RESIZE_TASK_NAME = "atelier.resize"
RESTORE_FACES_TASK_NAME = "atelier.restore_faces"
SWITCH_FACE_TASK_NAME = "atelier.switch_face"
BACKGROUNDS_TASK_NAME = "atelier.backgrounds"
MODIFY_TASK_NAME = "atelier.modify"
REMOVE_CONTENTS_TASK_NAME = "atelier.remove_contents"
DESCRIBE_TASK_NAME = "atelier.describe"
IMAGES_TASK_NAME = "atelier.images"


class TaskStatus(StrEnum):
    QUEUING = "Queuing"
    RUNNING = "Running"
    FINISHED = "Finished"
    ERROR = "Error"
    CANCELED = "Canceled"  # CancelTask: at once while Queuing, at the worker's next step while Running


ACTIVE_STATUSES = (TaskStatus.QUEUING, TaskStatus.RUNNING)
ENDED_STATUSES = (TaskStatus.FINISHED, TaskStatus.ERROR, TaskStatus.CANCELED)


class SubModelRef(BaseModel):
    model_code: str
    lora_weight: float | None = None
    image: str | None = None  # storage key of the per-request image a kind needs (IP-Adapter); None otherwise


class ControlUnitRef(BaseModel):
    """One control unit, every value resolved (request, else the model's configured default)."""

    image: str | None               # storage key of the image the pre-processor reads; None: a persona unit
    preprocessor: str | None        # PreProcessor ModelCode; None = the image is the control map
    resolution: int
    control_model: str              # ControlModel ModelCode
    control_weight: float
    starting_step: float
    ending_step: float
    persona: str | None = None      # an IP-Adapter unit's PersonaCode (its references: the persona's images)


class BaseJob(BaseModel):
    """What every job message carries: its version and the task it runs. A message class of
    :data:`ACTION_SPECS` derives from it."""

    v: int = JOB_VERSION
    task_uid: str

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class JobMessage(BaseJob):
    """What a worker needs to run one GenerateFromMannequin task. All values already validated
    and defaulted by the gateway; image fields are storage keys (content hashes)."""

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
    refine_strength: float | None = None     # Refine.Strength; None: the main model's refine.strength
    face_refine: bool | None = None          # FaceRefine.Enabled; None: the main model's faces.refine
    face_strength: float | None = None       # FaceRefine.Strength; None: the main model's faces.strength
    refine_upscaler: str | None = None       # Refine.Upscaler: an Upscaler's ModelCode, or limits.LANCZOS; None: the
                                             # main model's refine.upscaler (unset: Lanczos)
    background_resize_mode: str = DEFAULT_BACKGROUND_RESIZE_MODE
    control_units: list[ControlUnitRef] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


class MaskJobMessage(BaseJob):
    """What a worker needs to run one mask task (RemoveBackground, RemoveBackgroundsInBatch, ExtractContents).
    Values validated and defaulted by the gateway; ``images`` are storage keys (one, or several for a batch).

    Results, in ``images`` order: the cut-out (RGBA PNG of the input's size, transparent outside the object)
    then the mask (grey PNG, white = the object), or only the mask with ``only_mask``."""

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


class ResizeJobMessage(BaseJob):
    """What a worker needs to run one ResizeImage task: the stored input, the size asked (both within
    limits.RESIZE_SIZE_RANGE) and the upscaler. Result 0: the input at exactly ``width`` x ``height`` (stretched
    when the aspect ratio differs), RGBA when the input has alpha, else RGB: by Lanczos, or enlarged by the
    Upscaler ``upscaler`` then brought to the size by Lanczos."""

    image: str                               # storage key of the input
    width: int
    height: int
    upscaler: str | None = None              # an Upscaler's ModelCode; None: Lanczos


class RestoreFacesJobMessage(BaseJob):
    """What a worker needs to run one RestoreFaces task: the stored input, the Main model that redraws its faces, the
    strength (limits.RESTORE_STRENGTH_RANGE) and the seed (drawn by the gateway). Result 0: the input with each face
    redrawn (docs/faces.md), of its size, RGBA when it has alpha (kept exactly), else RGB; unchanged without a face."""

    image: str                               # storage key of the input
    main_model: str                          # a Main model's ModelCode (the request's, else the default one)
    strength: float
    seed: int



class SwitchFaceJobMessage(BaseJob):
    """What a worker needs to run one SwitchFace task: the stored photo, which of its faces (1-based, reading order:
    limits.RAW_FACE_INDEX_RANGE), the stored new face, the Main model that redraws it, the IP-Adapter ControlModel
    that carries the new identity and the seed (drawn by the gateway). Result 0: the photo with that face redrawn
    (docs/faces.md "SwitchFace"), of its size, RGBA when it has alpha (kept exactly), else RGB."""

    image: str                               # storage key of RawImage
    face_index: int                          # RawFaceIndex, 1-based
    new_face: str | None                     # storage key of NewFaceImage (the adapter's reference); None: ``persona``
    main_model: str                          # a Main model's ModelCode (the request's, else the default one)
    adapter: str                             # an IP-Adapter ControlModel's ModelCode of the Main model's family
    seed: int
    persona: str | None = None               # PersonaCode: the new identity as the key's persona (its images)


class BackgroundsJobMessage(JobMessage):
    """A GenerateBackgrounds task: GenerateFromMannequin's job whose ``mannequin_image`` is the transparent foreground
    (TransparentForeground, fitted by ``resize_mode``: its opaque pixels kept exactly, its semi-transparent ones
    blended over the drawn scene) and ``background_image`` BackgroundImage2Image's reference; never a clothes mask."""


class ModifyJobMessage(JobMessage):
    """A ModifyMaskedPixels task: GenerateFromMannequin's job whose ``mannequin_image`` is ``Masked.ImageIndex``'s
    image, ``clothes_mask`` its ``MaskIndex``'s (white = redrawn; None: nothing but the margins ``resize_mode``
    adds), with ``invert_mask``; the mask faded out over ``2 * mask_blur`` pixels around it (pixels beyond are kept
    exactly: :func:`workers.inference.compose.blur_mask`)."""

    mask_blur: int = DEFAULT_MASK_BLUR
class RemoveContentsJobMessage(BaseJob):
    """What a worker needs to run one RemoveContents task: the stored photo and mask (white = erase, after
    ``invert``), the feathering (limits.MASK_BLUR_RANGE) and what erases: the Eraser ``eraser``, else the Main model
    ``main_model``'s inpainting with an empty-scene prompt from ``seed``. Result 0: the photo, of its size, RGBA when
    it has alpha (kept exactly), with the masked area erased; every pixel outside the blurred mask bit for bit."""

    image: str                               # storage key of RawImage
    mask: str                                # storage key of Mask
    invert: bool = False
    mask_blur: int = DEFAULT_MASK_BLUR
    eraser: str | None = None                # an Eraser's ModelCode; None: ``main_model``
    main_model: str | None = None            # a Main model's ModelCode (the fallback); set when ``eraser`` is None
    seed: int = 0


class DescribeJobMessage(BaseJob):
    """What a worker needs to run one DescribeImages task: the stored images (ImageList's order), the Describer and
    the language (limits.DESCRIBE_LANGUAGES; not ``en``: translated by the Describer's translator of it). Result:
    one text per image, TaskDetail ``TxtList``."""

    images: list[str]                        # storage keys, ImageList's order
    describer: str                           # a Describer's ModelCode
    language: str = DEFAULT_DESCRIBE_LANGUAGE



class ImagesJobMessage(JobMessage):
    """A GenerateImages task: GenerateFromMannequin's job with nothing kept (``mannequin_image`` None: the whole
    frame drawn, text-to-image), ``background_image`` Image2Image's reference (image-to-image at
    ``refer_strength``), and ``tileable``: a seamless texture (the UNet's, VAE's and ControlNets' convolutions
    padded circularly for the job; one pass, faces not redrawn)."""

    mannequin_image: str | None = None  # type: ignore[assignment]
    tileable: bool = False

# --- the action table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobTask:
    """How the jobs of a task-creating action reach the workers: the Celery task that runs them (the worker
    registers one per name) and the message class they travel as. Several actions may share one."""

    name: str
    job: type[BaseJob]


@dataclass(frozen=True)
class ActionSpec:
    """One Action of the wire as gateway and workers both see it: an action that creates a task has its
    :class:`JobTask`; the others are answered by the gateway alone. Its handler is the gateway's
    (``app/actions/__init__.py``)."""

    name: str
    task: JobTask | None = None

    @property
    def creates_task(self) -> bool:
        return self.task is not None


GENERATE_TASK = JobTask(GENERATE_TASK_NAME, JobMessage)
MASK_TASK = JobTask(MASK_TASK_NAME, MaskJobMessage)
RESIZE_TASK = JobTask(RESIZE_TASK_NAME, ResizeJobMessage)
RESTORE_FACES_TASK = JobTask(RESTORE_FACES_TASK_NAME, RestoreFacesJobMessage)
SWITCH_FACE_TASK = JobTask(SWITCH_FACE_TASK_NAME, SwitchFaceJobMessage)
BACKGROUNDS_TASK = JobTask(BACKGROUNDS_TASK_NAME, BackgroundsJobMessage)
MODIFY_TASK = JobTask(MODIFY_TASK_NAME, ModifyJobMessage)
REMOVE_CONTENTS_TASK = JobTask(REMOVE_CONTENTS_TASK_NAME, RemoveContentsJobMessage)
DESCRIBE_TASK = JobTask(DESCRIBE_TASK_NAME, DescribeJobMessage)
IMAGES_TASK = JobTask(IMAGES_TASK_NAME, ImagesJobMessage)


def action_table(*specs: ActionSpec) -> dict[str, ActionSpec]:
    """The specs by name; ValueError for an action listed twice or a Celery task given two message classes."""
    table = {spec.name: spec for spec in specs}
    if len(table) != len(specs):
        raise ValueError("an action is listed twice in the action table")
    tasks = {spec.task for spec in specs if spec.task}
    if len({task.name for task in tasks}) != len(tasks):  # one worker entry point reads one message class
        raise ValueError(f"one Celery task name is given several job message classes: {tasks}")
    return table


#: Every Action of the wire, by name.
ACTION_SPECS: dict[str, ActionSpec] = action_table(
    ActionSpec("GenerateFromMannequin", GENERATE_TASK),
    ActionSpec("ListTasksDetails"),
    ActionSpec("ListModels"),
    ActionSpec("ListRunningTasks"),
    ActionSpec("ListControlNets"),
    ActionSpec("CancelTask"),  # an extension of PICPIK's API
    *(ActionSpec(name, MASK_TASK) for name in MASK_ACTIONS),
    ActionSpec(RESIZE_ACTION, RESIZE_TASK),
    ActionSpec(RESTORE_FACES_ACTION, RESTORE_FACES_TASK),
    *(ActionSpec(name) for name in PERSONA_ACTIONS),  # extensions: answered by the gateway alone
    ActionSpec(SWITCH_FACE_ACTION, SWITCH_FACE_TASK),  # PICPIK's, with the extensions MainModel and Adapter
    ActionSpec(GENERATE_BACKGROUNDS_ACTION, BACKGROUNDS_TASK),  # issue 27: the generation engine, other kept pixels
    ActionSpec(MODIFY_MASKED_ACTION, MODIFY_TASK),
    ActionSpec(REMOVE_CONTENTS_ACTION, REMOVE_CONTENTS_TASK),
    ActionSpec(DESCRIBE_IMAGES_ACTION, DESCRIBE_TASK),
    ActionSpec(GENERATE_IMAGES_ACTION, IMAGES_TASK),  # issue 27: the generation engine with nothing kept
)

#: The Celery tasks the workers register (one each), in the table's order.
JOB_TASKS: tuple[JobTask, ...] = tuple(dict.fromkeys(spec.task for spec in ACTION_SPECS.values() if spec.task))
JOB_TASK_NAMES: tuple[str, ...] = tuple(task.name for task in JOB_TASKS)


class NoTaskAction(LookupError):
    """An action that creates no task (or a name that is no action) was asked for its Celery task."""


def task_for(action: str) -> JobTask:
    """The :class:`JobTask` of a task-creating ``action``; :class:`NoTaskAction` for any other name."""
    spec = ACTION_SPECS.get(action)
    if spec is None or spec.task is None:
        what = "is not an action" if spec is None else "creates no task"
        raise NoTaskAction(f"{action!r} {what}: no Celery task runs it (app/contract/jobs.py ACTION_SPECS)")
    return spec.task


def task_name_for(action: str) -> str:
    """The Celery task that runs a task of ``action`` (submit sends its job by it, the recovery sends a lost
    job again by it); :class:`NoTaskAction` for an action that creates no task."""
    return task_for(action).name
