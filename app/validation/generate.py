"""GenerateFromMannequin's body, validated into a :class:`GenerateRequest` with every default applied.

The ranges and names come from :mod:`app.contract.limits`; the type rules and messages from
:mod:`app.validation.fields`.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.contract.limits import (
    BATCH_SIZE_RANGE,
    CLOTHES_SEGMENTER_FIELD,
    COMMON_FIELDS,
    CONTROL_UNITS_FIELD,
    CONTROL_WEIGHT_RANGE,
    DEFAULT_BACKGROUND_RESIZE_MODE,
    DEFAULT_PRIORITY,
    DEFAULT_REFER_STRENGTH,
    DEFAULT_RESIZE_MODE,
    DEFAULT_SIZE,
    FACE_REFINE_FIELD,
    FACE_REFINE_FIELDS,
    FACE_STRENGTH_RANGE,
    GARMENT_CLASSES_FIELD,
    LANCZOS,
    LORA_WEIGHT_RANGE,
    MAX_CONTROL_UNITS,
    MAX_GARMENT_CLASSES,
    MAX_SUB_MODELS,
    PERSONA_CODE_FIELD,
    PRIORITY_FIELD,
    PRIORITY_RANGE,
    REFER_STRENGTH_RANGE,
    REFINE_FIELD,
    REFINE_STRENGTH_RANGE,
    REFINE_UPSCALER_FIELD,
    RESIZE_MODES,
    RESOLUTION_RANGE,
    RESOLUTION_STEP,
    SEED_RANGE,
    SIZE_RANGE,
    STEP_RATIO_RANGE,
    TASK_FIELDS,
    UPSCALER_FIELD,
    is_lanczos,
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
from app.validation.personas import check_persona_code

#: The webhook extension's field: where to POST the task's TaskDetail when it ends (docs/API.md "Webhooks"); the
#: key file's entries take a default of the same name (app/keys.py).
CALLBACK_URL_FIELD = "CallbackUrl"
CALLBACK_URL_SCHEMES = ("http", "https")
MAX_CALLBACK_URL_CHARS = 2048
CALLBACK_URL_RULE = "must be an http or https URL with a host, e.g. https://example.com/hook"

#: The control units' field: PICPIK's name, and the older spelling still accepted (not both in one request).
CONTROL_UNITS_ALIAS = "ControlNet"  # the field's name itself: limits.CONTROL_UNITS_FIELD

#: PICPIK's shared generation block (PICPIK-FACTS section 4), read by :func:`parse_shared_block`.
SHARED_BLOCK_FIELDS: tuple[str, ...] = (
    "MainModel", "SubModelList", "PositivePrompts", "NegativePrompts", "TranslatePrompts", "Seed", "Width",
    "Height", "BatchSize", "UseMainModelVAE")
#: The extensions every generation reads (:func:`parse_extras`, :func:`parse_control_units`).
GENERATION_EXTENSION_FIELDS: tuple[str, ...] = (CONTROL_UNITS_FIELD, CONTROL_UNITS_ALIAS, CALLBACK_URL_FIELD,
                                                 REFINE_FIELD, FACE_REFINE_FIELD)
#: The top-level fields GenerateFromMannequin reads besides the common ones; any other is ignored and
#: named in the task's Notes.
GENERATE_FIELDS: tuple[str, ...] = (
    *SHARED_BLOCK_FIELDS, "Image2Image", "Mannequin", "ImageAndMaskList", "ImageList", "MaskList",
    *GENERATION_EXTENSION_FIELDS,
)


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

    image_index: int | None            # None: a persona unit
    preprocessor: str | None
    resolution: int | None
    control_model: str
    control_weight: float | None
    starting_step: float | None
    ending_step: float | None
    persona: str | None = None         # PersonaCode instead of ImageIndex (an IP-Adapter unit's references)


@dataclass(frozen=True)
class GenerateRequest:
    """A GenerateFromMannequin body, validated, with every default applied.

    Indexes point into ``images``: every entry of ImageAndMaskList, or of ImageList followed by MaskList,
    decoded and checked. ``main_model`` is None without MainModel (the deployment's default applies).
    ``seed`` is the request's (-1 = draw one); ``background_index`` is None without Image2Image.
    ``ignored_fields``: the top-level fields of the body that no rule reads, in body order.
    """

    main_model: str | None
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
    clothes_mask_index: int | None     # None: the clothes segmenter finds the garment
    resize_mode: str
    invert_mask: bool
    background_index: int | None
    refer_strength: float
    background_resize_mode: str = DEFAULT_BACKGROUND_RESIZE_MODE
    control_units: list[ControlUnit] | None = None  # None = the main model's default control
    control_units_field: str = CONTROL_UNITS_FIELD  # the name the request used (or its alias ControlNet)
    priority: int = DEFAULT_PRIORITY  # Priority, before the key's cap
    ignored_fields: list[str] = field(default_factory=list)
    callback_url: str | None = None  # CallbackUrl (None: the key's default, if any)
    clothes_segmenter: str | None = None      # Mannequin.ClothesSegmenter (an extension)
    garment_classes: list[int] | None = None  # Mannequin.GarmentClasses (an extension)
    refine_strength: float | None = None      # Refine.Strength (an extension; None: the main model's)
    face_refine: bool | None = None           # FaceRefine.Enabled (an extension; None: the main model's faces.refine)
    face_strength: float | None = None        # FaceRefine.Strength (None: the main model's faces.strength)
    refine_upscaler: str | None = None        # Refine.Upscaler: a ModelCode or LANCZOS (None: the main model's)

    @property
    def mannequin(self) -> DecodedImage:
        return self.images[self.mannequin_index]

    @property
    def clothes_mask(self) -> DecodedImage | None:
        return None if self.clothes_mask_index is None else self.images[self.clothes_mask_index]

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


#: A Model object of another action's field (RestoreFaces' ``MainModel``), read as GenerateFromMannequin reads one.
parse_model = _parse_model


def _parse_sub_models(value: Any) -> list[SubModel]:
    entries = check_list(value, "SubModelList", max_items=MAX_SUB_MODELS, default=[])
    return [_parse_model(entry, f"SubModelList[{i}]") for i, entry in enumerate(entries)]


def control_units_field(body: dict[str, Any]) -> str:
    """The name the body gives its control units: ``ControlNetList``, or its alias ``ControlNet``."""
    return CONTROL_UNITS_ALIAS if body.get(CONTROL_UNITS_ALIAS) is not None else CONTROL_UNITS_FIELD


def parse_control_units(body: dict[str, Any], images: ImageLists,
                         mannequin_index: int) -> list[ControlUnit] | None:
    """``ControlNetList`` (or its alias ``ControlNet``, not both): absent or null = the deployment's default
    control for the main model; ``[]`` = no control at all; else up to MAX_CONTROL_UNITS units."""
    if body.get(CONTROL_UNITS_FIELD) is not None and body.get(CONTROL_UNITS_ALIAS) is not None:
        raise ApiError.param(CONTROL_UNITS_ALIAS, f"is another name of {CONTROL_UNITS_FIELD}: send one of them")
    field_name = control_units_field(body)
    entries = check_list(body.get(field_name), field_name, max_items=MAX_CONTROL_UNITS, default=None)
    if entries is None:
        return None
    units = []
    for i, entry in enumerate(entries):
        name = f"{field_name}[{i}]"
        unit = check_object(entry, name)
        index, persona = unit.get("ImageIndex"), unit.get(PERSONA_CODE_FIELD)
        if persona is not None:
            if index is not None:
                raise ApiError.param(f"{name}.{PERSONA_CODE_FIELD}", "cannot be combined with ImageIndex: a unit's"
                                     " reference is an image of the request or a persona, not both")
            persona = check_persona_code(persona, f"{name}.{PERSONA_CODE_FIELD}")
        else:
            index = mannequin_index if index is None else images.image_index(index, f"{name}.ImageIndex")
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
        units.append(ControlUnit(index, pre_code, resolution, cm_code, weight, start, end, persona))
    return units


@dataclass(frozen=True)
class ImageLists:
    """The request's images in either style: one ``ImageAndMaskList`` (``masks`` is None: every index points
    into ``images``) or ``ImageList`` + ``MaskList`` (clothes masks point into ``masks``)."""

    images: list[Any]
    masks: list[Any] | None
    images_field: str

    def image_index(self, value: Any, name: str) -> int:
        """An index into the images (ImageAndMaskList or ImageList)."""
        return check_index(value, name, len(self.images), self.images_field)

    def mask_index(self, value: Any, name: str) -> int:
        """An index of a clothes mask, as an index into :meth:`sources`."""
        if self.masks is None:
            return self.image_index(value, name)
        if not self.masks:
            check_int(value, name)
            raise ApiError.param(name, "points into MaskList, which is missing or empty")
        return len(self.images) + check_index(value, name, len(self.masks), "MaskList")

    def sources(self) -> list[tuple[str, Any]]:
        """(field path, base64 string) of every image, in the order the indexes count them."""
        named = [(f"{self.images_field}[{i}]", v) for i, v in enumerate(self.images)]
        return named + [(f"MaskList[{i}]", v) for i, v in enumerate(self.masks or [])]


def parse_image_lists(body: dict[str, Any], max_images: int) -> ImageLists:
    """``ImageAndMaskList``, or ``ImageList`` (required then) with ``MaskList``; never both styles."""
    pair = [name for name in ("ImageList", "MaskList") if body.get(name) is not None]
    if body.get("ImageAndMaskList") is not None and pair:
        raise ApiError.param(pair[0], "cannot be combined with ImageAndMaskList: send ImageAndMaskList, or"
                                      " ImageList and MaskList")
    if not pair:
        if body.get("ImageAndMaskList") is None:
            raise ApiError.param("ImageAndMaskList", "is required (or ImageList and MaskList)")
        sources = check_list(body["ImageAndMaskList"], "ImageAndMaskList", min_items=1, max_items=max_images)
        return ImageLists(sources, None, "ImageAndMaskList")
    images = check_list(body.get("ImageList"), "ImageList", min_items=1, max_items=max_images)
    masks = check_list(body.get("MaskList"), "MaskList", max_items=max_images, default=[])
    if len(images) + len(masks) > max_images:
        raise ApiError.param("MaskList", f"ImageList and MaskList together must have at most {max_images} images")
    return ImageLists(images, masks, "ImageList")


def _parse_face_refine(value: Any) -> tuple[bool | None, float | None]:
    """``FaceRefine`` (an extension, optional; docs/faces.md): (``Enabled``, ``Strength``). Absent: (None, None),
    the main model's ``faces:`` decides; sent, ``Enabled`` defaults to true (sending FaceRefine asks for it) and
    ``Strength`` (0..1) to the model's."""
    face = check_object(value, FACE_REFINE_FIELD, default=None)
    if face is None:
        return None, None
    enabled_field, strength_field = (f"{FACE_REFINE_FIELD}.{name}" for name in FACE_REFINE_FIELDS)
    enabled = check_bool(face.get(FACE_REFINE_FIELDS[0]), enabled_field, default=True)
    strength = check_float(face.get(FACE_REFINE_FIELDS[1]), strength_field, lo=FACE_STRENGTH_RANGE.lo,
                           hi=FACE_STRENGTH_RANGE.hi, default=None)
    return enabled, strength


def callback_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a webhook destination by its text alone (a rule completing "... not
    available: "), or None. Where it points is checked by :func:`private_address`."""
    if len(url) > MAX_CALLBACK_URL_CHARS:
        return f"must have at most {MAX_CALLBACK_URL_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError for a port that is not a number in 0..65535
    except ValueError:
        return CALLBACK_URL_RULE
    if parts.scheme not in CALLBACK_URL_SCHEMES or not parts.hostname:
        return CALLBACK_URL_RULE
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    return None


def host_addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``host`` itself when it is an IP address, else what DNS answers for it, in its order (OSError when it
    does not resolve)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def private_address(addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str | None:
    """The first address that is not globally routable (private, loopback, link-local, unspecified, reserved,
    shared, multicast; an IPv4-mapped IPv6 address as its IPv4 one), or None."""
    for ip in addresses:
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if not plain.is_global or plain.is_multicast:
            return str(ip)
    return None


def check_priority(body: dict[str, Any]) -> int:
    """Priority (optional, every task-creating action): a whole number in PRIORITY_RANGE, DEFAULT_PRIORITY when
    absent. Higher runs first among queued jobs; the key's cap is applied at submission (``app/actions/submit.py``)."""
    return check_int(body.get(PRIORITY_FIELD), PRIORITY_FIELD, lo=int(PRIORITY_RANGE.lo), hi=int(PRIORITY_RANGE.hi),
                     default=DEFAULT_PRIORITY)


def check_callback_url(value: Any, name: str, *, allow_private: bool) -> str | None:
    """CallbackUrl (optional): an http or https URL; unless ``allow_private``, one whose host, an IP address
    or a name that resolves now, is not private, loopback or link-local (a name that does not resolve now is
    accepted: the deliverer checks the address again at every attempt)."""
    url = check_str(value, name, non_empty=True, default=None)
    if url is None:
        return None
    problem = callback_url_problem(url)
    if problem:
        raise ApiError.param(name, problem)
    if not allow_private:
        parts = urlsplit(url)
        try:
            addresses = host_addresses(parts.hostname or "", parts.port or 0)
        except (OSError, UnicodeError):
            addresses = []
        bad = private_address(addresses)
        if bad:
            raise ApiError.param(name, f"must not point to a private, loopback or link-local address ({bad})")
    return url


def parse_shared_block(body: Any, max_prompt_chars: int) -> dict[str, Any]:
    """PICPIK's shared generation block (PICPIK-FACTS section 4), in the reference page's order: MainModel
    (optional: absent = the deployment's default main model), SubModelList (entry by entry), PositivePrompts,
    NegativePrompts, TranslatePrompts, Seed, Width, Height, BatchSize, UseMainModelVAE. The
    :class:`GenerateRequest` fields they give, by name (every action drawing with a Main model reads it)."""
    if not isinstance(body, dict):
        raise ApiError.param("body", "must be a JSON object")
    main = _parse_model(body["MainModel"], "MainModel") if body.get("MainModel") is not None else None
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
    return dict(main_model=main.model_code if main is not None else None, sub_models=sub_models,
                positive_prompts=positive, negative_prompts=negative, translate_prompts=translate, seed=seed,
                width=width, height=height, batch_size=batch_size, use_main_model_vae=use_vae)


def parse_image2image(body: dict[str, Any], name: str, lists: ImageLists) -> tuple[int | None, float, str]:
    """An Image2Image object (optional) under ``name``: (ImageIndex (required within it, in bounds; None without
    the object), ReferStrength, ResizeMode), defaults applied."""
    image2image = check_object(body.get(name), name, default=None)
    if image2image is None:
        return None, DEFAULT_REFER_STRENGTH, DEFAULT_BACKGROUND_RESIZE_MODE
    index = lists.image_index(image2image.get("ImageIndex"), f"{name}.ImageIndex")
    strength = check_float(image2image.get("ReferStrength"), f"{name}.ReferStrength", lo=REFER_STRENGTH_RANGE.lo,
                           hi=REFER_STRENGTH_RANGE.hi, default=DEFAULT_REFER_STRENGTH)
    mode = check_choice(image2image.get("ResizeMode"), f"{name}.ResizeMode", RESIZE_MODES,
                        default=DEFAULT_BACKGROUND_RESIZE_MODE)
    return index, strength, mode


def parse_extras(body: dict[str, Any], allow_private_callbacks: bool) -> dict[str, Any]:
    """The extensions every generation reads after its own fields, in this order: Refine (optional: ``Strength``,
    ``Upscaler``: a non-empty string, an Upscaler's ModelCode or ``Lanczos``), FaceRefine (optional: ``Enabled``,
    ``Strength``), CallbackUrl (:func:`check_callback_url`), Priority (:func:`check_priority`). The
    :class:`GenerateRequest` fields they give, by name."""
    refine = check_object(body.get(REFINE_FIELD), REFINE_FIELD, default=None)
    refine_strength = refine_upscaler = None
    if refine is not None:
        refine_strength = check_float(refine.get("Strength"), f"{REFINE_FIELD}.Strength", lo=REFINE_STRENGTH_RANGE.lo,
                                      hi=REFINE_STRENGTH_RANGE.hi, default=None)
        refine_upscaler = check_str(refine.get(UPSCALER_FIELD), REFINE_UPSCALER_FIELD, non_empty=True, default=None)
        if refine_upscaler is not None and is_lanczos(refine_upscaler):
            refine_upscaler = LANCZOS
    face_refine, face_strength = _parse_face_refine(body.get(FACE_REFINE_FIELD))
    callback_url = check_callback_url(body.get(CALLBACK_URL_FIELD), CALLBACK_URL_FIELD,
                                      allow_private=allow_private_callbacks)
    return dict(refine_strength=refine_strength, refine_upscaler=refine_upscaler, face_refine=face_refine,
                face_strength=face_strength, callback_url=callback_url, priority=check_priority(body))


def parse_generate(body: dict[str, Any], *, max_images: int, max_pixels: int,
                   max_prompt_chars: int, allow_private_callbacks: bool = False,
                   known_images: Callable[[str], bool] | None = None) -> GenerateRequest:
    """Validate a GenerateFromMannequin body; raise ApiError 230 for the first problem found.

    The order of the checks (so the same bad body always gets the same message):

    1. the top-level fields in the reference page's order: MainModel (optional: absent = the deployment's
       default main model), SubModelList (entry by entry), PositivePrompts, NegativePrompts, TranslatePrompts,
       Seed, Width, Height, BatchSize, UseMainModelVAE;
    2. the images' shape: ``ImageAndMaskList`` (1..``max_images`` entries), or ``ImageList`` (1..) with
       ``MaskList`` (0..), at most ``max_images`` together; both styles at once is refused;
    3. Image2Image (optional): ImageIndex (required within it, in bounds), ReferStrength, ResizeMode;
    4. Mannequin (required): ImageIndex, ResizeMode, ClothesMaskIndex (optional: absent, the deployment's
       clothes segmenter makes the mask), InvertMask, and the extensions ClothesSegmenter and GarmentClasses
       (only without ClothesMaskIndex);
       then the control units (``ControlNetList``, or its alias ``ControlNet``; optional), unit by unit;
    5. Refine (optional, an extension: ``Strength``, ``Upscaler``: a non-empty string, an Upscaler's ModelCode
       or ``Lanczos``), FaceRefine (optional, an extension: ``Enabled``, ``Strength``), then CallbackUrl (optional,
       the webhook extension: :func:`check_callback_url`);
    6. every image decoded, first to last (the expensive part comes last).

    Indexes point into ImageAndMaskList, or, in the other style, into ImageList (``Mannequin.ImageIndex``,
    ``Image2Image.ImageIndex``, control units' ``ImageIndex``) and MaskList (``Mannequin.ClothesMaskIndex``).
    ``max_images``, ``max_pixels`` and ``max_prompt_chars`` are the deployment's limits
    (``Settings.max_images``, ``max_image_pixels``, ``max_prompt_chars``); ``allow_private_callbacks`` is
    ``Settings.webhook_allow_private``.
    """
    shared = parse_shared_block(body, max_prompt_chars)
    lists = parse_image_lists(body, max_images)

    background_index, refer_strength, background_resize_mode = parse_image2image(body, "Image2Image", lists)

    mannequin = check_object(body.get("Mannequin"), "Mannequin")
    mannequin_index = lists.image_index(mannequin.get("ImageIndex"), "Mannequin.ImageIndex")
    resize_mode = check_choice(mannequin.get("ResizeMode"), "Mannequin.ResizeMode", RESIZE_MODES,
                               default=DEFAULT_RESIZE_MODE)
    mask_index = None
    if mannequin.get("ClothesMaskIndex") is not None:
        mask_index = lists.mask_index(mannequin["ClothesMaskIndex"], "Mannequin.ClothesMaskIndex")
    invert_mask = check_bool(mannequin.get("InvertMask"), "Mannequin.InvertMask", default=False)
    segmenter = check_str(mannequin.get("ClothesSegmenter"), CLOTHES_SEGMENTER_FIELD, non_empty=True, default=None)
    classes = check_list(mannequin.get("GarmentClasses"), GARMENT_CLASSES_FIELD, min_items=1,
                         max_items=MAX_GARMENT_CLASSES, default=None)
    if classes is not None:
        classes = [check_int(c, f"{GARMENT_CLASSES_FIELD}[{i}]", lo=0, hi=MAX_GARMENT_CLASSES - 1)
                   for i, c in enumerate(classes)]
    if mask_index is not None and (segmenter is not None or classes is not None):
        raise ApiError.param(CLOTHES_SEGMENTER_FIELD if segmenter is not None else GARMENT_CLASSES_FIELD,
                             "is for a request without Mannequin.ClothesMaskIndex (the mask is given)")
    control_units = parse_control_units(body, lists, mannequin_index)
    extras = parse_extras(body, allow_private_callbacks)

    images = [decode_image(src, name, max_pixels, known_images) for name, src in lists.sources()]
    known = (*COMMON_FIELDS, *GENERATE_FIELDS, *TASK_FIELDS)

    return GenerateRequest(
        **shared,
        images=images,
        mannequin_index=mannequin_index,
        clothes_mask_index=mask_index,
        clothes_segmenter=segmenter,
        garment_classes=list(dict.fromkeys(classes)) if classes is not None else None,
        resize_mode=resize_mode,
        invert_mask=invert_mask,
        background_index=background_index,
        refer_strength=refer_strength,
        background_resize_mode=background_resize_mode,
        control_units=control_units,
        control_units_field=control_units_field(body),
        ignored_fields=[name for name in body if name not in known],
        **extras,
    )
