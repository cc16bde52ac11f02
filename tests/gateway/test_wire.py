"""GenerateFromMannequin body validation (app.validation.fields) and image decoding (app.validation.images).

Every failure must be a 230 whose message names the parameter by its path and states the rule."""
from __future__ import annotations

import base64
import hashlib
import re
import struct
import warnings
import zlib
from dataclasses import replace

import pytest
from PIL import Image, ImageFile

from app.contract.codes import RetCode
from app.contract.storage import Storage
from app.contract.storage_local import LocalStore
from app.errors import ApiError
from app.validation.fields import check_float, check_int, check_str_list
from app.validation.generate import parse_generate
from app.validation.images import decode_image
from support.bodies import LIMITS, MASK, PHOTO, b64, body, image_bytes


def full_body() -> dict:
    """A body with every field given (and the nested objects the paths below need)."""
    return body(
        MainModel={"Name": "Base", "ModelCode": "base-sd15", "IsOfficial": True, "TriggerWordList": [],
                   "InferenceParams": {}},
        SubModelList=[{"ModelCode": "lora-a", "InferenceParams": {"LoraWeight": 0.8}}],
        PositivePrompts=["girl", "smile"],
        NegativePrompts=["blurry"],
        TranslatePrompts=False,
        Seed=42,
        Width=512,
        Height=768,
        BatchSize=2,
        UseMainModelVAE=True,
        Image2Image={"ImageIndex": 0, "ReferStrength": 0.3},
        Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1, "ResizeMode": "CropAndResize", "InvertMask": True},
        Refine={"Strength": 0.5, "Upscaler": "up-x4"},
    )


_STEP = re.compile(r"([^.\[]+)|\[(\d+)\]")


def set_path(obj: dict, path: str, value) -> dict:
    """Set (or with value ``...``, delete) ``path`` like ``SubModelList[0].InferenceParams.LoraWeight``."""
    steps = [name if name else int(index) for name, index in _STEP.findall(path)]
    target = obj
    for step in steps[:-1]:
        target = target[step]
    if value is ...:
        del target[steps[-1]]
    else:
        target[steps[-1]] = value
    return obj


def parse(b: dict, **limits):
    return parse_generate(b, **{**LIMITS, **limits})


def rejected(b: dict, name: str, **limits) -> str:
    """Parse ``b``, expect a 230 naming ``name``; return the rule part of the message."""
    with pytest.raises(ApiError) as info:
        parse(b, **limits)
    error = info.value
    assert error.ret_code == RetCode.BAD_PARAM
    prefix = f"Params [{name}] not available: "
    assert error.message.startswith(prefix), error.message
    return error.message[len(prefix):]


# --- defaults and normalization ----------------------------------------------------------------


def test_minimal_body_gets_every_default():
    r = parse(body())
    assert r.main_model == "base-sd15"
    assert r.sub_models == []
    assert r.positive_prompts == [] and r.negative_prompts == []
    assert r.translate_prompts is True
    assert r.seed == -1
    assert (r.width, r.height, r.batch_size) == (1024, 1024, 1)
    assert r.use_main_model_vae is False
    assert (r.mannequin_index, r.clothes_mask_index) == (0, 1)
    assert r.resize_mode == "ResizeAndFill"
    assert r.invert_mask is False
    assert r.background_index is None and r.background is None
    assert r.refer_strength == 0.5
    assert len(r.images) == 2


def test_every_field_given_is_normalized():
    r = parse(full_body())
    assert r.main_model == "base-sd15"
    assert [(s.model_code, s.lora_weight) for s in r.sub_models] == [("lora-a", 0.8)]
    assert r.positive_prompts == ["girl", "smile"] and r.negative_prompts == ["blurry"]
    assert r.translate_prompts is False
    assert (r.seed, r.width, r.height, r.batch_size) == (42, 512, 768, 2)
    assert r.use_main_model_vae is True
    assert r.resize_mode == "CropAndResize" and r.invert_mask is True
    assert r.background_index == 0 and r.refer_strength == 0.3
    assert r.mannequin is r.images[0] and r.clothes_mask is r.images[1] and r.background is r.images[0]
    assert r.images[1].mode == "L"
    assert (r.refine_strength, r.refine_upscaler) == (0.5, "up-x4")


def test_refine_upscaler_absent_or_null_is_the_models_and_lanczos_in_any_case_is_lanczos():
    assert parse(body()).refine_upscaler is None and parse(body(Refine={"Upscaler": None})).refine_upscaler is None
    for word in ("Lanczos", "lanczos", "LANCZOS"):
        assert parse(body(Refine={"Upscaler": word})).refine_upscaler == "Lanczos"


def test_explicit_null_means_default():
    b = body(SubModelList=None, PositivePrompts=None, NegativePrompts=None, TranslatePrompts=None, Seed=None,
             Width=None, Height=None, BatchSize=None, UseMainModelVAE=None, Image2Image=None)
    b["Mannequin"].update(ResizeMode=None, InvertMask=None)
    r = parse(b)
    assert (r.sub_models, r.positive_prompts, r.negative_prompts) == ([], [], [])
    assert (r.translate_prompts, r.seed, r.width, r.height, r.batch_size) == (True, -1, 1024, 1024, 1)
    assert (r.use_main_model_vae, r.background_index, r.resize_mode, r.invert_mask) == (False, None,
                                                                                        "ResizeAndFill", False)


def test_lora_weight_absent_is_none_and_image2image_default_strength():
    b = body(SubModelList=[{"ModelCode": "emb"}, {"ModelCode": "lora", "InferenceParams": {"LoraWeight": None}}],
             Image2Image={"ImageIndex": 1})
    r = parse(b)
    assert [s.lora_weight for s in r.sub_models] == [None, None]
    assert r.background_index == 1 and r.refer_strength == 0.5


def test_whole_floats_are_ints_and_ints_are_floats():
    r = parse(body(Width=512.0, Seed=7.0, BatchSize=2.0, Image2Image={"ImageIndex": 1.0, "ReferStrength": 1},
                   Mannequin={"ImageIndex": 0.0, "ClothesMaskIndex": 1.0},
                   SubModelList=[{"ModelCode": "l", "InferenceParams": {"LoraWeight": 2}}]))
    assert (r.width, r.seed, r.batch_size, r.background_index, r.mannequin_index) == (512, 7, 2, 1, 0)
    assert all(type(v) is int for v in (r.width, r.seed, r.batch_size, r.background_index, r.clothes_mask_index))
    assert r.refer_strength == 1.0 and type(r.refer_strength) is float
    assert r.sub_models[0].lora_weight == 2.0 and type(r.sub_models[0].lora_weight) is float


def test_unknown_fields_are_ignored_at_every_level():
    b = full_body()
    b.update(PublicKey="k", Signature="s", request_uuid="u", SomethingNew={"x": [1]})
    b["MainModel"]["ModelType"] = "Main"
    b["Mannequin"]["Extra"] = 1
    b["Image2Image"]["Extra"] = "x"
    got = parse(b)
    assert got.ignored_fields == ["SomethingNew"]  # only the top level is reported (in the task's Notes)
    assert replace(got, ignored_fields=[]) == parse(full_body())


# --- ranges ------------------------------------------------------------------------------------

RANGED = [
    # path, lo, hi, read the normalized value
    ("Seed", -1, 2147483647, lambda r: r.seed),
    ("Width", 64, 2560, lambda r: r.width),
    ("Height", 64, 2560, lambda r: r.height),
    ("BatchSize", 1, 16, lambda r: r.batch_size),
    ("Image2Image.ReferStrength", 0, 1, lambda r: r.refer_strength),
    ("SubModelList[0].InferenceParams.LoraWeight", -1, 2, lambda r: r.sub_models[0].lora_weight),
    ("Refine.Strength", 0, 1, lambda r: r.refine_strength),
]
FLOAT_PATHS = {"Image2Image.ReferStrength", "SubModelList[0].InferenceParams.LoraWeight", "Refine.Strength"}


@pytest.mark.parametrize(("path", "lo", "hi", "read"), RANGED, ids=[r[0] for r in RANGED])
def test_range_bounds_are_inclusive(path, lo, hi, read):
    for value in (lo, hi):
        assert read(parse(set_path(full_body(), path, value))) == value


@pytest.mark.parametrize(("path", "lo", "hi", "read"), RANGED, ids=[r[0] for r in RANGED])
def test_range_just_outside_is_rejected(path, lo, hi, read):
    outside = [lo - 1, hi + 1] + ([lo - 0.01, hi + 0.01] if path in FLOAT_PATHS else [])
    for value in outside:
        assert rejected(set_path(full_body(), path, value), path) == f"must be between {lo} and {hi}"


def test_lora_weight_of_the_main_model_is_range_checked_too():
    b = set_path(full_body(), "MainModel.InferenceParams.LoraWeight", 2.5)
    assert rejected(b, "MainModel.InferenceParams.LoraWeight") == "must be between -1 and 2"


def test_the_second_sub_model_is_named_by_its_index():
    b = full_body()
    b["SubModelList"].append({"ModelCode": "lora-b", "InferenceParams": {"LoraWeight": -1.5}})
    assert rejected(b, "SubModelList[1].InferenceParams.LoraWeight") == "must be between -1 and 2"


# --- indexes -----------------------------------------------------------------------------------

INDEXES = ["Mannequin.ImageIndex", "Mannequin.ClothesMaskIndex", "Image2Image.ImageIndex"]


@pytest.mark.parametrize("path", INDEXES)
def test_index_bounds(path):
    assert parse(set_path(full_body(), path, 1)) is not None  # last valid index (2 images)
    for value in (-1, 2, 100):
        rule = rejected(set_path(full_body(), path, value), path)
        assert rule == "must be between 0 and 1 (an index into ImageAndMaskList)"


def test_index_bounds_follow_the_list_length():
    b = full_body()
    b["ImageAndMaskList"].append(PHOTO)
    assert parse(set_path(b, "Image2Image.ImageIndex", 2)).background_index == 2
    assert rejected(set_path(b, "Mannequin.ClothesMaskIndex", 3), "Mannequin.ClothesMaskIndex") == (
        "must be between 0 and 2 (an index into ImageAndMaskList)")


# --- required fields ---------------------------------------------------------------------------

REQUIRED_PATHS = ["MainModel.ModelCode", "Mannequin", "Mannequin.ImageIndex", "Image2Image.ImageIndex"]


@pytest.mark.parametrize("how", ["missing", "null"])
def test_clothes_mask_index_may_be_left_out(how):
    """Without ClothesMaskIndex the deployment's clothes segmenter makes the mask (the action checks that
    one is configured); the extension fields choose it and its garment classes."""
    b = set_path(full_body(), "Mannequin.ClothesMaskIndex", ... if how == "missing" else None)
    req = parse(b)
    assert req.clothes_mask_index is None and req.clothes_mask is None
    assert req.clothes_segmenter is None and req.garment_classes is None
    b["Mannequin"].update(ClothesSegmenter="my-seg", GarmentClasses=[4, 7, 4])
    req = parse(b)
    assert req.clothes_segmenter == "my-seg" and req.garment_classes == [4, 7]


@pytest.mark.parametrize("field, value, rule", [
    ("GarmentClasses", [], "must have between 1 and 256 elements"),
    ("GarmentClasses", [1, 256], "must be between 0 and 255"),
    ("GarmentClasses", "4", "must be an array"),
    ("ClothesSegmenter", "", "must be a non-empty string"),
    ("ClothesSegmenter", 3, "must be a string"),
])
def test_clothes_segmenter_fields_are_checked(field, value, rule):
    b = set_path(full_body(), "Mannequin.ClothesMaskIndex", ...)
    b["Mannequin"][field] = value
    name = f"Mannequin.{field}" + ("[1]" if value == [1, 256] else "")
    assert rejected(b, name) == rule


def test_clothes_segmenter_fields_need_no_given_mask():
    b = full_body()
    b["Mannequin"]["GarmentClasses"] = [4]
    assert "without Mannequin.ClothesMaskIndex" in rejected(b, "Mannequin.GarmentClasses")


@pytest.mark.parametrize("path", REQUIRED_PATHS)
@pytest.mark.parametrize("how", ["missing", "null"])
def test_required_fields(path, how):
    b = set_path(full_body(), path, ... if how == "missing" else None)
    assert rejected(b, path) == "is required"


# --- types -------------------------------------------------------------------------------------

WRONG_TYPES = [
    ("Width", "512", "must be an integer"),
    ("Width", True, "must be an integer"),
    ("Height", 512.5, "must be an integer"),
    ("Seed", 1.5, "must be an integer"),
    ("BatchSize", [1], "must be an integer"),
    ("Mannequin.ImageIndex", "0", "must be an integer"),
    ("Mannequin.ClothesMaskIndex", False, "must be an integer"),
    ("Image2Image.ImageIndex", 0.5, "must be an integer"),
    ("Image2Image.ReferStrength", "0.5", "must be a number"),
    ("Image2Image.ReferStrength", True, "must be a number"),
    ("Refine.Strength", "0.3", "must be a number"),
    ("Refine", 0.3, "must be an object"),
    ("Refine.Upscaler", 5, "must be a string"),
    ("Refine.Upscaler", "", "must be a non-empty string"),
    ("Refine.Upscaler", ["up-x4"], "must be a string"),
    ("SubModelList[0].InferenceParams.LoraWeight", "1", "must be a number"),
    ("TranslatePrompts", "true", "must be a boolean (true or false)"),
    ("TranslatePrompts", 1, "must be a boolean (true or false)"),
    ("UseMainModelVAE", 0, "must be a boolean (true or false)"),
    ("Mannequin.InvertMask", "false", "must be a boolean (true or false)"),
    ("MainModel.IsOfficial", "yes", "must be a boolean (true or false)"),
    ("PositivePrompts", "girl", "must be an array"),
    ("NegativePrompts", {"a": 1}, "must be an array"),
    ("MainModel", "base-sd15", "must be an object"),
    ("MainModel.ModelCode", 5, "must be a string"),
    ("MainModel.ModelCode", "", "must be a non-empty string"),
    ("MainModel.Name", 5, "must be a string"),
    ("MainModel.TriggerWordList", "word", "must be an array"),
    ("MainModel.InferenceParams", [], "must be an object"),
    ("SubModelList", {"ModelCode": "x"}, "must be an array"),
    ("SubModelList[0]", "lora-a", "must be an object"),
    ("SubModelList[0].ModelCode", None, "is required"),
    ("ImageAndMaskList", PHOTO, "must be an array"),
    ("Mannequin", [0, 1], "must be an object"),
    ("Image2Image", "background", "must be an object"),
    ("Mannequin.ResizeMode", 1, "must be a string"),
    ("Mannequin.ResizeMode", "Stretch", "must be one of JustResize, CropAndResize, ResizeAndFill"),
    ("Mannequin.ResizeMode", "justresize", "must be one of JustResize, CropAndResize, ResizeAndFill"),
    ("Image2Image.ResizeMode", "Cover", "must be one of JustResize, CropAndResize, ResizeAndFill"),
    ("Image2Image.ResizeMode", 2, "must be a string"),
]


@pytest.mark.parametrize(("path", "value", "rule"), WRONG_TYPES, ids=[f"{p}={v!r}"[:60] for p, v, _ in WRONG_TYPES])
def test_wrong_types(path, value, rule):
    assert rejected(set_path(full_body(), path, value), path) == rule


@pytest.mark.parametrize("mode", ["JustResize", "CropAndResize", "ResizeAndFill"])
def test_every_resize_mode_is_accepted(mode):
    assert parse(set_path(full_body(), "Mannequin.ResizeMode", mode)).resize_mode == mode


def test_prompt_elements_are_named_by_index():
    assert rejected(body(PositivePrompts=["girl", 3]), "PositivePrompts[1]") == "must be a string"
    assert rejected(body(NegativePrompts=[None]), "NegativePrompts[0]") == "is required"
    b = set_path(full_body(), "SubModelList[0].TriggerWordList", ["ok", ["nested"]])
    assert rejected(b, "SubModelList[0].TriggerWordList[1]") == "must be a string"


@pytest.mark.parametrize("field", ["PositivePrompts", "NegativePrompts"])
def test_prompt_length_limit_counts_all_elements(field):
    assert parse(body(**{field: ["a" * 60, "b" * 40]}), max_prompt_chars=100) is not None
    rule = rejected(body(**{field: ["a" * 60, "b" * 41]}), field, max_prompt_chars=100)
    assert rule == "must have at most 100 characters in total"


def test_image_list_count():
    assert rejected(body(ImageAndMaskList=[]), "ImageAndMaskList") == "must have between 1 and 8 elements"
    b = body(ImageAndMaskList=[PHOTO, MASK, PHOTO])
    assert len(parse(b, max_images=3).images) == 3
    assert rejected(b, "ImageAndMaskList", max_images=2) == "must have between 1 and 2 elements"


def test_body_must_be_an_object():
    with pytest.raises(ApiError) as info:
        parse_generate([1, 2], **LIMITS)  # type: ignore[arg-type]
    assert info.value.message == "Params [body] not available: must be a JSON object"


# --- order of the checks -----------------------------------------------------------------------


def test_first_problem_in_documented_order_is_reported():
    b = body(Width=10, Seed="x", BatchSize=99)
    del b["Mannequin"]
    assert rejected(b, "Seed") == "must be an integer"  # Seed before Width before BatchSize before Mannequin
    b["Seed"] = 1
    assert rejected(b, "Width").startswith("must be between")
    b["Width"] = 64
    assert rejected(b, "BatchSize").startswith("must be between")
    b["BatchSize"] = 1
    assert rejected(b, "Mannequin") == "is required"


def test_image2image_is_checked_before_mannequin():
    b = body(Image2Image={"ImageIndex": 9}, Mannequin={"ImageIndex": 9, "ClothesMaskIndex": 9})
    rejected(b, "Image2Image.ImageIndex")


def test_indexes_are_checked_before_images_are_decoded():
    b = body(ImageAndMaskList=["not base64!", MASK], Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 5})
    rejected(b, "Mannequin.ClothesMaskIndex")


def test_every_image_is_decoded_even_when_unreferenced():
    b = body(ImageAndMaskList=[PHOTO, MASK, b64(b"not an image at all")])
    assert "not a decodable image" in rejected(b, "ImageAndMaskList[2]")


def test_the_first_broken_image_is_reported():
    b = body(ImageAndMaskList=[PHOTO, "%%%", b64(b"junk")])
    assert rejected(b, "ImageAndMaskList[1]") == "not valid base64"


# --- images ------------------------------------------------------------------------------------


def decode_error(value, max_pixels=LIMITS["max_pixels"]) -> str:
    with pytest.raises(ApiError) as info:
        decode_image(value, "ImageAndMaskList[1]", max_pixels)
    assert info.value.ret_code == RetCode.BAD_PARAM
    prefix = "Params [ImageAndMaskList[1]] not available: "
    assert info.value.message.startswith(prefix), info.value.message
    return info.value.message[len(prefix):]


def test_decoded_image_describes_the_upload():
    data = image_bytes((12, 7), "RGBA")
    image = decode_image(b64(data), "x", 1000)
    assert image.data == data
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert (image.width, image.height, image.format, image.mode) == (12, 7, "PNG", "RGBA")


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("PNG", "L"), ("PNG", "1"), ("PNG", "P"),
                                           ("JPEG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB")])
def test_allowed_formats(fmt, mode):
    image = decode_image(b64(image_bytes((8, 8), mode, fmt)), "x", 1000)
    assert (image.format, image.mode) == (fmt, mode)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO"])
def test_other_formats_are_refused(fmt):
    assert decode_error(b64(image_bytes((8, 8), "RGB", fmt))) == "not a decodable image (PNG, JPEG, WEBP or BMP)"


def test_data_url_prefix_and_line_breaks_are_accepted():
    data = image_bytes((16, 16), noise=True)
    wrapped = base64.encodebytes(data).decode()  # 76-character lines
    assert "\n" in wrapped
    for text in (f"data:image/png;base64,{wrapped}", f"DATA:image/jpeg;base64,{PHOTO}",
                 f"  data:image/png;charset=binary;base64,\n{wrapped}  ", f"\r\n{wrapped}\t"):
        assert decode_image(text, "x", 1000).format == "PNG"
    assert decode_image(f"data:image/png;base64,{wrapped}", "x", 1000).data == data


def test_urlsafe_alphabet_and_missing_padding_are_accepted():
    data = next(d for d in (image_bytes((n, n), noise=True) for n in range(16, 19)) if len(d) % 3)
    standard = b64(data)
    assert standard.endswith("=")  # the test data does need padding
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert urlsafe != standard.rstrip("=")  # the test data does use + or /
    assert decode_image(urlsafe, "x", 1000).data == data
    assert decode_image(standard.rstrip("="), "x", 1000).data == data


@pytest.mark.parametrize(("value", "rule"), [
    (123, "must be a base64 string"),
    (None, "must be a base64 string"),
    ({"data": PHOTO}, "must be a base64 string"),
    ("", "must not be empty"),
    ("  \n ", "must not be empty"),
    ("data:image/png;base64,", "must not be empty"),
    ("abc$def", "not valid base64"),
    ("AAAAA", "not valid base64"),           # 1 more than a multiple of 4 characters
    ("QQ==QQ==", "not valid base64"),        # padding in the middle
    ("data:image/png,%89PNG", "a data URL must be base64 (data:image/...;base64,...)"),
])
def test_bad_strings(value, rule):
    assert decode_error(value) == rule


def test_bytes_that_are_not_an_image():
    assert decode_error(b64(b"hello, world")) == "not a decodable image (PNG, JPEG, WEBP or BMP)"
    assert decode_error(b64(image_bytes()[:20])) == "not a decodable image (PNG, JPEG, WEBP or BMP)"


@pytest.mark.parametrize(("fmt", "rule"), [
    ("PNG", "not a decodable image (PNG, JPEG, WEBP or BMP): the file is truncated or corrupt"),
    ("JPEG", "not a decodable image (PNG, JPEG, WEBP or BMP): the file is truncated or corrupt"),
    ("WEBP", "not a decodable image (PNG, JPEG, WEBP or BMP)"),  # libwebp refuses it on opening
])
def test_truncated_image_is_refused(fmt, rule):
    data = image_bytes((64, 64), "RGB", fmt, noise=True)
    assert decode_error(b64(data[: len(data) // 2])) == rule


def test_png_without_its_end_is_refused():
    data = image_bytes((64, 64), "RGB", "PNG", noise=True)
    assert data.endswith(b"IEND\xaeB`\x82")
    assert decode_error(b64(data[:-12])).endswith("the file is truncated or corrupt")  # IEND missing


def test_corrupted_png_is_refused():
    data = bytearray(image_bytes((64, 64), "RGB", "PNG", noise=True))
    data[len(data) // 2] ^= 0xFF
    assert decode_error(b64(bytes(data))).endswith("the file is truncated or corrupt")


def test_a_file_already_stored_is_not_decoded_again_but_its_header_is_still_checked():
    """``known`` (the storage's has_input): a content hash stored before passed the full checks then; only the
    header is read again. Shown with a corrupt file claimed as known: accepted unread, while the same bytes
    unknown are refused; the size limit applies to a known file all the same."""
    data = bytearray(image_bytes((64, 64), "RGB", "PNG", noise=True))
    data[len(data) // 2] ^= 0xFF
    seen = []

    def known(sha: str) -> bool:
        seen.append(sha)
        return True

    image = decode_image(b64(bytes(data)), "x", 10_000, known)
    assert (image.width, image.height, image.format) == (64, 64, "PNG")
    assert seen == [hashlib.sha256(bytes(data)).hexdigest()] == [image.sha256]
    with pytest.raises(ApiError, match="truncated or corrupt"):
        decode_image(b64(bytes(data)), "x", 10_000, lambda sha: False)
    with pytest.raises(ApiError, match="more than 1000 pixels"):
        decode_image(b64(bytes(data)), "x", 1000, known)


def test_the_gateway_knows_an_input_once_it_has_stored_it(tmp_path):
    storage = Storage(LocalStore(tmp_path))
    data = image_bytes((8, 8), "RGB", "PNG")
    sha = hashlib.sha256(data).hexdigest()
    assert not storage.has_input(sha) and not storage.has_input("../etc")
    storage.put_input(sha, data)
    assert storage.has_input(sha)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of width x height black pixels: a few KB that decode to
    width*height/8 bytes. Built row by row so making it costs no more memory than one row."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_20k() -> bytes:
    return bomb_png(20000, 20000)


def test_bomb_png_is_a_real_image():
    small = bomb_png(300, 200)
    assert decode_image(b64(small), "x", 300 * 200).mode == "1"


def test_decompression_bomb_is_refused_from_its_header(bomb_20k):
    assert len(bomb_20k) < 200_000
    rule = decode_error(b64(bomb_20k), max_pixels=4096 * 4096)
    assert rule == "image has more than 16777216 pixels"  # Pillow refuses it while opening


def test_size_is_checked_before_any_pixel_is_decoded(monkeypatch):
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size))
    bomb = b64(bomb_png(5000, 5000))  # under Pillow's own limit, over ours
    assert decode_error(bomb, max_pixels=4096 * 4096) == "image has more than 16777216 pixels (5000x5000)"
    assert loads == []
    decode_image(PHOTO, "x", 1000)
    assert loads == [(8, 8)]  # the spy does see a load when there is one


def test_pixel_limit_is_inclusive():
    data = b64(image_bytes((8, 8)))
    assert decode_image(data, "x", 64).width == 8
    assert decode_error(data, max_pixels=63) == "image has more than 63 pixels (8x8)"


def test_pillow_limit_applies_when_the_configured_one_is_higher(bomb_20k):
    # 20000x20000 is over twice Pillow's MAX_IMAGE_PIXELS: Pillow's own DecompressionBombError.
    assert decode_error(b64(bomb_20k), max_pixels=10**10) == f"image has more than {Image.MAX_IMAGE_PIXELS} pixels"
    # 10000x10000 is over Pillow's limit but under twice it: Pillow only warns; still a 230.
    medium = b64(bomb_png(10000, 10000))
    with pytest.warns(Image.DecompressionBombWarning):
        rule = decode_error(medium, max_pixels=10**10)
    assert rule == f"image has more than {Image.MAX_IMAGE_PIXELS} pixels (10000x10000)"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert decode_error(medium, max_pixels=10**10) == f"image has more than {Image.MAX_IMAGE_PIXELS} pixels"


def test_bomb_inside_a_request_names_its_index(bomb_20k):
    b = body(ImageAndMaskList=[PHOTO, b64(bomb_20k)])
    assert rejected(b, "ImageAndMaskList[1]") == "image has more than 16777216 pixels"


# --- the reusable checkers ---------------------------------------------------------------------


def test_check_helpers_for_other_actions():
    assert check_str_list(["a", "b"], "TaskUIDList") == ["a", "b"]
    with pytest.raises(ApiError, match=r"^Params \[TaskUIDList\] not available: is required$"):
        check_str_list(None, "TaskUIDList")
    with pytest.raises(ApiError, match=r"^Params \[TaskUIDList\] not available: must have at most 2 elements$"):
        check_str_list(["a", "b", "c"], "TaskUIDList", max_items=2)
    with pytest.raises(ApiError, match=r"^Params \[TaskUIDList\[0\]\] not available: must be a non-empty string$"):
        check_str_list([""], "TaskUIDList", non_empty_items=True)
    assert check_int(None, "Limit", lo=1, default=10) == 10
    with pytest.raises(ApiError, match=r"must be at least 1$"):
        check_int(0, "Limit", lo=1)
    with pytest.raises(ApiError, match=r"must be at most 5$"):
        check_int(6, "Limit", hi=5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ApiError, match=r"^Params \[F\] not available: must be a"):
            check_float(bad, "F", lo=0, hi=1)
    with pytest.raises(ApiError, match=r"must be between 0 and 1$"):
        check_float(10**400, "F", lo=0, hi=1)  # compared before float(): no OverflowError


# --- what a PICPIK client may send besides: no MainModel, ImageList + MaskList, extra fields -------------


@pytest.mark.parametrize("how", ["missing", "null"])
def test_main_model_may_be_absent(how):
    req = parse(set_path(full_body(), "MainModel", ... if how == "missing" else None))
    assert req.main_model is None  # the deployment's default main model applies (app/actions/generate.py)


def test_no_image_list_at_all_names_both_styles():
    assert rejected(set_path(body(), "ImageAndMaskList", ...), "ImageAndMaskList") == (
        "is required (or ImageList and MaskList)")


def test_image_list_and_mask_list_index_their_own_list():
    photo_2 = b64(image_bytes((10, 6), "RGB"))
    req = parse(body(ImageAndMaskList=None, ImageList=[PHOTO, photo_2], MaskList=[MASK],
                     Mannequin={"ImageIndex": 1, "ClothesMaskIndex": 0}, Image2Image={"ImageIndex": 0}))
    assert [(i.width, i.height, i.mode) for i in req.images] == [(8, 8, "RGB"), (10, 6, "RGB"), (8, 8, "L")]
    assert req.mannequin.width == 10 and req.clothes_mask.mode == "L" and req.background.width == 8
    assert (req.mannequin_index, req.clothes_mask_index, req.background_index) == (1, 2, 0)


def test_image_list_indexes_are_checked_against_their_own_list():
    pair = {"ImageAndMaskList": None, "ImageList": [PHOTO], "MaskList": [MASK]}
    assert rejected(body(**pair, Mannequin={"ImageIndex": 1, "ClothesMaskIndex": 0}), "Mannequin.ImageIndex") == (
        "must be between 0 and 0 (an index into ImageList)")
    assert rejected(body(**pair, Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 1}),
                    "Mannequin.ClothesMaskIndex") == "must be between 0 and 0 (an index into MaskList)"
    assert rejected(body(**pair, Mannequin={"ImageIndex": 0, "ClothesMaskIndex": 0}, Image2Image={"ImageIndex": 1}),
                    "Image2Image.ImageIndex") == "must be between 0 and 0 (an index into ImageList)"
    no_masks = {"ImageAndMaskList": None, "ImageList": [PHOTO, MASK]}
    assert rejected(body(**no_masks), "Mannequin.ClothesMaskIndex") == (
        "points into MaskList, which is missing or empty")
    assert rejected(body(ImageAndMaskList=None, MaskList=[MASK]), "ImageList") == "is required"


def test_the_two_image_styles_cannot_be_mixed():
    assert rejected(body(ImageList=[PHOTO], MaskList=[MASK]), "ImageList").startswith(
        "cannot be combined with ImageAndMaskList")
    assert rejected(body(MaskList=[MASK]), "MaskList").startswith("cannot be combined with ImageAndMaskList")


def test_image_list_and_mask_list_share_the_image_limit():
    pair = {"ImageAndMaskList": None, "ImageList": [PHOTO] * 2, "MaskList": [MASK] * 2}
    assert len(parse(body(**pair), max_images=4).images) == 4
    assert rejected(body(**pair), "MaskList", max_images=3) == (
        "ImageList and MaskList together must have at most 3 images")


def test_image_list_entries_are_named_in_decode_errors():
    pair = {"ImageAndMaskList": None, "ImageList": [PHOTO], "MaskList": [MASK, "not base64!"]}
    assert rejected(body(**pair), "MaskList[1]") == "not valid base64"


def test_image2image_resize_mode_defaults_to_cover_and_crop():
    assert parse(body(Image2Image={"ImageIndex": 0})).background_resize_mode == "CropAndResize"
    assert parse(body()).background_resize_mode == "CropAndResize"
    for mode in ("JustResize", "CropAndResize", "ResizeAndFill"):
        req = parse(body(Image2Image={"ImageIndex": 0, "ResizeMode": mode}))
        assert req.background_resize_mode == mode


def test_unknown_top_level_fields_are_listed_in_body_order():
    req = parse(body(Widht=512, Callback="x", Seed=3))
    assert req.ignored_fields == ["Widht", "Callback"]
    assert parse(body(PublicKey="k", Signature="s", request_uuid="u")).ignored_fields == []
