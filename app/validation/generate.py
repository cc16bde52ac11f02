"""GenerateFromMannequin's body, validated into a :class:`GenerateRequest` with every default applied.

The ranges and names come from :mod:`app.contract.limits`; the type rules and messages from
:mod:`app.validation.fields`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.contract.limits import (
    BATCH_SIZE_RANGE,
    CONTROL_WEIGHT_RANGE,
    DEFAULT_REFER_STRENGTH,
    DEFAULT_RESIZE_MODE,
    DEFAULT_SIZE,
    LORA_WEIGHT_RANGE,
    MAX_CONTROL_UNITS,
    MAX_SUB_MODELS,
    REFER_STRENGTH_RANGE,
    RESIZE_MODES,
    RESOLUTION_RANGE,
    RESOLUTION_STEP,
    SEED_RANGE,
    SIZE_RANGE,
    STEP_RATIO_RANGE,
)
from app.errors import ApiError
from app.validation.fields import (
    check_bool,
    check_choice,
    check_float,
    check_index,
    check_int,
    check_list,
    check_object,
    check_str,
    check_str_list,
)
from app.validation.images import DecodedImage, decode_image


@dataclass(frozen=True)
class SubModel:
    """One entry of SubModelList: its ModelCode and, when given, InferenceParams.LoraWeight."""

    model_code: str
    lora_weight: float | None = None


@dataclass(frozen=True)
class ControlUnit:
    """One entry of the ControlNet extension: which image is pre-processed by which PreProcessor
    (None = the image is already a control map) and steers through which ControlModel. InferenceParams
    left out are None: the worker takes the model's configured defaults."""

    image_index: int
    preprocessor: str | None
    resolution: int | None
    control_model: str
    control_weight: float | None
    starting_step: float | None
    ending_step: float | None


@dataclass(frozen=True)
class GenerateRequest:
    """A GenerateFromMannequin body, validated, with every default applied.

    Indexes point into ``images`` (ImageAndMaskList, every entry decoded and checked).
    ``seed`` is the request's (-1 = draw one); ``background_index`` is None without Image2Image.
    """

    main_model: str
    sub_models: list[SubModel]
    positive_prompts: list[str]
    negative_prompts: list[str]
    translate_prompts: bool
    seed: int
    width: int
    height: int
    batch_size: int
    use_main_model_vae: bool
    images: list[DecodedImage]
    mannequin_index: int
    clothes_mask_index: int
    resize_mode: str
    invert_mask: bool
    background_index: int | None
    refer_strength: float
    control_units: list[ControlUnit] | None = None  # None = the main model's default control

    @property
    def mannequin(self) -> DecodedImage:
        return self.images[self.mannequin_index]

    @property
    def clothes_mask(self) -> DecodedImage:
        return self.images[self.clothes_mask_index]

    @property
    def background(self) -> DecodedImage | None:
        return None if self.background_index is None else self.images[self.background_index]


def _parse_model(value: Any, name: str) -> SubModel:
    """A Model object: ModelCode (required, non-empty) plus optional, type-checked Name, IsOfficial,
    TriggerWordList and InferenceParams (whose LoraWeight, if given, must be within -1..2)."""
    model = check_object(value, name)
    code = check_str(model.get("ModelCode"), f"{name}.ModelCode", non_empty=True)
    check_str(model.get("Name"), f"{name}.Name", default="")
    check_bool(model.get("IsOfficial"), f"{name}.IsOfficial", default=False)
    check_str_list(model.get("TriggerWordList"), f"{name}.TriggerWordList", default=[])
    params = check_object(model.get("InferenceParams"), f"{name}.InferenceParams", default={})
    weight = check_float(params.get("LoraWeight"), f"{name}.InferenceParams.LoraWeight",
                         lo=LORA_WEIGHT_RANGE.lo, hi=LORA_WEIGHT_RANGE.hi, default=None)
    return SubModel(model_code=code, lora_weight=weight)


def _parse_sub_models(value: Any) -> list[SubModel]:
    entries = check_list(value, "SubModelList", max_items=MAX_SUB_MODELS, default=[])
    return [_parse_model(entry, f"SubModelList[{i}]") for i, entry in enumerate(entries)]


def _parse_control_units(value: Any, count: int, mannequin_index: int) -> list[ControlUnit] | None:
    """``ControlNet``: absent or null = the deployment's default control for the main model;
    ``[]`` = no control at all; else up to MAX_CONTROL_UNITS units."""
    entries = check_list(value, "ControlNet", max_items=MAX_CONTROL_UNITS, default=None)
    if entries is None:
        return None
    units = []
    for i, entry in enumerate(entries):
        name = f"ControlNet[{i}]"
        unit = check_object(entry, name)
        index = unit.get("ImageIndex")
        index = mannequin_index if index is None else check_index(index, f"{name}.ImageIndex", count,
                                                                   "ImageAndMaskList")
        pre = check_object(unit.get("PreProcessor"), f"{name}.PreProcessor", default=None)
        pre_code, resolution = None, None
        if pre is not None:
            pre_code = check_str(pre.get("ModelCode"), f"{name}.PreProcessor.ModelCode", non_empty=True)
            pre_params = check_object(pre.get("InferenceParams"), f"{name}.PreProcessor.InferenceParams", default={})
            rname = f"{name}.PreProcessor.InferenceParams.Resolution"
            resolution = check_int(pre_params.get("Resolution"), rname, lo=RESOLUTION_RANGE.lo,
                                   hi=RESOLUTION_RANGE.hi, default=None)
            if resolution is not None and resolution % RESOLUTION_STEP:
                raise ApiError.param(rname, f"must be a multiple of {RESOLUTION_STEP}")
        cm = check_object(unit.get("ControlModel"), f"{name}.ControlModel")
        cm_code = check_str(cm.get("ModelCode"), f"{name}.ControlModel.ModelCode", non_empty=True)
        pname = f"{name}.ControlModel.InferenceParams"
        params = check_object(cm.get("InferenceParams"), pname, default={})
        weight = check_float(params.get("ControlWeight"), f"{pname}.ControlWeight",
                             lo=CONTROL_WEIGHT_RANGE.lo, hi=CONTROL_WEIGHT_RANGE.hi, default=None)
        start = check_float(params.get("StartingStep"), f"{pname}.StartingStep",
                            lo=STEP_RATIO_RANGE.lo, hi=STEP_RATIO_RANGE.hi, default=None)
        end = check_float(params.get("EndingStep"), f"{pname}.EndingStep",
                          lo=STEP_RATIO_RANGE.lo, hi=STEP_RATIO_RANGE.hi, default=None)
        if start is not None and end is not None and start > end:
            raise ApiError.param(f"{pname}.StartingStep", "must not be greater than EndingStep")
        units.append(ControlUnit(index, pre_code, resolution, cm_code, weight, start, end))
    return units


def parse_generate(body: dict[str, Any], *, max_images: int, max_pixels: int,
                   max_prompt_chars: int) -> GenerateRequest:
    """Validate a GenerateFromMannequin body; raise ApiError 230 for the first problem found.

    The order of the checks (so the same bad body always gets the same message):

    1. the top-level fields in the reference page's order: MainModel, SubModelList (entry by entry),
       PositivePrompts, NegativePrompts, TranslatePrompts, Seed, Width, Height, BatchSize,
       UseMainModelVAE;
    2. ImageAndMaskList's shape: required, an array of 1..``max_images`` entries;
    3. Image2Image (optional): ImageIndex (required within it, in bounds), ReferStrength;
    4. Mannequin (required): ImageIndex, ResizeMode, ClothesMaskIndex, InvertMask;
       then the ControlNet extension (optional), unit by unit;
    5. every ImageAndMaskList entry decoded, first to last (the expensive part comes last).

    ``max_images``, ``max_pixels`` and ``max_prompt_chars`` are the deployment's limits
    (``Settings.max_images``, ``max_image_pixels``, ``max_prompt_chars``).
    """
    if not isinstance(body, dict):
        raise ApiError.param("body", "must be a JSON object")
    main = _parse_model(body.get("MainModel"), "MainModel")
    sub_models = _parse_sub_models(body.get("SubModelList"))
    positive = check_str_list(body.get("PositivePrompts"), "PositivePrompts",
                              max_total_chars=max_prompt_chars, default=[])
    negative = check_str_list(body.get("NegativePrompts"), "NegativePrompts",
                              max_total_chars=max_prompt_chars, default=[])
    translate = check_bool(body.get("TranslatePrompts"), "TranslatePrompts", default=True)
    seed = check_int(body.get("Seed"), "Seed", lo=SEED_RANGE.lo, hi=SEED_RANGE.hi, default=-1)
    width = check_int(body.get("Width"), "Width", lo=SIZE_RANGE.lo, hi=SIZE_RANGE.hi, default=DEFAULT_SIZE)
    height = check_int(body.get("Height"), "Height", lo=SIZE_RANGE.lo, hi=SIZE_RANGE.hi, default=DEFAULT_SIZE)
    batch_size = check_int(body.get("BatchSize"), "BatchSize",
                           lo=BATCH_SIZE_RANGE.lo, hi=BATCH_SIZE_RANGE.hi, default=1)
    use_vae = check_bool(body.get("UseMainModelVAE"), "UseMainModelVAE", default=False)

    sources = check_list(body.get("ImageAndMaskList"), "ImageAndMaskList", min_items=1, max_items=max_images)
    count = len(sources)

    background_index = None
    refer_strength = DEFAULT_REFER_STRENGTH
    image2image = check_object(body.get("Image2Image"), "Image2Image", default=None)
    if image2image is not None:
        background_index = check_index(image2image.get("ImageIndex"), "Image2Image.ImageIndex",
                                       count, "ImageAndMaskList")
        refer_strength = check_float(image2image.get("ReferStrength"), "Image2Image.ReferStrength",
                                     lo=REFER_STRENGTH_RANGE.lo, hi=REFER_STRENGTH_RANGE.hi,
                                     default=DEFAULT_REFER_STRENGTH)

    mannequin = check_object(body.get("Mannequin"), "Mannequin")
    mannequin_index = check_index(mannequin.get("ImageIndex"), "Mannequin.ImageIndex", count, "ImageAndMaskList")
    resize_mode = check_choice(mannequin.get("ResizeMode"), "Mannequin.ResizeMode", RESIZE_MODES,
                               default=DEFAULT_RESIZE_MODE)
    mask_index = check_index(mannequin.get("ClothesMaskIndex"), "Mannequin.ClothesMaskIndex",
                             count, "ImageAndMaskList")
    invert_mask = check_bool(mannequin.get("InvertMask"), "Mannequin.InvertMask", default=False)
    control_units = _parse_control_units(body.get("ControlNet"), count, mannequin_index)

    images = [decode_image(src, f"ImageAndMaskList[{i}]", max_pixels) for i, src in enumerate(sources)]

    return GenerateRequest(
        main_model=main.model_code,
        sub_models=sub_models,
        positive_prompts=positive,
        negative_prompts=negative,
        translate_prompts=translate,
        seed=seed,
        width=width,
        height=height,
        batch_size=batch_size,
        use_main_model_vae=use_vae,
        images=images,
        mannequin_index=mannequin_index,
        clothes_mask_index=mask_index,
        resize_mode=resize_mode,
        invert_mask=invert_mask,
        background_index=background_index,
        refer_strength=refer_strength,
        control_units=control_units,
    )
