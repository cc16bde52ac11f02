"""Validation of request bodies into normalized values (``docs/API.md``).

A body arrives as orjson parsed it: JSON integers are ``int``, JSON numbers with a fraction or an
exponent are ``float``. The type rules, shared by every action:

* Int: a JSON integer, or a whole float (``2.0`` is 2). Not a bool, a string, or a fractional number.
* Float: a JSON integer or float, finite. Not a bool or a string.
* Bool: only ``true`` / ``false``.
* An explicit ``null`` means the same as leaving the field out: the default, or "is required".
* Unknown fields are ignored (PICPIK clients send extras), at every level.

Every problem is an :class:`~app.errors.ApiError` 230 whose message names the parameter by its path
and the rule, e.g. ``Params [SubModelList[1].InferenceParams.LoraWeight] not available: must be
between -1 and 2``. The FIRST problem in the order documented on :func:`parse_generate` is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar

from app.errors import ApiError
from app.images import DecodedImage, decode_image

T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()
"""Pass as ``default`` to make a missing (or null) value a 230 "is required"."""

RESIZE_MODES: tuple[str, ...] = ("JustResize", "CropAndResize", "ResizeAndFill")

SEED_RANGE = (-1, 2147483647)
SIZE_RANGE = (64, 2560)
BATCH_SIZE_RANGE = (1, 16)
REFER_STRENGTH_RANGE = (0.0, 1.0)
LORA_WEIGHT_RANGE = (-1.0, 2.0)
RESOLUTION_RANGE = (64, 2048)          # PreProcessor InferenceParams.Resolution, in steps of 64
CONTROL_WEIGHT_RANGE = (0.0, 2.0)
STEP_RATIO_RANGE = (0.0, 1.0)          # StartingStep / EndingStep
MAX_CONTROL_UNITS = 4
MAX_SUB_MODELS = 8


def _num(x: float) -> str:
    """A bound as written in a message: ``1`` rather than ``1.0``."""
    return str(int(x)) if float(x).is_integer() else str(x)


def _missing(value: Any, name: str, default: Any) -> bool:
    """True when ``value`` is absent/null and ``default`` applies; 230 when it is required."""
    if value is not None:
        return False
    if default is REQUIRED:
        raise ApiError.param(name, "is required")
    return True


def _check_range(value: T, name: str, lo: float | None, hi: float | None) -> T:
    if (lo is not None and value < lo) or (hi is not None and value > hi):  # type: ignore[operator]
        if lo is not None and hi is not None:
            rule = f"must be between {_num(lo)} and {_num(hi)}"
        elif lo is not None:
            rule = f"must be at least {_num(lo)}"
        else:
            rule = f"must be at most {_num(hi)}"  # type: ignore[arg-type]
        raise ApiError.param(name, rule)
    return value


def check_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None,
              default: Any = REQUIRED) -> Any:
    """An Int parameter: a JSON integer or a whole float, within ``lo..hi`` (inclusive).

    Returns ``default`` when ``value`` is None (absent or null); 230 "is required" when there is no
    default, "must be an integer" for any other type, "must be between lo and hi" out of range.
    """
    if _missing(value, name, default):
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError.param(name, "must be an integer")
    return _check_range(value, name, lo, hi)


def check_float(value: Any, name: str, *, lo: float | None = None, hi: float | None = None,
                default: Any = REQUIRED) -> Any:
    """A Float parameter: a finite JSON number (integer or float), within ``lo..hi``; returns a float.

    ``default`` and the messages as for :func:`check_int` ("must be a number").
    """
    if _missing(value, name, default):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError.param(name, "must be a number")
    if value in (float("inf"), float("-inf")):
        raise ApiError.param(name, "must be a finite number")
    return float(_check_range(value, name, lo, hi))


def check_bool(value: Any, name: str, *, default: Any = REQUIRED) -> Any:
    """A Bool parameter: only JSON ``true``/``false`` ("must be a boolean (true or false)")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, bool):
        raise ApiError.param(name, "must be a boolean (true or false)")
    return value


def check_str(value: Any, name: str, *, non_empty: bool = False, default: Any = REQUIRED) -> Any:
    """A String parameter ("must be a string"; with ``non_empty``, "must be a non-empty string")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, str):
        raise ApiError.param(name, "must be a string")
    if non_empty and not value:
        raise ApiError.param(name, "must be a non-empty string")
    return value


def check_object(value: Any, name: str, *, default: Any = REQUIRED) -> Any:
    """An object parameter (a JSON object, i.e. a dict) ("must be an object")."""
    if _missing(value, name, default):
        return default
    if not isinstance(value, dict):
        raise ApiError.param(name, "must be an object")
    return value


def check_list(value: Any, name: str, *, min_items: int = 0, max_items: int | None = None,
               default: Any = REQUIRED) -> Any:
    """An array parameter with ``min_items..max_items`` elements; the elements are not checked.

    Messages: "must be an array", "must have between 1 and 8 elements", "must not be empty",
    "must have at most N elements".
    """
    if _missing(value, name, default):
        return default
    if not isinstance(value, list):
        raise ApiError.param(name, "must be an array")
    if len(value) < min_items or (max_items is not None and len(value) > max_items):
        if max_items is None:
            rule = "must not be empty" if min_items == 1 else f"must have at least {min_items} elements"
        elif min_items == 0:
            rule = f"must have at most {max_items} elements"
        else:
            rule = f"must have between {min_items} and {max_items} elements"
        raise ApiError.param(name, rule)
    return value


def check_str_list(value: Any, name: str, *, max_items: int | None = None,
                   max_total_chars: int | None = None, non_empty_items: bool = False,
                   default: Any = REQUIRED) -> Any:
    """An array of strings (``[]String``); returns a new list.

    Each element must be a string (non-empty with ``non_empty_items``), named ``name[i]`` in the
    message; ``max_items`` caps the count, ``max_total_chars`` the characters of all elements together
    ("must have at most N characters in total"). ``default`` as for :func:`check_int` (returned
    itself when the value is absent); pass ``default=[]`` for an optional list.
    """
    items = check_list(value, name, max_items=max_items, default=default)
    if items is default:
        return default
    for i, item in enumerate(items):
        check_str(item, f"{name}[{i}]", non_empty=non_empty_items)
    if max_total_chars is not None and sum(map(len, items)) > max_total_chars:
        raise ApiError.param(name, f"must have at most {max_total_chars} characters in total")
    return list(items)


def check_choice(value: Any, name: str, choices: tuple[str, ...], *, default: Any = REQUIRED) -> Any:
    """A string that must be one of ``choices`` (exact, case-sensitive): "must be one of A, B, C"."""
    value = check_str(value, name, default=default)
    if value is not default and value not in choices:
        raise ApiError.param(name, f"must be one of {', '.join(choices)}")
    return value


def check_index(value: Any, name: str, count: int, list_name: str) -> int:
    """A required index into a list of ``count`` elements: "must be between 0 and count-1 (an index
    into <list_name>)"."""
    index = check_int(value, name)
    if not 0 <= index < count:
        raise ApiError.param(name, f"must be between 0 and {count - 1} (an index into {list_name})")
    return index


# --- GenerateFromMannequin ---------------------------------------------------------------------


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
                         lo=LORA_WEIGHT_RANGE[0], hi=LORA_WEIGHT_RANGE[1], default=None)
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
            resolution = check_int(pre_params.get("Resolution"), rname, lo=RESOLUTION_RANGE[0],
                                   hi=RESOLUTION_RANGE[1], default=None)
            if resolution is not None and resolution % 64:
                raise ApiError.param(rname, "must be a multiple of 64")
        cm = check_object(unit.get("ControlModel"), f"{name}.ControlModel")
        cm_code = check_str(cm.get("ModelCode"), f"{name}.ControlModel.ModelCode", non_empty=True)
        pname = f"{name}.ControlModel.InferenceParams"
        params = check_object(cm.get("InferenceParams"), pname, default={})
        weight = check_float(params.get("ControlWeight"), f"{pname}.ControlWeight",
                             lo=CONTROL_WEIGHT_RANGE[0], hi=CONTROL_WEIGHT_RANGE[1], default=None)
        start = check_float(params.get("StartingStep"), f"{pname}.StartingStep",
                            lo=STEP_RATIO_RANGE[0], hi=STEP_RATIO_RANGE[1], default=None)
        end = check_float(params.get("EndingStep"), f"{pname}.EndingStep",
                          lo=STEP_RATIO_RANGE[0], hi=STEP_RATIO_RANGE[1], default=None)
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
    seed = check_int(body.get("Seed"), "Seed", lo=SEED_RANGE[0], hi=SEED_RANGE[1], default=-1)
    width = check_int(body.get("Width"), "Width", lo=SIZE_RANGE[0], hi=SIZE_RANGE[1], default=1024)
    height = check_int(body.get("Height"), "Height", lo=SIZE_RANGE[0], hi=SIZE_RANGE[1], default=1024)
    batch_size = check_int(body.get("BatchSize"), "BatchSize",
                           lo=BATCH_SIZE_RANGE[0], hi=BATCH_SIZE_RANGE[1], default=1)
    use_vae = check_bool(body.get("UseMainModelVAE"), "UseMainModelVAE", default=False)

    sources = check_list(body.get("ImageAndMaskList"), "ImageAndMaskList", min_items=1, max_items=max_images)
    count = len(sources)

    background_index = None
    refer_strength = 0.5
    image2image = check_object(body.get("Image2Image"), "Image2Image", default=None)
    if image2image is not None:
        background_index = check_index(image2image.get("ImageIndex"), "Image2Image.ImageIndex",
                                       count, "ImageAndMaskList")
        refer_strength = check_float(image2image.get("ReferStrength"), "Image2Image.ReferStrength",
                                     lo=REFER_STRENGTH_RANGE[0], hi=REFER_STRENGTH_RANGE[1], default=0.5)

    mannequin = check_object(body.get("Mannequin"), "Mannequin")
    mannequin_index = check_index(mannequin.get("ImageIndex"), "Mannequin.ImageIndex", count, "ImageAndMaskList")
    resize_mode = check_choice(mannequin.get("ResizeMode"), "Mannequin.ResizeMode", RESIZE_MODES,
                               default="ResizeAndFill")
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
