"""The model registry: what a deployment serves, from ``models_config/*.yaml``.

Each entry maps a ModelCode to its ModelType (:class:`~app.contract.limits.ModelType`), family, source
and defaults; ListModels is generated from it and the gateway refuses unknown codes (240) before
anything is queued. A top-level ``vaes:`` section names the deployment's external VAE per family.
See models_config/README.md for the format.

Light on purpose: the gateway imports this module, so it never imports torch or diffusers. Everything
that can be checked without them (exactly one source kind, family and scheduler names, which source
kinds a ModelType accepts, duplicate codes) is checked here, when the file is read; relative paths are
resolved against the YAML file's folder then, so a loader never needs to know where the YAML was.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.contract.codes import model_message
from app.contract.limits import (
    ADAPTER_KINDS,
    ADAPTER_SUFFIXES,
    BATCH_SIZE_RANGE,
    CONTROL_WEIGHT_RANGE,
    DEFAULT_CONTROL_WEIGHT,
    DEFAULT_ENDING_STEP,
    DEFAULT_FACE_MIN_SCORE,
    DEFAULT_FACE_STRENGTH,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_LORA_WEIGHT,
    DEFAULT_POINTS,
    DEFAULT_REFINE_STRENGTH,
    DEFAULT_RESOLUTION,
    DEFAULT_STARTING_STEP,
    DEFAULT_STEPS,
    DEFAULT_UPSCALE_OVERLAP,
    DEFAULT_UPSCALE_TILE,
    DEMO_SOURCE_KINDS,
    DEMO_SOURCES,
    DESCRIBE_LANGUAGES,
    FACE_DETECT_MIN_PX,
    FACE_MODEL_SUFFIXES,
    FACE_SCORE_RANGE,
    FACE_SIZE_RANGE,
    FACE_STRENGTH_RANGE,
    FAMILIES,
    GUIDANCE_SCALE_RANGE,
    IP_ADAPTER,
    IP_ADAPTER_FACEID,
    LORA_WEIGHT_RANGE,
    MASK_ENGINE_TYPES,
    MASK_ENGINES,
    NATIVE_SIZES,
    PREPROCESSOR_KINDS,
    REFINE_STRENGTH_RANGE,
    REFINE_TILE_ABOVE,
    RESOLUTION_RANGE,
    RESOLUTION_STEP,
    SIZE_MULTIPLE,
    SIZE_RANGE,
    SOURCE_KINDS,
    STEP_RATIO_RANGE,
    STEPS_RANGE,
    TWO_PASS_AREA,
    UPSCALE_TILE_RANGE,
    WEIGHT_FREE_ENGINES,
    ModelType,
    is_lanczos,
)

log = logging.getLogger("atelier.registry")

PreProcessorKind = Literal[PREPROCESSOR_KINDS]
Family = Literal[FAMILIES]
SourceKind = Literal[SOURCE_KINDS]
DemoKind = Literal[DEMO_SOURCE_KINDS]
MaskEngine = Literal[tuple(kind for kinds in MASK_ENGINES.values() for kind in dict.fromkeys(kinds))]
#: rembg's model names (its sessions), for ``engine: rembg`` entries: the pre- and post-processing of the file.
REMBG_MODELS: tuple[str, ...] = ("u2net", "u2netp", "u2net_human_seg", "isnet-general-use", "isnet-anime", "silueta",
                                 "birefnet-general", "birefnet-general-lite", "birefnet-portrait", "birefnet-massive",
                                 "birefnet-hrsod", "birefnet-dis", "birefnet-cod", "bria-rmbg")
RembgModel = Literal[REMBG_MODELS]
AdapterKind = Literal[ADAPTER_KINDS]

#: diffusers scheduler classes a Main model's ``defaults.scheduler`` may name: the ones Stable Diffusion
#: (1.x/2.x and XL) pipelines declare compatible (``KarrasDiffusionSchedulers``) that need no extra
#: package, plus LCM/TCD for distilled checkpoints. Checked against diffusers by tests/contract/test_registry.py.
KNOWN_SCHEDULERS: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
)

#: File suffixes a single-file Main checkpoint (or an external VAE file) may have.
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
#: File suffixes an Upscaler's weights file may have (what spandrel reads: safetensors, or a pickled state dict
#: that it unpickles restricted to tensors and plain containers).
UPSCALER_SUFFIXES = (".pth", ".safetensors", ".pt", ".ckpt")
#: File suffixes an Eraser's weights file may have (what spandrel reads, as an Upscaler's).
ERASER_SUFFIXES = UPSCALER_SUFFIXES
#: The kinds whose ``points:`` a models_config may set besides Main models (what one input image costs).
PRICED_TYPES = (ModelType.UPSCALER, ModelType.ERASER, ModelType.DESCRIBER)


#: What ``atelier pull`` answers a served hub source that only it can read (models_config/README.md "Real models").
PULL_HINT = ("run `atelier pull --config <this file>` and serve the models.yaml it writes (models_config/README.md"
             " \"Real models: atelier pull\")")


class ModelSource(BaseModel):
    """Where a model's weights come from: exactly one of ``demo``, ``path``, ``file``, ``hub``.

    Relative ``path``/``file``/``config`` values are resolved against the YAML file's folder by
    :class:`Registry` (see :meth:`resolved`).

    A ``hub`` source may say which of the repo's files it means: ``filename`` (one file: the model is that file)
    or ``files`` (glob patterns: the model is a folder of those files), and ``variant`` (diffusers' weights variant,
    ``fp16``: ``x.fp16.safetensors`` is taken for ``x.safetensors``). A worker reads a ``hub`` source itself only
    for a Main model or a VAE, and only without ``filename``/``files`` (:attr:`pull_only`); every hub source is
    what ``atelier pull`` (:mod:`app.cli.pull`) downloads and turns into a ``path``/``file`` source.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    demo: DemoKind | None = Field(
        None, description="a tiny model generated locally (no download)")
    path: Path | None = Field(None, description="a local folder (diffusers layout for Main models and VAEs)")
    file: Path | None = Field(None, description="a single weights file (.safetensors/.ckpt for Main models)")
    config: Path | None = Field(None, description="with `file`: the local diffusers folder holding its configs")
    hub: str | None = Field(None, description="a Hugging Face hub repo id; downloaded when the deployment is online")
    revision: str | None = Field(None, description="with `hub`: branch, tag or commit")
    filename: str | None = Field(None, description="with `hub`: the one file of the repo this model is (`atelier"
                                 " pull` only)")
    files: tuple[str, ...] | None = Field(None, min_length=1, description="with `hub`: glob patterns of the repo's"
                                          " files this model's folder holds (`atelier pull` only)")
    variant: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", description="with `hub`: diffusers' weights"
                                " variant (fp16: `x.fp16.safetensors` is taken for `x.safetensors`)")

    @field_validator("hub")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None:
            parts = v.split("/")
            if len(parts) != 2 or not all(p.strip() for p in parts) or v != v.strip():
                raise ValueError(f"hub must be a repo id like 'owner/name', got {v!r}")
        return v

    @field_validator("filename")
    @classmethod
    def _repo_path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v.startswith("/") or "\\" in v
                              or any(part in ("", ".", "..") for part in v.split("/"))):
            raise ValueError(f"filename must be a file's path inside the repo, like 'onnx/model.onnx', got {v!r}")
        return v

    @field_validator("files")
    @classmethod
    def _patterns(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and any(not p.strip() or p.startswith("/") or ".." in p.split("/") for p in v):
            raise ValueError(f"files must be glob patterns of paths inside the repo, like 'unet/*.json', got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        given = [k for k in SOURCE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise ValueError(f"source needs exactly one of: demo, path, file, hub (got {got})")
        if self.config is not None and self.file is None:
            raise ValueError("source.config is only allowed with source.file")
        for name in ("revision", "filename", "files", "variant"):
            if getattr(self, name) is not None and self.hub is None:
                raise ValueError(f"source.{name} is only allowed with source.hub")
        if self.filename is not None and self.files is not None:
            raise ValueError("source.filename (one file) and source.files (a folder of files) exclude each other")
        return self

    @property
    def kind(self) -> SourceKind:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def pull_only(self) -> bool:
        """A hub source naming files of its repo (``filename``/``files``): only ``atelier pull`` reads it."""
        return self.hub is not None and (self.filename is not None or self.files is not None)

    def served_hint(self) -> str:
        """``"; run atelier pull ..."`` for a hub source where a worker needs local files, else empty: the end of
        the message that refuses such a source in a served models config."""
        return f"; a hub source is for `atelier pull`: {PULL_HINT}" if self.hub is not None else ""

    def resolved(self, base_dir: Path) -> ModelSource:
        """This source with relative ``path``/``file``/``config`` made absolute against ``base_dir``."""

        def absolute(p: Path | None) -> Path | None:
            if p is None:
                return None
            p = p.expanduser()
            return p if p.is_absolute() else (base_dir / p).resolve()

        return self.model_copy(update={"path": absolute(self.path), "file": absolute(self.file),
                                       "config": absolute(self.config)})

    def describe(self) -> str:
        """``kind=value`` for logs and error messages."""
        text = f"{self.kind}={getattr(self, self.kind)}"
        if self.config is not None:
            text += f" (config={self.config})"
        for name in ("revision", "variant", "filename"):
            if getattr(self, name) is not None:
                text += f" ({name}={getattr(self, name)})"
        if self.files is not None:
            text += f" (files={','.join(self.files)})"
        return text


class ModelDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(DEFAULT_STEPS, ge=STEPS_RANGE.lo, le=STEPS_RANGE.hi)
    guidance_scale: float = Field(DEFAULT_GUIDANCE_SCALE, ge=GUIDANCE_SCALE_RANGE.lo, le=GUIDANCE_SCALE_RANGE.hi)
    scheduler: str | None = Field(None, description="a diffusers scheduler class name; unset = the checkpoint's")
    # InferenceParams defaults of the other model types (the reference's table; same ranges as the API)
    lora_weight: float = Field(DEFAULT_LORA_WEIGHT, ge=LORA_WEIGHT_RANGE.lo, le=LORA_WEIGHT_RANGE.hi,
                                description="LoRA; HyperNetwork strength")
    resolution: int = Field(DEFAULT_RESOLUTION, ge=RESOLUTION_RANGE.lo, le=RESOLUTION_RANGE.hi,
                            multiple_of=RESOLUTION_STEP, description="PreProcessor")
    control_weight: float = Field(DEFAULT_CONTROL_WEIGHT, ge=CONTROL_WEIGHT_RANGE.lo, le=CONTROL_WEIGHT_RANGE.hi,
                                   description="ControlModel")
    starting_step: float = Field(DEFAULT_STARTING_STEP, ge=STEP_RATIO_RANGE.lo, le=STEP_RATIO_RANGE.hi,
                                  description="ControlModel")
    ending_step: float = Field(DEFAULT_ENDING_STEP, ge=STEP_RATIO_RANGE.lo, le=STEP_RATIO_RANGE.hi,
                                description="ControlModel")

    @model_validator(mode="after")
    def _window(self) -> ModelDefaults:
        if self.starting_step > self.ending_step:
            raise ValueError(f"starting_step {self.starting_step} is after ending_step {self.ending_step}")
        return self

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str | None) -> str | None:
        if v is not None and v not in KNOWN_SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; known: {', '.join(KNOWN_SCHEDULERS)}")
        return v


class NativeSize(BaseModel):
    """``native: {width, height}``: the size a Main model draws at (its training size); multiples of 8."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=SIZE_RANGE.lo, le=SIZE_RANGE.hi, multiple_of=SIZE_MULTIPLE)
    height: int = Field(ge=SIZE_RANGE.lo, le=SIZE_RANGE.hi, multiple_of=SIZE_MULTIPLE)


class RefineOptions(BaseModel):
    """``refine: {strength, upscaler, tile_above}``: how much the second pass of a large request redraws (0 = upscale
    only), what enlarges pass 1's images before it (an Upscaler's ModelCode of the same file, or Lanczos: the default,
    no ``upscaler`` or ``upscaler: Lanczos``), and above how many times the native area it runs in tiles."""

    model_config = ConfigDict(extra="forbid")
    strength: float = Field(DEFAULT_REFINE_STRENGTH, ge=REFINE_STRENGTH_RANGE.lo, le=REFINE_STRENGTH_RANGE.hi)
    upscaler: str | None = Field(None, min_length=1, description="an Upscaler's ModelCode; unset or Lanczos:"
                                 " Pillow's Lanczos filter")
    tile_above: float = Field(REFINE_TILE_ABOVE, ge=TWO_PASS_AREA)

    @field_validator("upscaler")
    @classmethod
    def _lanczos_is_none(cls, v: str | None) -> str | None:
        return None if is_lanczos(v) else v


class FaceOptions(BaseModel):
    """``faces:``: what a Main model does with the faces of its images (models_config/README.md "Faces";
    docs/faces.md). After a generation, unless ``refine`` is false (or the request's ``FaceRefine.Enabled``), each
    face the detector finds with at least ``min_score``, whose box's longer side is within ``min_size..max_size``
    pixels, is redrawn at ``strength`` with the job's prompts plus ``prompt``. RestoreFaces redraws every face from
    ``min_size`` with the model (``max_size`` and ``refine`` are the generation's), with ``prompt``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    refine: bool = Field(True, description="redraw the faces of every generation (FaceRefine.Enabled overrides it)")
    strength: float = Field(DEFAULT_FACE_STRENGTH, ge=FACE_STRENGTH_RANGE.lo, le=FACE_STRENGTH_RANGE.hi,
                            description="how much a face is redrawn (img2img strength; FaceRefine.Strength"
                            " overrides it)")
    min_size: int = Field(FACE_DETECT_MIN_PX, ge=FACE_SIZE_RANGE.lo, le=FACE_SIZE_RANGE.hi,
                          description="the smallest face redrawn, in pixels (its box's longer side); the detector"
                          " finds none below 20")
    max_size: int | None = Field(None, ge=FACE_SIZE_RANGE.lo, le=FACE_SIZE_RANGE.hi,
                                 description="after a generation, the largest face redrawn; default half the native"
                                 " size's shorter side (a larger face's crop would be redrawn smaller than it is)")
    min_score: float = Field(DEFAULT_FACE_MIN_SCORE, ge=FACE_SCORE_RANGE.lo, le=FACE_SCORE_RANGE.hi,
                             description="the detector's confidence a face needs")
    prompt: str = Field("", description="added to the job's prompt when a face is redrawn (RestoreFaces: the"
                        " prompt, after the model's trigger words)")

    @model_validator(mode="after")
    def _sizes(self) -> FaceOptions:
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        return self


class TileOptions(BaseModel):
    """An Upscaler's ``tile: {size, overlap}``: it runs on tiles of ``size`` x ``size`` input pixels overlapping by
    ``overlap`` (workers/inference/upscale.py: the outer quarter of an overlap is dropped, the middle half
    cross-faded), so that the device holds one tile's activations whatever the image's size."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(DEFAULT_UPSCALE_TILE, ge=UPSCALE_TILE_RANGE.lo, le=UPSCALE_TILE_RANGE.hi)
    overlap: int = Field(DEFAULT_UPSCALE_OVERLAP, ge=0)

    @model_validator(mode="after")
    def _overlap_fits(self) -> TileOptions:
        if 2 * self.overlap >= self.size:
            raise ValueError(f"tile.overlap {self.overlap} must be less than half of tile.size {self.size}")
        return self


#: ``safety.policy`` values: ``none`` runs no checker (the default), ``checker`` screens every image made.
SAFETY_POLICIES: tuple[str, ...] = ("none", "checker")


class SafetyOptions(BaseModel):
    """A Main model's safety policy (``safety:``; models_config/README.md "Safety").

    ``safety: none`` (the default) or ``safety: {policy: checker, checker: <folder>}``: the folder of a diffusers
    ``StableDiffusionSafetyChecker`` with its CLIP image processor (``preprocessor_config.json`` beside it, or a
    pipeline folder with ``safety_checker/`` and ``feature_extractor/``). ``none`` is the default because SD's
    checker blacks out swimwear and lingerie, which shops sell: the operator chooses. A checkpoint's own checker is
    never loaded unless this names it. A relative ``checker`` is resolved against the YAML file's folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    policy: Literal[SAFETY_POLICIES] = Field("none", description="none: no checker; checker: every image made is"
                                             " screened, a flagged one withheld")
    checker: Path | None = Field(None, description="with policy checker: the safety checker's folder")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"policy": v} if isinstance(v, str) else v  # `safety: none`, `safety: checker` (refused below)

    @model_validator(mode="after")
    def _checker_with_policy(self) -> SafetyOptions:
        if self.policy == "checker" and self.checker is None:
            raise ValueError("`safety: {policy: checker}` needs `checker:`, the folder of a diffusers"
                             " StableDiffusionSafetyChecker and its preprocessor_config.json")
        if self.policy != "checker" and self.checker is not None:
            raise ValueError("`safety.checker` is only used with `policy: checker`")
        return self

    def resolved(self, base_dir: Path) -> SafetyOptions:
        """This policy with a relative ``checker`` made absolute against ``base_dir`` (the YAML file's folder)."""
        if self.checker is None:
            return self
        p = self.checker.expanduser()
        return self.model_copy(update={"checker": p if p.is_absolute() else (base_dir / p).resolve()})


class DefaultControl(BaseModel):
    """A control unit a Main model gets when the request has no ``ControlNetList`` (alias ``ControlNet``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    preprocessor: str | None = Field(None, alias="PreProcessor", description="ModelCode of a PreProcessor")
    control_model: str = Field(alias="ControlModel", description="ModelCode of a ControlModel")


#: What ``speed.compile_mode`` may name: torch.compile's modes (``torch._inductor.list_mode_options``).
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: ``speed.dtype`` values: ``auto`` is the worker's ``ATELIER_DTYPE``.
SPEED_DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16", "float32")


class SpeedOptions(BaseModel):
    """A Main model's GPU fast paths (``speed:``; models_config/README.md "Speed (GPU fast paths)").

    Everything here changes how fast a model runs, never what a request means: the worker applies it when it
    loads the model (:func:`workers.models.speed.apply_speed`) and before each pipeline call
    (:func:`workers.patching.per_call.before_call`). The defaults are the paths that are safe everywhere; a CPU
    worker ignores ``dtype`` and ``channels_last`` (float32, default memory format). Frozen and hashable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    dtype: Literal[SPEED_DTYPES] = Field(
        "auto", description="weights dtype on CUDA (auto = the worker's ATELIER_DTYPE, float16 unless set); the"
        " CPU always runs float32")
    channels_last: bool = Field(True, description="UNet and VAE in channels_last memory format (CUDA only: the"
                                " convolutions' fast layout on tensor cores)")
    sdpa: bool = Field(True, description="scaled-dot-product attention (torch's fused kernels); false = the"
                       " classic matmul-softmax-matmul processors, for debugging or reproducing old images")
    fuse_qkv: bool = Field(True, description="fuse each self-attention's q, k, v projections into one matmul"
                           " (UNet and VAE); LoRAs and hypernetworks still apply")
    compile: bool = Field(False, description="torch.compile the UNet; the first call at each new size (and"
                          " batch) compiles, about a minute on a GPU: pair it with warmup_sizes")
    compile_mode: Literal[COMPILE_MODES] = Field(
        "max-autotune-no-cudagraphs", description="torch.compile mode: autotuned kernels without CUDA graphs"
        " (CUDA graphs would pin every size and batch's buffers and re-record on each new shape)")
    warmup_sizes: tuple[tuple[int, int], ...] = Field(
        (), max_length=16, description="[width, height] pairs generated once at worker start, each at every"
        " warmup_batch, so that the first job does not pay the compile or the kernels' autotuning")
    warmup_batch: tuple[int, ...] = Field((1,), min_length=1, max_length=8, description="the BatchSize values"
                                          " warmed up at each size (run as a job runs them, in calls of at most"
                                          " images_per_call images)")
    deep_cache_interval: int = Field(
        0, ge=0, le=10, description="DeepCache: recompute the UNet's deep features every N steps and reuse them"
        " in between (0 = off, N >= 2); faster, at some cost in detail (docs/performance.md \"DeepCache\")")
    deep_cache_branch: int = Field(0, ge=0, le=3, description="DeepCache: how many of the UNet's outer down/up"
                                   " block pairs still run at every step, minus one (0 = the outermost only, the"
                                   " fastest; at most the UNet's number of down blocks minus one)")
    vae_tiling_above_px: int = Field(
        1536 * 1536, ge=0, description="decode and encode in tiles when width*height is above this (0 = always;"
        " a huge number = never); keeps a 2560x2560 image within a GPU's memory")
    vae_slicing: bool = Field(True, description="decode and encode a batch one image at a time (batches > 1"
                              " only): less peak memory for the VAE at no visible cost")
    max_batch: int = Field(8, ge=1, le=64, description="at most this many images per pipeline call")
    max_batch_megapixels: float = Field(
        2.2, gt=0, le=64, description="at most this many megapixels per pipeline call (a BatchSize is split"
        " into calls of max(1, min(max_batch, floor(this * 1e6 / (width * height)))) images)")

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes(cls, v: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        lo, hi = int(SIZE_RANGE.lo), int(SIZE_RANGE.hi)
        for w, h in v:
            if not (lo <= w <= hi and lo <= h <= hi):
                raise ValueError(f"warmup size {w}x{h}: width and height must be in [{lo}, {hi}] (a request's)")
        return v

    @field_validator("warmup_batch")
    @classmethod
    def _batches(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        hi = int(BATCH_SIZE_RANGE.hi)
        if any(not 1 <= b <= hi for b in v):
            raise ValueError(f"warmup_batch values must be in [1, {hi}], got {list(v)}")
        return v

    @model_validator(mode="after")
    def _deep_cache(self) -> SpeedOptions:
        if self.deep_cache_interval == 1:
            raise ValueError("deep_cache_interval 1 would recompute every step: use 0 (off) or N >= 2")
        return self

    def images_per_call(self, width: int, height: int) -> int:
        """How many images of ``width`` x ``height`` one pipeline call takes (a BatchSize is split into
        calls of this many): ``max(1, min(max_batch, floor(max_batch_megapixels * 1e6 / (width*height))))``."""
        by_pixels = math.floor(self.max_batch_megapixels * 1e6 / (width * height))
        return max(1, min(self.max_batch, by_pixels))


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model_code: str = Field(alias="ModelCode", min_length=1)
    name: str = Field(alias="Name")
    model_type: ModelType = Field(alias="ModelType")
    is_official: bool = Field(True, alias="IsOfficial")
    trigger_words: list[str] = Field(default_factory=list, alias="TriggerWordList")
    family: Family = "sd15"
    source: ModelSource | None = Field(None, description="required except for a PreProcessor needing no weights")
    defaults: ModelDefaults = Field(default_factory=ModelDefaults)
    preprocessor: PreProcessorKind | None = Field(None, description="PreProcessor: which controlnet-aux detector")
    default_control: list[DefaultControl] = Field(default_factory=list, description="Main: control by default")
    default_main: bool = Field(False, description="Main: the model of a request without MainModel (one at most)")
    speed: SpeedOptions = Field(default_factory=SpeedOptions, description="Main: GPU fast paths (README"
                                " \"Speed (GPU fast paths)\")")
    points: int = Field(DEFAULT_POINTS, ge=0, description="Main: what each image made costs; a mask engine: what"
                        " each input image costs; an Upscaler: what a ResizeImage with it costs"
                        " (TaskDetail.ConsumeApiPoint)")
    native: NativeSize | None = Field(None, description="Main: the size it draws at; default its family's"
                                      " (limits.NATIVE_SIZES)")
    refine: RefineOptions = Field(default_factory=RefineOptions, description="Main: the second pass of a request"
                                  " larger than its native size")
    safety: SafetyOptions = Field(default_factory=SafetyOptions, description="Main: `none` (default) or"
                                  " `{policy: checker, checker: <folder>}` (SafetyOptions)")
    faces: FaceOptions = Field(default_factory=FaceOptions, description="Main: the faces of its images"
                               " redrawn (FaceOptions)")
    tile: TileOptions | None = Field(None, description="Upscaler: the tiles it runs on (default"
                                     " DEFAULT_UPSCALE_TILE, DEFAULT_UPSCALE_OVERLAP)")
    # mask engines (BackgroundRemover, PointSegmenter, ClothesSegmenter; models_config/README.md "Mask engines")
    engine: MaskEngine | None = Field(None, description="a mask engine's kind (limits.MASK_ENGINES)")
    rembg_model: RembgModel | None = Field(None, description="engine rembg: which of rembg's models the ONNX"
                                           " file is (its pre- and post-processing); default u2net")
    garment_classes: list[int] | None = Field(None, description="ClothesSegmenter: the class ids that count as"
                                              " garment (default: the engine's usual clothes classes)")
    default_engine: bool = Field(False, description="a mask engine: its type's default (one at most per type)")
    # IP-Adapters (ControlModel entries with `adapter:`; models_config/README.md "IP-Adapters")
    adapter: AdapterKind | None = Field(None, description="ControlModel: not a ControlNet but an adapter of this kind"
                                        " (limits.ADAPTER_KINDS)")
    image_encoder: ModelSource | None = Field(None, description="adapter ip-adapter: its CLIP vision encoder's folder"
                                              " (`path:`, CLIPVisionModelWithProjection) or `demo: clip-vision`")
    face_model: ModelSource | None = Field(None, description="adapter ip-adapter-faceid: the face-recognition ONNX"
                                           " model (`file:` an ArcFace .onnx) or `demo: arcface`")
    translators: dict[str, ModelSource] = Field(default_factory=dict, description="Describer: per TranslateDescription"
                                                " language, the folder of a seq2seq model translating English into"
                                                " it (`path:`) or `demo: translator-en`")

    @field_validator("model_code")
    @classmethod
    def _not_lanczos(cls, v: str) -> str:
        if is_lanczos(v):
            raise ValueError(f"{v!r} is the name of the Lanczos filter (no model) in requests; choose another"
                             " ModelCode")
        return v

    @model_validator(mode="after")
    def _source_fits_type(self) -> ModelEntry:
        if self.source is not None and self.source.pull_only:
            named = "filename" if self.source.filename is not None else "files"
            raise ValueError(f"source.{named} names files of hub repo {self.source.hub}, which only `atelier pull`"
                             f" downloads: {PULL_HINT}")
        if self.tile is not None and self.model_type != ModelType.UPSCALER:
            raise ValueError("`tile:` is for Upscaler entries only")
        if self.model_type != ModelType.MAIN and self.speed != SpeedOptions():
            raise ValueError("`speed:` is for Main models only")
        if self.model_type != ModelType.MAIN and (self.native is not None or self.refine != RefineOptions()):
            raise ValueError("`native:` and `refine:` are for Main models only")
        if self.model_type != ModelType.MAIN and self.safety != SafetyOptions():
            raise ValueError("`safety:` is for Main models only")
        if (self.adapter is not None or self.image_encoder is not None) and self.model_type != ModelType.CONTROL_MODEL:
            raise ValueError("`adapter:` and `image_encoder:` are for ControlModel entries only")
        if self.translators and self.model_type != ModelType.DESCRIBER:
            raise ValueError("`translators:` is for Describer entries only")
        if self.face_model is not None and self.adapter != IP_ADAPTER_FACEID:
            raise ValueError(f"`face_model:` is for `adapter: {IP_ADAPTER_FACEID}` entries only")
        is_engine = self.model_type in MASK_ENGINE_TYPES
        for name in ("engine", "rembg_model", "garment_classes"):
            if getattr(self, name) is not None and not is_engine:
                raise ValueError(f"`{name}:` is for mask engines only ({', '.join(MASK_ENGINE_TYPES)})")
        if self.default_engine and not is_engine:
            raise ValueError(f"`default_engine:` is for mask engines only ({', '.join(MASK_ENGINE_TYPES)})")
        if is_engine:
            for field, value, default in (("default_control", self.default_control, []),
                                          ("default_main", self.default_main, False),
                                          ("preprocessor", self.preprocessor, None)):
                if value != default:
                    raise ValueError(f"`{field}:` is not for mask engines")
            return self._engine_fits()
        if self.model_type == ModelType.PRE_PROCESSOR:
            if self.preprocessor is None:
                raise ValueError(f"a PreProcessor needs `preprocessor:` ({', '.join(PREPROCESSOR_KINDS)})")
            if self.source is not None and (self.source.kind not in ("path", "demo")
                                            or self.source.demo not in (None, *DEMO_SOURCES[ModelType.PRE_PROCESSOR])):
                raise ValueError("a PreProcessor's source is an annotator folder: `path:` or `demo: annotators`"
                                 + self.source.served_hint())
            return self
        if self.preprocessor is not None:
            raise ValueError("`preprocessor:` is for PreProcessor entries only")
        if self.model_type != ModelType.MAIN:
            for field, value, default in (("default_control", self.default_control, []),
                                          ("default_main", self.default_main, False),
                                          ("points", self.points, DEFAULT_POINTS)):
                if value != default and not (field == "points" and self.model_type in PRICED_TYPES):
                    raise ValueError(f"`{field}:` is for Main models only")
        if self.adapter == IP_ADAPTER_FACEID:
            return self._faceid_fits()
        if self.adapter is not None or self.image_encoder is not None:
            return self._adapter_fits()
        if self.source is None:
            raise ValueError(f"a {self.model_type} model needs a source")
        kind = self.source.kind
        if kind == "demo" and (self.source.demo not in DEMO_SOURCES.get(self.model_type, ())
                               or self.source.demo in ADAPTER_KINDS):
            raise ValueError(f"demo: {self.source.demo} is not a {self.model_type} model"
                             + (" without `adapter: ip-adapter`" if self.source.demo == IP_ADAPTER else ""))
        if self.model_type == ModelType.MAIN:
            if kind == "file" and self.source.file.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise ValueError(f"a Main model's source.file must end in {' or '.join(CHECKPOINT_SUFFIXES)},"
                                 f" got {self.source.file.name!r}")
            if kind == "demo" and self.family != "sd15":
                raise ValueError(f"demo models are family sd15, not {self.family}")
        elif self.model_type == ModelType.UPSCALER:
            if kind not in ("file", "hub", "demo"):
                raise ValueError(f"an Upscaler's source is a weights `file:`, a `hub:` repo holding one, or"
                                 f" `demo: upscaler`, not {kind}")
            if kind == "file" and self.source.file.suffix.lower() not in UPSCALER_SUFFIXES:
                raise ValueError(f"an Upscaler's source.file must end in {', '.join(UPSCALER_SUFFIXES)},"
                                 f" got {self.source.file.name!r}")
            if self.source.config is not None:
                raise ValueError("source.config is for single-file Main checkpoints, not Upscaler")
            if self.defaults != ModelDefaults():
                raise ValueError("`defaults:` are not for Upscaler entries")
        elif self.model_type in (ModelType.ERASER, ModelType.DESCRIBER):
            return self._tool_fits(kind)
        else:
            if kind not in ("path", "file", "demo"):
                raise ValueError(f"a {self.model_type} source must be path, file or demo, not {kind}"
                                 + self.source.served_hint())
            if self.source.config is not None and self.model_type != ModelType.CONTROL_MODEL:
                raise ValueError(f"source.config is for single-file Main checkpoints, not {self.model_type}")
            if self.defaults.scheduler is not None:
                raise ValueError("defaults.scheduler applies to Main models only")
        return self

    def _tool_fits(self, kind: str) -> ModelEntry:
        """An Eraser (a LaMa-family weights file: `file:`, a `hub:` repo holding one, `demo: eraser`) or a
        Describer (a transformers image-to-text folder: `path:`, `hub:`, `demo: describer`, and its
        ``translators:``)."""
        eraser = self.model_type == ModelType.ERASER
        wanted = ("file", "hub", "demo") if eraser else ("path", "hub", "demo")
        if kind not in wanted:
            what = "a weights `file:`, a `hub:` repo holding one" if eraser else "a model folder `path:`, a `hub:` repo"
            article = "an" if eraser else "a"
            raise ValueError(f"{article} {self.model_type}'s source is {what}, or `demo:"
                             f" {DEMO_SOURCES[self.model_type][0]}`, not {kind}")
        if kind == "file" and self.source.file.suffix.lower() not in ERASER_SUFFIXES:
            raise ValueError(f"an Eraser's source.file must end in {', '.join(ERASER_SUFFIXES)},"
                             f" got {self.source.file.name!r}")
        if self.source.config is not None:
            raise ValueError(f"source.config is for single-file Main checkpoints, not {self.model_type}")
        if self.defaults != ModelDefaults():
            raise ValueError(f"`defaults:` are not for {self.model_type} entries")
        for language, source in self.translators.items():
            if language not in DESCRIBE_LANGUAGES or language == DESCRIBE_LANGUAGES[0]:
                raise ValueError(f"translators: {language!r} is not a TranslateDescription language to translate"
                                 f" into ({', '.join(DESCRIBE_LANGUAGES[1:])})")
            if source.kind not in ("path", "demo") or source.demo not in (None, *DEMO_SOURCES["describe_translator"]):
                raise ValueError(f"translators.{language}: a translation folder (`path:`) or `demo: translator-en`"
                                 + source.served_hint())
        return self

    def languages(self) -> list[str]:
        """A Describer's TranslateDescription values: English (its own) and each of its ``translators:``."""
        return [lang for lang in DESCRIBE_LANGUAGES if lang == DESCRIBE_LANGUAGES[0] or lang in self.translators]

    def _adapter_fits(self) -> ModelEntry:
        """An adapter entry (``adapter: ip-adapter``): a ControlModel whose source is the adapter file (``.safetensors``
        or ``.bin``, or ``demo: ip-adapter``) with ``image_encoder:`` (a folder, or ``demo: clip-vision``)."""
        if self.model_type != ModelType.CONTROL_MODEL:
            raise ValueError("`adapter:` and `image_encoder:` are for ControlModel entries only")
        if self.adapter is None:
            raise ValueError("`image_encoder:` is for adapter entries only (`adapter: ip-adapter`)")
        if self.image_encoder is None:
            raise ValueError(f"`adapter: {self.adapter}` needs `image_encoder: {{path: <CLIP vision folder>}}`")
        enc = self.image_encoder
        if enc.kind not in ("path", "demo") or enc.demo not in (None, *DEMO_SOURCES["image_encoder"]):
            raise ValueError("`image_encoder:` is a CLIP vision folder: `path:` or `demo: clip-vision`"
                             + enc.served_hint())
        if self.source is None:
            raise ValueError(f"`adapter: {self.adapter}` needs a source: the adapter's file")
        kind = self.source.kind
        if kind == "demo":
            if self.source.demo != IP_ADAPTER:
                raise ValueError(f"demo: {self.source.demo} is not an IP-Adapter (demo: {IP_ADAPTER})")
            if self.family != "sd15":
                raise ValueError(f"demo models are family sd15, not {self.family}")
        elif kind != "file" or self.source.config is not None:
            raise ValueError(f"an IP-Adapter's source is its file (`file:` ending in {' or '.join(ADAPTER_SUFFIXES)})"
                             + self.source.served_hint())
        elif self.source.file.suffix.lower() not in ADAPTER_SUFFIXES:
            raise ValueError(f"an IP-Adapter's source.file must end in {' or '.join(ADAPTER_SUFFIXES)},"
                             f" got {self.source.file.name!r}")
        return self

    def _faceid_fits(self) -> ModelEntry:
        """A FaceID adapter entry (``adapter: ip-adapter-faceid``): its file (``.safetensors``/``.bin``, or ``demo:
        ip-adapter-faceid``), ``face_model:`` (an ArcFace ``.onnx`` file, or ``demo: arcface``) and, optional here
        (the plus files need it: the worker says so), ``image_encoder:``."""
        fm = self.face_model
        if fm is None:
            raise ValueError(f"`adapter: {IP_ADAPTER_FACEID}` needs `face_model: {{file: <ArcFace .onnx>}}`")
        if not ((fm.kind == "file" and fm.file.suffix.lower() in FACE_MODEL_SUFFIXES)
                or (fm.kind == "demo" and fm.demo in DEMO_SOURCES["face_model"])):
            raise ValueError("`face_model:` is an ArcFace ONNX file: `file: <name>.onnx` or `demo: arcface`"
                             + fm.served_hint())
        enc = self.image_encoder
        if enc is not None and (enc.kind not in ("path", "demo")
                                or enc.demo not in (None, *DEMO_SOURCES["image_encoder"])):
            raise ValueError("`image_encoder:` is a CLIP vision folder: `path:` or `demo: clip-vision`"
                             + enc.served_hint())
        if self.source is None:
            raise ValueError(f"`adapter: {IP_ADAPTER_FACEID}` needs a source: the FaceID file")
        kind = self.source.kind
        if kind == "demo":
            if self.source.demo != IP_ADAPTER_FACEID:
                raise ValueError(f"demo: {self.source.demo} is not a FaceID adapter (demo: {IP_ADAPTER_FACEID})")
            if self.family != "sd15":
                raise ValueError(f"demo models are family sd15, not {self.family}")
        elif kind != "file" or self.source.config is not None or \
                self.source.file.suffix.lower() not in ADAPTER_SUFFIXES:
            raise ValueError("a FaceID adapter's source is its file (`file:` ending in"
                             f" {' or '.join(ADAPTER_SUFFIXES)})" + self.source.served_hint())
        return self

    @model_validator(mode="after")
    def _faces_for_main(self) -> ModelEntry:
        if self.model_type != ModelType.MAIN and self.faces != FaceOptions():
            raise ValueError("`faces:` is for Main models only")
        return self

    def _engine_fits(self) -> ModelEntry:
        kinds = MASK_ENGINES[self.model_type]
        if self.engine not in kinds:
            raise ValueError(f"a {self.model_type} needs `engine:` one of {', '.join(kinds)}")
        if self.rembg_model is not None and self.engine != "rembg":
            raise ValueError("`rembg_model:` is for `engine: rembg` only")
        if self.garment_classes is not None and self.model_type != ModelType.CLOTHES_SEGMENTER:
            raise ValueError("`garment_classes:` is for ClothesSegmenter entries only")
        if self.engine in WEIGHT_FREE_ENGINES:
            if self.source is not None:
                raise ValueError(f"`engine: {self.engine}` reads no weights: leave `source:` out")
            return self
        if self.source is None:
            raise ValueError(f"`engine: {self.engine}` needs a source")
        kind = self.source.kind
        if kind == "demo" and self.source.demo not in DEMO_SOURCES.get(self.model_type, ()):
            raise ValueError(f"demo: {self.source.demo} is not a {self.model_type}")
        wanted = ("file", "demo") if self.engine in ("rembg", "rembg-cloth") else ("path", "demo")
        if kind not in wanted:
            what = "an .onnx `file:`" if "file" in wanted else "a model folder (`path:`)"
            raise ValueError(f"`engine: {self.engine}` reads {what}, not {kind}" + self.source.served_hint())
        if kind == "file" and self.source.file.suffix.lower() != ".onnx":
            raise ValueError(f"`engine: {self.engine}` reads an .onnx file, got {self.source.file.name!r}")
        return self

    @property
    def tiling(self) -> TileOptions:
        """An Upscaler's tiles: its ``tile:``, else the defaults."""
        return self.tile or TileOptions()

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) this Main model draws at: its ``native:``, else its family's."""
        return (self.native.width, self.native.height) if self.native else NATIVE_SIZES[self.family]

    @property
    def face_sizes(self) -> tuple[int, int]:
        """The faces a generation redraws, by their box's longer side in pixels: ``faces.min_size`` to
        ``faces.max_size``, by default half the native size's shorter side."""
        return self.faces.min_size, self.faces.max_size or max(self.faces.min_size, min(self.native_size) // 2)

    def to_engine(self) -> dict[str, Any]:
        """A ListModels ``MaskEngines`` entry (an extension): what a client may name as ``Engine``."""
        return {"ModelCode": self.model_code, "Name": self.name, "ModelType": str(self.model_type),
                "Engine": self.engine}

    def to_model(self) -> dict[str, Any]:
        """PICPIK's ``Model`` object (ListModels' MainModels, LoraModels, ...), fit to be sent back as
        MainModel or in SubModelList unchanged."""
        return {"Name": self.name, "ModelCode": self.model_code, "IsOfficial": self.is_official,
                "TriggerWordList": list(self.trigger_words), "InferenceParams": self.inference_params()}

    def to_wire(self) -> dict[str, Any]:
        """The ``Model`` object plus ``ModelType`` (ListModels' ``Models``, an extension)."""
        return {**self.to_model(), "ModelType": str(self.model_type)}

    def to_upscaler(self) -> dict[str, Any]:
        """A ListModels ``Upscalers`` entry (an extension): what a request may name as ``Upscaler`` or
        ``Refine.Upscaler``."""
        return {"ModelCode": self.model_code, "Name": self.name, "ModelType": str(self.model_type)}

    def to_tool(self) -> dict[str, Any]:
        """A ListModels ``Erasers`` or ``Describers`` entry (an extension): what a request may name as ``Eraser`` or
        ``Describer``; a Describer's with its ``Languages`` (the TranslateDescription values it serves)."""
        entry = self.to_upscaler()
        if self.model_type == ModelType.DESCRIBER:
            entry["Languages"] = self.languages()
        return entry

    def to_control(self) -> dict[str, Any]:
        """A ListControlNets entry: ``{ModelCode, Name, InferenceParams}``; an adapter's adds (an extension) its
        ``Adapter`` kind and ``Family``, so that a client can tell an IP-Adapter from a ControlNet."""
        entry = {"ModelCode": self.model_code, "Name": self.name, "InferenceParams": self.inference_params()}
        if self.adapter is not None:
            entry.update(Adapter=self.adapter, Family=self.family)
        return entry

    def inference_params(self) -> dict[str, Any]:
        """The default InferenceParams the reference's table assigns to this model type."""
        d = self.defaults
        return {ModelType.LORA: {"LoraWeight": d.lora_weight},
                ModelType.PRE_PROCESSOR: {"Resolution": d.resolution},
                ModelType.CONTROL_MODEL: {"ControlWeight": d.control_weight, "StartingStep": d.starting_step,
                                          "EndingStep": d.ending_step}}.get(self.model_type, {})


class VaeSources(BaseModel):
    """The top-level ``vaes:`` section: family -> the deployment's external VAE for that family."""

    model_config = ConfigDict(extra="forbid")
    sd15: ModelSource | None = None
    sdxl: ModelSource | None = None

    @model_validator(mode="after")
    def _file_suffix(self) -> VaeSources:
        for family in FAMILIES:
            src = getattr(self, family)
            if src is not None and src.file is not None and src.file.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise ValueError(f"vaes.{family}.file must end in {' or '.join(CHECKPOINT_SUFFIXES)},"
                                 f" got {src.file.name!r}")
            if src is not None and src.pull_only:
                raise ValueError(f"vaes.{family}: a hub source naming files (filename, files) is for `atelier pull`:"
                                 f" {PULL_HINT}")
        return self


def _entry_label(index: int, raw: Any) -> str:
    code = raw.get("ModelCode") if isinstance(raw, dict) else None
    return f"models[{index}]" + (f" (ModelCode {code!r})" if code else "")


def _errors(e: ValidationError) -> str:
    """A pydantic error on one line per problem, without the pydantic URL noise."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


class UnknownModel(LookupError):
    """A ModelCode that names no model of the kind asked for (or nothing): 240 at the gateway
    (``ApiError.model``), ErrorCode 240 on a worker. ``str(error)`` is the wire's message
    (:func:`app.contract.codes.model_message`); ``model_code`` the code as given (``str(code)``)."""

    def __init__(self, code: object):
        self.model_code = str(code)
        super().__init__(model_message(self.model_code))


class Registry:
    """The validated contents of one models YAML. Source paths are absolute (resolved against ``base_dir``)."""

    def __init__(self, entries: list[ModelEntry], base_dir: Path,
                 vaes: dict[str, ModelSource] | VaeSources | None = None):
        self.base_dir = Path(base_dir)
        self._by_code: dict[str, ModelEntry] = {}
        for index, e in enumerate(entries):
            if e.model_code in self._by_code:
                first = list(self._by_code).index(e.model_code)
                raise ValueError(f"models[{index}] (ModelCode {e.model_code!r}): duplicate ModelCode,"
                                 f" already used by models[{first}]")
            source = e.source.resolved(self.base_dir) if e.source is not None else None
            encoder = e.image_encoder.resolved(self.base_dir) if e.image_encoder is not None else None
            face = e.face_model.resolved(self.base_dir) if e.face_model is not None else None
            translators = {lang: t.resolved(self.base_dir) for lang, t in e.translators.items()}
            self._by_code[e.model_code] = e.model_copy(update={"source": source, "image_encoder": encoder,
                                                               "face_model": face, "translators": translators,
                                                               "safety": e.safety.resolved(self.base_dir)})
        marked = [e.model_code for e in self._by_code.values() if e.default_main]
        if len(marked) > 1:
            raise ValueError(f"`default_main: true` on {len(marked)} Main models ({', '.join(marked)}); mark one")
        for engine_type in MASK_ENGINE_TYPES:
            marked = [e.model_code for e in self.entries_of(engine_type) if e.default_engine]
            if len(marked) > 1:
                raise ValueError(f"`default_engine: true` on {len(marked)} {engine_type}s ({', '.join(marked)});"
                                 " mark one")
        for e in self._by_code.values():
            for i, unit in enumerate(e.default_control):
                for code, kind in ((unit.preprocessor, ModelType.PRE_PROCESSOR),
                                   (unit.control_model, ModelType.CONTROL_MODEL)):
                    ref = self._by_code.get(code) if code is not None else None
                    if code is not None and (ref is None or ref.model_type != kind):
                        raise ValueError(f"ModelCode {e.model_code!r}: default_control[{i}]: {code!r} is not"
                                         f" a {kind} of this file")
                    if ref is not None and ref.adapter is not None:
                        raise ValueError(f"ModelCode {e.model_code!r}: default_control[{i}]: {code!r} is an"
                                         f" {ref.adapter}, which needs a request's reference image")
            upscaler = e.refine.upscaler
            ref = self._by_code.get(upscaler) if upscaler is not None else None
            if upscaler is not None and (ref is None or ref.model_type != ModelType.UPSCALER):
                raise ValueError(f"ModelCode {e.model_code!r}: refine.upscaler: {upscaler!r} is not an Upscaler of"
                                 " this file")
        if isinstance(vaes, VaeSources):
            vaes = {f: s for f in FAMILIES if (s := getattr(vaes, f)) is not None}
        self.vaes: dict[str, ModelSource] = {f: s.resolved(self.base_dir) for f, s in (vaes or {}).items()}

    #: the prompt translator (top-level ``translator:``), or None: prompts pass through untranslated
    translator: ModelSource | None = None

    def get(self, code: str) -> ModelEntry | None:
        return self._by_code.get(code)

    def require(self, code: str | None, *kinds: ModelType) -> ModelEntry:
        """The entry ``code`` names when it is of one of ``kinds``; else :class:`UnknownModel` (240 at the
        gateway, ErrorCode 240 on a worker), for an absent or empty code too. At least one kind is needed:
        a request's ModelCode always stands for a model of a known kind."""
        if not kinds:
            raise TypeError("Registry.require needs at least one ModelType")
        entry = self._by_code.get(code) if code else None
        if entry is None or entry.model_type not in kinds:
            raise UnknownModel(code)
        return entry

    def default_main(self) -> ModelEntry | None:
        """The Main model of a request without MainModel: the one marked ``default_main: true``, else the
        first Main model of the file, else None."""
        mains = self.entries_of(ModelType.MAIN)
        return next((e for e in mains if e.default_main), mains[0] if mains else None)

    def default_engine(self, engine_type: ModelType) -> ModelEntry | None:
        """The mask engine of ``engine_type`` a request that names none gets: the one marked
        ``default_engine: true``, else the first of the file, else None (the deployment has none)."""
        engines = self.entries_of(engine_type)
        return next((e for e in engines if e.default_engine), engines[0] if engines else None)

    def entries_of(self, *types: ModelType) -> list[ModelEntry]:
        return [e for e in self._by_code.values() if e.model_type in types]

    def entries(self) -> list[ModelEntry]:
        return list(self._by_code.values())

    def vae_source(self, family: str) -> ModelSource | None:
        """The external VAE configured for ``family`` (``vaes:`` section), or None."""
        return self.vaes.get(family)

    def resolve_path(self, item: ModelEntry | ModelSource | Path | str | None) -> Path | None:
        """An absolute local path.

        For an entry or a source: its ``path`` or ``file`` (None for demo and hub sources); for a path
        (e.g. a source's ``config``): that path resolved against the YAML file's folder.
        """
        if item is None:
            return None
        if isinstance(item, ModelEntry):
            item = item.source
        if isinstance(item, ModelSource):
            p = item.path if item.path is not None else item.file
            if p is None:
                return None
        else:
            p = Path(item).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def resolve_config(self, item: ModelEntry | ModelSource) -> Path | None:
        """The absolute config folder of a single-file source, or None when it has none."""
        source = item.source if isinstance(item, ModelEntry) else item
        return self.resolve_path(source.config) if source.config is not None else None

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base_dir: Path, origin: str = "<models config>") -> Registry:
        """Validate a parsed models YAML. Errors are ``ValueError`` naming ``origin`` and the entry."""
        if not isinstance(doc, dict):
            raise ValueError(f"{origin}: expected a mapping with `models:` (and optionally `vaes:`)")
        unknown = set(doc) - {"models", "vaes", "translator"}
        if unknown:
            raise ValueError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; expected models, vaes, translator")
        raw_models = doc.get("models") or []
        if not isinstance(raw_models, list):
            raise ValueError(f"{origin}: `models` must be a list")
        entries = []
        for index, raw in enumerate(raw_models):
            try:
                entries.append(ModelEntry.model_validate(raw))
            except ValidationError as e:
                raise ValueError(f"{origin}: {_entry_label(index, raw)}: {_errors(e)}") from None
        try:
            vaes = VaeSources.model_validate(doc.get("vaes") or {})
        except ValidationError as e:
            raise ValueError(f"{origin}: vaes: {_errors(e)}") from None
        translator = None
        if doc.get("translator") is not None:
            try:
                translator = ModelSource.model_validate(doc["translator"])
            except ValidationError as e:
                raise ValueError(f"{origin}: translator: {_errors(e)}") from None
            if translator.kind not in ("path", "demo") or translator.demo not in (None, *DEMO_SOURCES["translator"]):
                raise ValueError(f"{origin}: translator: source must be `path: <folder>` or `demo: translator`"
                                 + translator.served_hint())
        try:
            registry = cls(entries, base_dir, vaes)
        except ValueError as e:
            raise ValueError(f"{origin}: {e}") from None
        registry.translator = translator.resolved(registry.base_dir) if translator else None
        return registry

    @classmethod
    def from_file(cls, path: Path) -> Registry:
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(doc, path.parent.resolve(), origin=str(path))


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> Registry:
    return Registry.from_file(Path(path))


_last_good: dict[str, Registry] = {}


def get_registry(path: Path) -> Registry:
    """The registry at ``path``, re-read when the file changes.

    A process that has read the file once keeps serving the last version that was valid when a later edit
    is not (and logs why, once per edit): a typo in a running deployment's models config must not turn
    every request into an error. The first read of an invalid file raises ``ValueError`` (the gateway and
    ``make run`` refuse to start on it).
    """
    key = str(path)
    try:
        mtime = Path(path).stat().st_mtime
        registry = _load(key, mtime)
    except (OSError, ValueError) as e:
        if key not in _last_good:
            raise
        if _warned.get(key) != str(e):
            _warned[key] = str(e)
            log.error("models config %s is not usable (%s); still serving its last valid version", key, e)
        return _last_good[key]
    _last_good[key] = registry
    _warned.pop(key, None)
    return registry


_warned: dict[str, str] = {}
