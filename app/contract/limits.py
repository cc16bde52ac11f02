"""Every fact of the wire, written once: ranges, defaults, mode names and type lists.

The gateway validates requests against these (``app/validation``), the registry checks
``models_config/`` against them (``app/contract/registry.py``), the worker and the ``atelier`` client
import them. Inclusive ranges. The deployment's own limits (body size, pixels, images, prompt length,
active tasks per key) are settings (``app/contract/settings.py``), not facts of the wire.
"""
from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class Range(NamedTuple):
    """An inclusive range of a numeric field."""

    lo: float
    hi: float


#: How deeply arrays and objects may nest in a body (the body itself is level 1), refused with 230 in
#: ``app/deps.py``. The deepest field of the wire is at level 5
#: (``ControlNetList[0].ControlModel.InferenceParams.ControlWeight``); the limit leaves room for a client's
#: extras while keeping every recursive walk of a body (the signature's) far from Python's recursion limit.
MAX_BODY_DEPTH = 32

#: The fields every request carries (the signature covers every field but ``Signature``).
COMMON_FIELDS: tuple[str, ...] = ("Action", "PublicKey", "Signature", "request_uuid")

# --- GenerateFromMannequin -----------------------------------------------------------------------------

SEED_RANGE = Range(-1, 2147483647)          # -1 = draw one
SIZE_RANGE = Range(64, 2560)                # Width, Height
DEFAULT_SIZE = 1024
BATCH_SIZE_RANGE = Range(1, 16)
REFER_STRENGTH_RANGE = Range(0.0, 1.0)      # Image2Image.ReferStrength
DEFAULT_REFER_STRENGTH = 0.5

#: Native size and refinement (docs/API.md "Native size and refinement"): a Main model draws at its native size
#: (``native:`` in models_config, else its family's); a request larger than TWO_PASS_AREA times the native area
#: is drawn at the native area (the request's aspect ratio), upscaled and redrawn at the refine strength.
NATIVE_SIZES: dict[str, tuple[int, int]] = {"sd15": (512, 512), "sdxl": (1024, 1024)}
TWO_PASS_AREA = 1.2
REFINE_FIELD = "Refine"                     # the request's extension object: Refine.Strength, Refine.Upscaler
REFINE_STRENGTH_RANGE = Range(0.0, 1.0)     # 0 = upscale only
DEFAULT_REFINE_STRENGTH = 0.35
SIZE_MULTIPLE = 8                           # a pass's size: multiples of the VAE factor
#: A refine pass over more than REFINE_TILE_ABOVE times the native area runs in overlapping tiles of at most that
#: area (memory and attention cost bounded at any size), blended over REFINE_TILE_OVERLAP pixels.
REFINE_TILE_ABOVE = 6.25                    # sd15: tiles above 1280x1280; sdxl: above 2560x2560 (never, in range)
REFINE_TILE_OVERLAP = 128

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = "JustResize", "CropAndResize", "ResizeAndFill"
RESIZE_MODES: tuple[str, ...] = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)        # Mannequin.ResizeMode
DEFAULT_RESIZE_MODE = RESIZE_AND_FILL
DEFAULT_BACKGROUND_RESIZE_MODE = CROP_AND_RESIZE   # Image2Image.ResizeMode: a background covers the frame

MAX_SUB_MODELS = 8                          # SubModelList entries
MAX_CONTROL_UNITS = 3                       # ControlNetList (alias ControlNet) units, as PICPIK's
MAX_TASK_UIDS = 100                         # ListTasksDetails.TaskUIDList entries

# --- Priority (an extension of every task-creating action; docs/API.md "Priority") ----------------------------

PRIORITY_FIELD = "Priority"                 # higher runs first among queued jobs
PRIORITY_RANGE = Range(0, 9)
DEFAULT_PRIORITY = 5
MAX_PRIORITY_FIELD = "MaxPriority"          # a key file entry's cap on the Priority its requests may ask for
#: The extension fields every task-creating action reads besides its own (CallbackUrl is named by each action's).
TASK_FIELDS: tuple[str, ...] = (PRIORITY_FIELD,)

# --- InferenceParams (request values and models_config defaults) --------------------------------------

LORA_WEIGHT_RANGE = Range(-1.0, 2.0)        # LoRA LoraWeight; a HyperNetwork's strength
DEFAULT_LORA_WEIGHT = 1.0
RESOLUTION_RANGE = Range(64, 2048)          # PreProcessor Resolution ...
RESOLUTION_STEP = 64                        # ... a multiple of this
DEFAULT_RESOLUTION = 512
CONTROL_WEIGHT_RANGE = Range(0.0, 2.0)      # ControlModel ControlWeight
DEFAULT_CONTROL_WEIGHT = 1.0
STEP_RATIO_RANGE = Range(0.0, 1.0)          # ControlModel StartingStep / EndingStep, fractions of the steps
DEFAULT_STARTING_STEP = 0.0
DEFAULT_ENDING_STEP = 1.0

# A Main model's sampling defaults in models_config/ (not request fields).
STEPS_RANGE = Range(1, 150)
DEFAULT_STEPS = 25
GUIDANCE_SCALE_RANGE = Range(0.0, 30.0)
DEFAULT_GUIDANCE_SCALE = 7.0

# --- model types (ModelType), families and sources ---------------------------------------------------


class ModelType(StrEnum):
    """A model's kind (``ModelType`` in models_config/ and on the wire). A ``StrEnum``: each member is equal to
    its string (``entry.model_type == "Main"`` holds) and is written as that string in JSON and YAML.

    The tuples below group the members by what the wire does with them. A new kind is a member here, plus its
    place in those groups (a submodel kind: :data:`SUBMODEL_TYPES`; listed by ListModels:
    :data:`LIST_MODELS_FIELDS`; a ``demo:`` model: :data:`DEMO_SOURCES`), plus what reads and applies it on the
    worker (a submodel kind: one module of ``workers/submodels`` and its line in ``workers/submodels/kinds.py``).
    """

    MAIN = "Main"
    LORA = "LoRA"
    EMBEDDING = "Embedding"
    HYPERNETWORK = "HyperNetwork"
    CONTROL_MODEL = "ControlModel"
    PRE_PROCESSOR = "PreProcessor"
    BACKGROUND_REMOVER = "BackgroundRemover"
    POINT_SEGMENTER = "PointSegmenter"
    CLOTHES_SEGMENTER = "ClothesSegmenter"
    UPSCALER = "Upscaler"
    ERASER = "Eraser"          # RemoveContents: a LaMa-family inpainting file (spandrel)
    DESCRIBER = "Describer"    # DescribeImages: a transformers image-to-text folder


MODEL_TYPES: tuple[ModelType, ...] = tuple(ModelType)
MASK_ENGINE_TYPES: tuple[ModelType, ...] = (ModelType.BACKGROUND_REMOVER, ModelType.POINT_SEGMENTER,
                                            ModelType.CLOTHES_SEGMENTER)
SUBMODEL_TYPES: tuple[ModelType, ...] = (ModelType.LORA, ModelType.EMBEDDING, ModelType.HYPERNETWORK)  # SubModelList
CONTROL_TYPES: tuple[ModelType, ...] = (ModelType.PRE_PROCESSOR, ModelType.CONTROL_MODEL)  # listed by ListControlNets

#: ListModels' answer: the PICPIK field that lists each of PICPIK's generation types. A submodel kind PICPIK does
#: not have gets no field of its own (Atelier invents no PICPIK field): it is listed in ``Models`` alone.
LIST_MODELS_FIELDS: dict[ModelType, str] = {ModelType.MAIN: "MainModels", ModelType.LORA: "LoraModels",
                                            ModelType.EMBEDDING: "EmbeddingModels",
                                            ModelType.HYPERNETWORK: "HypernetworkModels"}
#: What ListModels' ``Models`` lists: the Main models and every submodel kind.
GENERATION_TYPES: tuple[ModelType, ...] = (ModelType.MAIN, *SUBMODEL_TYPES)

PREPROCESSOR_KINDS: tuple[str, ...] = ("openpose", "canny", "depth", "lineart")     # a PreProcessor's detector
FAMILIES: tuple[str, ...] = ("sd15", "sdxl")
SOURCE_KINDS: tuple[str, ...] = ("demo", "path", "file", "hub")

#: ConsumeApiPoint: each image a task makes costs its Main model's ``points`` (models_config/), by default
DEFAULT_POINTS = 1

#: The engines of each mask engine type (``engine:`` in models_config/): ``rembg`` runs an ONNX file in rembg's
#: layout (u2net, isnet, birefnet ...), ``rembg-cloth`` rembg's ``u2net_cloth_seg``, ``sam`` a transformers
#: SamModel folder, ``segformer`` a transformers semantic-segmentation folder; ``grabcut`` needs no weights.
MASK_ENGINES: dict[ModelType, tuple[str, ...]] = {
    ModelType.BACKGROUND_REMOVER: ("rembg", "grabcut"),
    ModelType.POINT_SEGMENTER: ("sam", "grabcut"),
    ModelType.CLOTHES_SEGMENTER: ("rembg-cloth", "segformer"),
}
#: The engines that read no weights (no ``source:``).
WEIGHT_FREE_ENGINES: tuple[str, ...] = ("grabcut",)

#: ``source: {demo: <kind>}``: the tiny models the demo deployment builds by code (``workers/demo``), by the
#: ModelType that may name each (``translator`` is the top-level translator's).
DEMO_SOURCES: dict[str, tuple[str, ...]] = {
    ModelType.MAIN: ("inpaint", "sd15"),
    ModelType.LORA: ("lora-kohya", "lora-peft"),
    ModelType.EMBEDDING: ("embedding",),
    ModelType.HYPERNETWORK: ("hypernetwork",),
    ModelType.CONTROL_MODEL: ("controlnet", "ip-adapter", "ip-adapter-faceid"),
    ModelType.PRE_PROCESSOR: ("annotators",),
    ModelType.BACKGROUND_REMOVER: ("u2net-onnx",),
    ModelType.POINT_SEGMENTER: ("sam",),
    ModelType.CLOTHES_SEGMENTER: ("segformer", "cloth-onnx"),
    ModelType.UPSCALER: ("upscaler",),
    ModelType.ERASER: ("eraser",),
    ModelType.DESCRIBER: ("describer",),
    "describe_translator": ("translator-en",),
    "translator": ("translator",),
    "image_encoder": ("clip-vision",),
    "face_model": ("arcface",),
}
DEMO_SOURCE_KINDS: tuple[str, ...] = tuple(kind for kinds in DEMO_SOURCES.values() for kind in kinds)


#: ``adapter:`` of a ControlModel entry (models_config/README.md "IP-Adapters"): a ControlModel that is not a
#: ControlNet. ``ip-adapter``: an IP-Adapter file (plain, plus, plus-face, full-face; SD 1.5 or SDXL) with its CLIP
#: vision encoder (``image_encoder:``); a unit naming one reads its reference image at ``ImageIndex``, takes no
#: PreProcessor, and its ControlWeight is the adapter's scale (docs/API.md "IP-Adapter units").
IP_ADAPTER = "ip-adapter"
#: ``ip-adapter-faceid``: a FaceID IP-Adapter file (h94/IP-Adapter-FaceID: faceid, faceid-plus, faceid-plusv2; SD 1.5
#: or SDXL) with the face-recognition ONNX model it reads faces through (``face_model:``) and, for the plus files,
#: the CLIP vision encoder (``image_encoder:``); its unit's reference must show a face (docs/API.md "FaceID units").
IP_ADAPTER_FACEID = "ip-adapter-faceid"
ADAPTER_KINDS: tuple[str, ...] = (IP_ADAPTER, IP_ADAPTER_FACEID)
#: The file a FaceID adapter's ``face_model: {file: ...}`` may be (an ArcFace ONNX model).
FACE_MODEL_SUFFIXES: tuple[str, ...] = (".onnx",)
#: The Error message of a FaceID unit whose reference shows no face, after the unit's field
#: (``ControlNetList[1].ImageIndex: no face found in the reference image``).
NO_FACE_MESSAGE = "no face found in the reference image"
#: The request field of the control units (PICPIK's; the alias ``ControlNet`` is read too: app/validation), which a
#: worker's message about a unit names (``ControlNetList[1].ImageIndex``).
CONTROL_UNITS_FIELD = "ControlNetList"
#: The files an IP-Adapter ``source: {file: ...}`` may be (the published layouts: safetensors, or a torch pickle).
ADAPTER_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin")


# --- mask actions (RemoveBackground, RemoveBackgroundsInBatch, ExtractContents: PICPIK-FACTS section 9) ----

ERODE_SIZE_RANGE = Range(0, 40)             # ErodeSize, pixels of edge blur
DEFAULT_ERODE_SIZE = 15
THRESHOLD_RANGE = Range(0, 255)             # ForegroundThreshold, BackgroundThreshold
DEFAULT_FOREGROUND_THRESHOLD = 240
DEFAULT_BACKGROUND_THRESHOLD = 15
HAIR_OPTIMIZATION_MODES: tuple[str, ...] = ("auto", "on", "off")
DEFAULT_HAIR_OPTIMIZATION = "auto"
MAX_POINTS = 32                             # IncludePointList / ExcludePointList entries (Atelier's limit)
MASK_ACTIONS: tuple[str, ...] = ("RemoveBackground", "RemoveBackgroundsInBatch", "ExtractContents")
#: The engine type each mask action runs (its ``Engine`` extension field names one of that type).
MASK_ACTION_ENGINE_TYPE: dict[str, ModelType] = {"RemoveBackground": ModelType.BACKGROUND_REMOVER,
                                                 "RemoveBackgroundsInBatch": ModelType.BACKGROUND_REMOVER,
                                                 "ExtractContents": ModelType.POINT_SEGMENTER}
#: The fields each mask action reads besides the common ones (any other is ignored and named in the Notes).
#: ``Engine`` (an extension) names the engine's ModelCode; absent: the deployment's default of its type.
ENGINE_FIELD = "Engine"
_REFINE_FIELDS = ("ErodeSize", "ForegroundThreshold", "BackgroundThreshold", "HairOptimization", "OnlyMask")
MASK_ACTION_FIELDS: dict[str, tuple[str, ...]] = {
    "RemoveBackground": ("RawImage", "Box", *_REFINE_FIELDS, ENGINE_FIELD),
    "RemoveBackgroundsInBatch": ("RawImages", *_REFINE_FIELDS, ENGINE_FIELD),
    "ExtractContents": ("RawImage", "IncludePointList", "ExcludePointList", *_REFINE_FIELDS, ENGINE_FIELD),
}
#: GenerateFromMannequin without ``Mannequin.ClothesMaskIndex``: the extension fields that choose the clothes
#: segmenter (a ClothesSegmenter's ModelCode) and the class ids that count as garment; the clothes mask made
#: is served as ``ClothesMaskUrl`` in the TaskDetail.
CLOTHES_SEGMENTER_FIELD = "Mannequin.ClothesSegmenter"
GARMENT_CLASSES_FIELD = "Mannequin.GarmentClasses"
MAX_GARMENT_CLASSES = 256
CLOTHES_MASK_URL_FIELD = "ClothesMaskUrl"


def number(x: float) -> str:
    """A bound as written in a message: ``1`` rather than ``1.0``."""
    return str(int(x)) if float(x).is_integer() else str(x)


# --- upscaling (ResizeImage's Upscaler, GenerateFromMannequin's Refine.Upscaler; docs/API.md "Upscalers") ------

#: What enlarges an image: Pillow's Lanczos filter (no model), the default, or an ``Upscaler`` entry of models_config
#: (a super-resolution file) named by its ModelCode. A request names Lanczos by leaving the field out (or null), or
#: by this word (any case), which no ModelCode may be.
LANCZOS = "Lanczos"
UPSCALER_FIELD = "Upscaler"                 # ResizeImage.Upscaler
REFINE_UPSCALER_FIELD = f"{REFINE_FIELD}.{UPSCALER_FIELD}"   # GenerateFromMannequin's Refine.Upscaler
#: An Upscaler runs on tiles of ``size`` x ``size`` input pixels that overlap by ``overlap`` (``tile:`` in
#: models_config): the device holds one tile's activations whatever the image's size.
DEFAULT_UPSCALE_TILE = 512
DEFAULT_UPSCALE_OVERLAP = 32
UPSCALE_TILE_RANGE = Range(32, 4096)
#: ListModels' extension list of the Upscalers (``{ModelCode, Name, ModelType}``), what a request may name.
UPSCALERS_FIELD = "Upscalers"


def is_lanczos(name: str | None) -> bool:
    """Whether an upscaler name (a request's ``Upscaler``, a ``refine.upscaler``) means Lanczos: absent or the
    word :data:`LANCZOS` in any case."""
    return name is None or name.lower() == LANCZOS.lower()


# --- ResizeImage (PICPIK-FACTS section 5) --------------------------------------------------------------------

RESIZE_ACTION = "ResizeImage"
RESIZE_SIZE_RANGE = Range(64, 4096)         # ResizeImage Width, Height
#: The fields ResizeImage reads besides the common ones and ``CallbackUrl`` (any other is ignored and named in the
#: Notes): ``Upscaler`` (PICPIK names it, Atelier reads a ModelCode there) chooses the upscaler, Lanczos by default
#: (docs/API.md "ResizeImage").
RESIZE_FIELDS: tuple[str, ...] = ("Image", "Width", "Height", UPSCALER_FIELD)


# --- Faces (docs/faces.md): the redraw after a generation (FaceRefine) and RestoreFaces (PICPIK-FACTS section 5) --

#: GenerateFromMannequin's extension object: ``FaceRefine.Enabled`` (Bool; absent: true when FaceRefine is sent,
#: else the Main model's ``faces.refine``) and ``FaceRefine.Strength`` (Float; absent: the model's
#: ``faces.strength``).
FACE_REFINE_FIELD = "FaceRefine"
FACE_REFINE_FIELDS: tuple[str, ...] = ("Enabled", "Strength")
FACE_STRENGTH_RANGE = Range(0.0, 1.0)       # FaceRefine.Strength, faces.strength: the img2img strength of a face
DEFAULT_FACE_STRENGTH = 0.4
#: The smallest face the detector looks for (MTCNN's ``min_face_size``), in pixels of the box's longer side: the
#: least ``faces.min_size`` may be, and its default.
FACE_DETECT_MIN_PX = 20
FACE_SIZE_RANGE = Range(FACE_DETECT_MIN_PX, 4096)   # faces.min_size, faces.max_size (pixels, the longer side)
#: ``faces.min_score``: the detector's confidence a face needs (below about 0.9 MTCNN also finds faces in busy
#: textures).
FACE_SCORE_RANGE = Range(0.5, 1.0)
DEFAULT_FACE_MIN_SCORE = 0.9

RESTORE_FACES_ACTION = "RestoreFaces"
#: The fields RestoreFaces reads besides the common ones and ``CallbackUrl`` (any other is ignored and named in
#: the Notes): PICPIK's ``RawImage`` and ``RestoreStrength``, and ``MainModel`` (an extension: the Main model that
#: redraws the faces; absent, the deployment's default).
RESTORE_FACES_FIELDS: tuple[str, ...] = ("RawImage", "RestoreStrength", "MainModel")
RESTORE_STRENGTH_RANGE = Range(0.0, 1.0)    # RestoreStrength (PICPIK: step 0.01); 0 leaves the image unchanged
DEFAULT_RESTORE_STRENGTH = 0.5

SWITCH_FACE_ACTION = "SwitchFace"
#: The fields SwitchFace reads besides the common ones and ``CallbackUrl`` (any other is ignored and named in the
#: Notes): PICPIK's ``RawImage``, ``RawFaceIndex`` and ``NewFaceImage``, and three extensions: ``MainModel`` (the Main
#: model that redraws the face; absent, the deployment's default), ``Adapter`` (the IP-Adapter ControlModel that
#: carries the new identity; absent, the deployment's first IP-Adapter of the Main model's family) and
#: ``PersonaCode`` (the new identity as one of the key's personas, instead of NewFaceImage: exactly one of the two).
SWITCH_FACE_FIELDS: tuple[str, ...] = ("RawImage", "RawFaceIndex", "NewFaceImage", "MainModel", "Adapter",
                                       "PersonaCode")
#: RawFaceIndex: which face of RawImage, 1-based, counted in reading order (left to right by the faces' left edges,
#: then top to bottom: :func:`workers.faces.detect.reading_order`).
RAW_FACE_INDEX_RANGE = Range(1, 100)
DEFAULT_RAW_FACE_INDEX = 1
#: The img2img strength the chosen face is redrawn at (fixed: enough of the schedule for another identity's
#: features, little enough to keep the pose, light and expression of the photo).
SWITCH_FACE_STRENGTH = 0.7


# --- Personas (docs/API.md "Personas"): a key's saved reference images, named by a PersonaCode ----------------------

CREATE_PERSONA_ACTION, LIST_PERSONAS_ACTION, DELETE_PERSONA_ACTION = "CreatePersona", "ListPersonas", "DeletePersona"
PERSONA_ACTIONS: tuple[str, ...] = (CREATE_PERSONA_ACTION, LIST_PERSONAS_ACTION, DELETE_PERSONA_ACTION)
#: The field naming a persona: CreatePersona's answer, DeletePersona's body, an IP-Adapter unit instead of ImageIndex.
PERSONA_CODE_FIELD = "PersonaCode"
PERSONA_NAME_FIELD = "Name"
PERSONA_IMAGES_FIELD = "ImageList"
PERSONA_NAME_CHARS = Range(1, 64)           # Name: characters (stripped of surrounding spaces)
#: A PersonaCode: ``p`` and 21 lower-case base-32 characters (105 random bits, as a TaskUID).
PERSONA_CODE_PATTERN = r"^p[0-9a-v]{21}$"
#: The defaults of ATELIER_MAX_PERSONAS_PER_KEY and ATELIER_MAX_PERSONA_IMAGES.
DEFAULT_MAX_PERSONAS_PER_KEY = 20
DEFAULT_MAX_PERSONA_IMAGES = 8


# --- GenerateBackgrounds and ModifyMaskedPixels (PICPIK-FACTS sections 3-5; docs/API.md) ---------------------------

GENERATE_BACKGROUNDS_ACTION = "GenerateBackgrounds"
#: GenerateBackgrounds' own fields (besides the shared generation block): PICPIK's Foreground object as
#: ``TransparentForeground`` ({ImageIndex, ResizeMode}: a PNG with alpha), ``BackgroundImage2Image`` (an
#: Image2Image: {ImageIndex, ReferStrength, ResizeMode}) and the images in ``ImageList`` (or ImageAndMaskList).
FOREGROUND_FIELD = "TransparentForeground"
BACKGROUND_I2I_FIELD = "BackgroundImage2Image"
#: A foreground pixel of this alpha is kept bit for bit; one of alpha 1..254 is blended over the drawn scene.
OPAQUE_ALPHA = 255

MODIFY_MASKED_ACTION = "ModifyMaskedPixels"
#: ModifyMaskedPixels' ``Masked`` (PICPIK's ``Mask`` type, whose fields were not retrievable: the shape is Atelier's):
#: {ImageIndex (required), MaskIndex (optional: absent, nothing is masked), InvertMask, MaskBlur, ResizeMode}.
MASKED_FIELD = "Masked"
MASKED_FIELDS: tuple[str, ...] = ("ImageIndex", "MaskIndex", "InvertMask", "MaskBlur", "ResizeMode")
#: MaskBlur (ModifyMaskedPixels' Masked.MaskBlur, RemoveContents' MaskBlur): how far (pixels) the edited area is
#: feathered beyond the mask; the pixels farther than this from every mask pixel keep their values bit for bit.
MASK_BLUR_RANGE = Range(0, 64)
DEFAULT_MASK_BLUR = 12
# --- RemoveContents and DescribeImages (PICPIK-FACTS section 5; docs/API.md "RemoveContents", "DescribeImages") ---

REMOVE_CONTENTS_ACTION = "RemoveContents"
ERASER_FIELD = "Eraser"                     # an extension: an Eraser's ModelCode
#: The fields RemoveContents reads besides the common ones and ``CallbackUrl`` (any other is ignored and named in
#: the Notes): PICPIK's ``RawImage``, ``Mask`` (white = erase), ``InvertMask`` and ``MaskBlur``, and two extensions:
#: ``Eraser`` (an Eraser's ModelCode) and ``MainModel`` (the Main model that redraws the area instead: the inpainting
#: fallback). Neither: the deployment's first Eraser, else its default Main model.
REMOVE_CONTENTS_FIELDS: tuple[str, ...] = ("RawImage", "Mask", "InvertMask", "MaskBlur", ERASER_FIELD, "MainModel")
#: A Mask pixel at or above this grey level (after InvertMask) is erased.
MASK_WHITE_LEVEL = 128
#: The inpainting fallback's prompts: an empty scene where the object was.
ERASE_PROMPT = "empty background, clean surface, nothing there, seamless continuation of the surroundings"
ERASE_NEGATIVE_PROMPT = "object, person, text, watermark, logo, clutter"

DESCRIBE_IMAGES_ACTION = "DescribeImages"
DESCRIBER_FIELD = "Describer"               # an extension: a Describer's ModelCode
TRANSLATE_DESCRIPTION_FIELD = "TranslateDescription"
#: The fields DescribeImages reads besides the common ones and ``CallbackUrl``: PICPIK's ``ImageList`` and
#: ``TranslateDescription``, and ``Describer`` (an extension: the Describer's ModelCode; absent, the first one).
DESCRIBE_IMAGES_FIELDS: tuple[str, ...] = ("ImageList", TRANSLATE_DESCRIPTION_FIELD, DESCRIBER_FIELD)
#: PICPIK's "Support Language List" (PICPIK-FACTS section 5, DescribeImages): TranslateDescription is one of these.
DESCRIBE_LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "ko", "fr", "es", "it", "de", "tr", "ru", "pt", "vi", "id",
                                       "th", "ms")
DEFAULT_DESCRIBE_LANGUAGE = "en"
#: The TaskDetail field of text results: one description per image of DescribeImages, in ImageList's order.
TXT_LIST_FIELD = "TxtList"
#: ListModels' extension lists: the Erasers and the Describers (``{ModelCode, Name, ModelType}``; a Describer also
#: its ``Languages``, the TranslateDescription values it serves).
ERASERS_FIELD = "Erasers"
DESCRIBERS_FIELD = "Describers"


# --- GenerateImages (PICPIK-FACTS section 5; docs/API.md) ----------------------------------------------------------

GENERATE_IMAGES_ACTION = "GenerateImages"
#: GenerateImages' ``Tileable`` (Bool, default false): a seamless texture, the image drawn on a torus (circular
#: padding in the Main model's UNet and VAE convolutions, and in its ControlNets').
TILEABLE_FIELD = "Tileable"
#: A Tileable image is drawn at exactly its size, so Width and Height must be multiples of this (the VAE's factor:
#: the pipeline pads any other size, and the padding would be a seam).
TILEABLE_MULTIPLE = 8
