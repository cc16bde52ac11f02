"""``atelier``: a command-line client of the PICPIK protocol (any compatible server).

    atelier generate --mannequin M.png [--clothes-mask K.png] [--background B.png] --prompt "..." -o DIR
    atelier remove-background IMG [IMG ...] [--box X1,Y1,X2,Y2] [--only-mask] -o DIR
    atelier extract IMG --point X,Y [--point X,Y ...] [--exclude X,Y ...] [--only-mask] -o DIR
    atelier resize IMG --width W --height H [--upscaler CODE] -o DIR
    atelier restore-faces IMG [--strength S] [--model CODE] -o DIR
    atelier persona create NAME IMG [IMG ...] | persona list | persona delete CODE
    atelier switch-face IMG --new-face IMG2 [--index N] [--model CODE] [--adapter CODE] -o DIR
    atelier erase IMG --mask MASK [--invert] [--mask-blur N] [--eraser CODE | --model CODE] -o DIR
    atelier describe IMG [IMG ...] [--language CODE] [--describer CODE]
    atelier models
    atelier cancel TASKUID [TASKUID ...]
    atelier pull [--config F] [--dest DIR] [--only CODE ...]   (app/cli/pull.py: real models from the hub)

Without --clothes-mask, the server's clothes segmenter finds the garment; the mask it made is saved beside
the images (``<TaskUID>_clothes_mask.png``) so that it can be checked, corrected and sent back.

The key pair comes from --public-key/--private-key, else ATELIER_PUBLIC_KEY/ATELIER_PRIVATE_KEY,
else the dev key pair that ``make run`` created under ATELIER_DATA_DIR (default ./var). The server
from --url, else ATELIER_URL, else http://127.0.0.1:8000.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.pull import add_parser as add_pull_parser
from app.contract.jobs import ENDED_STATUSES, TaskStatus
from app.contract.limits import (
    BACKGROUND_I2I_FIELD,
    CLOTHES_MASK_URL_FIELD,
    CREATE_PERSONA_ACTION,
    DEFAULT_BACKGROUND_RESIZE_MODE,
    DEFAULT_BACKGROUND_THRESHOLD,
    DEFAULT_DESCRIBE_LANGUAGE,
    DEFAULT_ERODE_SIZE,
    DEFAULT_FOREGROUND_THRESHOLD,
    DEFAULT_HAIR_OPTIMIZATION,
    DEFAULT_MASK_BLUR,
    DEFAULT_PRIORITY,
    DEFAULT_RAW_FACE_INDEX,
    DEFAULT_REFER_STRENGTH,
    DEFAULT_RESIZE_MODE,
    DEFAULT_RESTORE_STRENGTH,
    DELETE_PERSONA_ACTION,
    DESCRIBE_IMAGES_ACTION,
    DESCRIBE_IMAGES_FIELDS,
    DESCRIBE_LANGUAGES,
    DESCRIBERS_FIELD,
    ENGINE_FIELD,
    ERASERS_FIELD,
    ERODE_SIZE_RANGE,
    FACE_REFINE_FIELD,
    GENERATE_BACKGROUNDS_ACTION,
    GENERATE_IMAGES_ACTION,
    HAIR_OPTIMIZATION_MODES,
    IP_ADAPTER,
    LANCZOS,
    LIST_MODELS_FIELDS,
    LIST_PERSONAS_ACTION,
    MASK_BLUR_RANGE,
    MODIFY_MASKED_ACTION,
    PERSONA_CODE_FIELD,
    PRIORITY_FIELD,
    PRIORITY_RANGE,
    RAW_FACE_INDEX_RANGE,
    REFINE_FIELD,
    REMOVE_CONTENTS_ACTION,
    REMOVE_CONTENTS_FIELDS,
    RESIZE_ACTION,
    RESIZE_MODES,
    RESIZE_SIZE_RANGE,
    RESTORE_FACES_ACTION,
    RESTORE_STRENGTH_RANGE,
    SWITCH_FACE_ACTION,
    TILEABLE_FIELD,
    TXT_LIST_FIELD,
    UPSCALER_FIELD,
    UPSCALERS_FIELD,
    ModelType,
    number,
)
from app.keys import KeyStore, dev_keys_path
from app.signature import sign

console = Console(stderr=True)


class ClientError(Exception):
    pass


def _keys(args: argparse.Namespace) -> tuple[str, str]:
    pub = args.public_key or os.environ.get("ATELIER_PUBLIC_KEY")
    priv = args.private_key or os.environ.get("ATELIER_PRIVATE_KEY")
    if pub and priv:
        return pub, priv
    path = dev_keys_path(Path(os.environ.get("ATELIER_DATA_DIR", "var")))
    if path.exists():
        pair = KeyStore.from_file(path).only_pair()
        return pair.public_key, pair.private_key
    raise ClientError("no key pair: pass --public-key/--private-key or set ATELIER_PUBLIC_KEY/ATELIER_PRIVATE_KEY")


def call(url: str, public_key: str, private_key: str, action: str, **params: Any) -> dict[str, Any]:
    body = {"Action": action, "PublicKey": public_key, "request_uuid": str(uuid.uuid4()), **params}
    body["Signature"] = sign(body, private_key)
    r = httpx.post(url.rstrip("/") + "/", json=body, timeout=120)
    r.raise_for_status()
    answer = r.json()
    if answer.get("RetCode") != 0:
        raise ClientError(f"{action} failed: RetCode {answer.get('RetCode')}: {answer.get('Message')}")
    return answer


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _model_ref(text: str, param: str) -> dict[str, Any]:
    """``CODE`` or ``CODE:VALUE`` -> a Model object (VALUE goes to InferenceParams[param])."""
    code, _, value = text.partition(":")
    ref: dict[str, Any] = {"ModelCode": code}
    if value:
        ref["InferenceParams"] = {param: float(value)}
    return ref


def _control_unit(text: str) -> dict[str, Any]:
    """``PREPROCESSOR,CONTROLMODEL[:WEIGHT]`` (PREPROCESSOR may be empty) -> a ControlNet unit."""
    pre, _, cm = text.partition(",")
    if not cm:
        raise ClientError(f"--control {text!r}: expected PREPROCESSOR,CONTROLMODEL[:WEIGHT]")
    unit: dict[str, Any] = {"ControlModel": _model_ref(cm, "ControlWeight")}
    if pre:
        unit["PreProcessor"] = {"ModelCode": pre}
    return unit


def _face_unit(args: argparse.Namespace, pub: str, priv: str, index: int | None,
               persona: str | None = None) -> dict[str, Any]:
    """``--face IMG``: an IP-Adapter unit reading the image at ``index`` (``--persona CODE``: reading the persona
    ``persona`` instead), with ``--face-model`` (else the deployment's first IP-Adapter ControlModel of
    ListControlNets) and ``--face-weight`` as its ControlWeight."""
    code = args.face_model
    if code is None:
        models = call(args.url, pub, priv, "ListControlNets")["ControlModels"]
        code = next((m["ModelCode"] for m in models if m.get("Adapter") == IP_ADAPTER), None)
        if code is None:
            raise ClientError("--face: this deployment has no IP-Adapter ControlModel (`atelier models` lists them)")
    model: dict[str, Any] = {"ModelCode": code}
    if args.face_weight is not None:
        model["InferenceParams"] = {"ControlWeight": args.face_weight}
    reference = {PERSONA_CODE_FIELD: persona} if persona is not None else {"ImageIndex": index}
    return {**reference, "ControlModel": model}


def cmd_generate(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    images = [_b64(args.mannequin)]
    mannequin: dict[str, Any] = {"ImageIndex": 0, "ResizeMode": args.resize_mode, "InvertMask": args.invert_mask}
    if args.clothes_mask:
        images.append(_b64(args.clothes_mask))
        mannequin["ClothesMaskIndex"] = 1
    else:
        if args.clothes_segmenter:
            mannequin["ClothesSegmenter"] = args.clothes_segmenter
        if args.garment_classes:
            classes = args.garment_classes.split(",")
            mannequin["GarmentClasses"] = _ints(args.garment_classes, len(classes), "--garment-classes")
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": args.model},
        "PositivePrompts": args.prompt, "NegativePrompts": args.negative_prompt or [],
        "Seed": args.seed, "Width": args.width, "Height": args.height, "BatchSize": args.batch_size,
        "ImageAndMaskList": images,
        "Mannequin": mannequin,
    }
    if args.background:
        images.append(_b64(args.background))
        params["Image2Image"] = {"ImageIndex": len(images) - 1, "ReferStrength": args.refer_strength}
    if args.sub_model:
        params["SubModelList"] = [_model_ref(s, "LoraWeight") for s in args.sub_model]
    if args.control is not None:
        params["ControlNetList"] = [_control_unit(c) for c in args.control if c]
    if args.face:
        images.append(_b64(args.face))
        units = params.setdefault("ControlNetList", [])
        units.append(_face_unit(args, pub, priv, len(images) - 1))
    if args.persona:
        params.setdefault("ControlNetList", []).append(_face_unit(args, pub, priv, None, args.persona))
    if args.no_translate:
        params["TranslatePrompts"] = False
    refine = {"Strength": args.refine_strength, UPSCALER_FIELD: args.refine_upscaler}
    if any(v is not None for v in refine.values()):
        params[REFINE_FIELD] = {k: v for k, v in refine.items() if v is not None}
    if args.no_face_refine or args.face_strength is not None:
        params[FACE_REFINE_FIELD] = {"Enabled": False} if args.no_face_refine else {"Strength": args.face_strength}
    uid = _submit(args, pub, priv, "GenerateFromMannequin", params)
    detail = _wait(args, pub, priv, uid)
    out = Path(args.output)
    for i, link in enumerate(detail["ImgList"]):
        _save(link, out / f"{uid}_{i}.png")
    if detail.get(CLOTHES_MASK_URL_FIELD):
        _save(detail[CLOTHES_MASK_URL_FIELD], out / f"{uid}_clothes_mask.png")
    _notes(detail)
    console.print(f"seed {detail.get('Seed')}")
    return 0


def _scene_params(args: argparse.Namespace, image: str) -> dict[str, Any]:
    """The shared generation block of ``backgrounds`` and ``modify``: Width and Height default to ``image``'s."""
    with Image.open(image) as img:
        width, height = img.size
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": args.model}, "PositivePrompts": args.prompt,
        "NegativePrompts": args.negative_prompt or [], "Seed": args.seed, "BatchSize": args.batch_size,
        "Width": args.width or width, "Height": args.height or height,
    }
    if args.sub_model:
        params["SubModelList"] = [_model_ref(s, "LoraWeight") for s in args.sub_model]
    if args.no_translate:
        params["TranslatePrompts"] = False
    return params


def _generation_results(args: argparse.Namespace, pub: str, priv: str, action: str, params: dict[str, Any],
                        stem: str) -> int:
    """Run a generation to its end and save its images as ``<stem>_<TaskUID>_<i>.png`` under ``args.output``."""
    uid = _submit(args, pub, priv, action, params)
    detail = _wait(args, pub, priv, uid)
    for i, link in enumerate(detail["ImgList"]):
        _save(link, Path(args.output) / f"{stem}_{uid}_{i}.png")
    _notes(detail)
    console.print(f"seed {detail.get('Seed')}")
    return 0


def cmd_backgrounds(args: argparse.Namespace) -> int:
    """GenerateBackgrounds: a scene drawn around a transparent cut-out (its opaque pixels kept exactly)."""
    pub, priv = _keys(args)
    params = _scene_params(args, args.foreground)
    images = [_b64(args.foreground)]
    params["TransparentForeground"] = {"ImageIndex": 0, "ResizeMode": args.resize_mode}
    if args.background:
        images.append(_b64(args.background))
        params[BACKGROUND_I2I_FIELD] = {"ImageIndex": 1, "ReferStrength": args.refer_strength}
    params["ImageList"] = images
    return _generation_results(args, pub, priv, GENERATE_BACKGROUNDS_ACTION, params, Path(args.foreground).stem)


def cmd_modify(args: argparse.Namespace) -> int:
    """ModifyMaskedPixels: the mask's white area redrawn (inpainting) and, with a larger size and ResizeAndFill, the
    new margins drawn (outpainting); every pixel outside the blurred mask kept exactly."""
    pub, priv = _keys(args)
    params = _scene_params(args, args.image)
    images = [_b64(args.image)]
    masked: dict[str, Any] = {"ImageIndex": 0, "InvertMask": args.invert_mask, "ResizeMode": args.resize_mode}
    if args.mask_blur is not None:
        masked["MaskBlur"] = args.mask_blur
    if args.mask:
        images.append(_b64(args.mask))
        masked["MaskIndex"] = 1
    if args.reference:
        images.append(_b64(args.reference))
        params["Image2Image"] = {"ImageIndex": len(images) - 1, "ReferStrength": args.refer_strength}
    elif args.redraw_strength is not None:  # the image itself as the reference: the masked area partly kept
        params["Image2Image"] = {"ImageIndex": 0, "ReferStrength": 1 - args.redraw_strength}
    params.update(ImageAndMaskList=images, Masked=masked)
    return _generation_results(args, pub, priv, MODIFY_MASKED_ACTION, params, Path(args.image).stem)


def _scene_options(p: argparse.ArgumentParser) -> None:
    """The generation options of ``backgrounds`` and ``modify``."""
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
    p.add_argument("--negative-prompt", action="append")
    p.add_argument("--model", default="demo-inpaint", help="MainModel ModelCode (see `atelier models`)")
    p.add_argument("--width", type=int, help="default: the image's width")
    p.add_argument("--height", type=int, help="default: the image's height")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--resize-mode", default=DEFAULT_RESIZE_MODE, choices=RESIZE_MODES)
    p.add_argument("--sub-model", action="append", metavar="CODE[:WEIGHT]", help="LoRA / Embedding / HyperNetwork")
    p.add_argument("--no-translate", action="store_true", help="TranslatePrompts false")
    _polling(p)


def _scene_parsers(sub) -> None:
    bg = sub.add_parser("backgrounds", help="a scene around a transparent cut-out (GenerateBackgrounds): its opaque"
                        " pixels kept exactly")
    bg.add_argument("foreground", help="a PNG with transparency (e.g. remove-background's cut-out)")
    bg.add_argument("--background", metavar="IMG", help="a background reference (BackgroundImage2Image)")
    bg.add_argument("--refer-strength", type=float, default=DEFAULT_REFER_STRENGTH)
    _scene_options(bg)
    bg.set_defaults(func=cmd_backgrounds)
    md = sub.add_parser("modify", help="redraw the white of a mask (inpainting) or extend the image to a larger"
                        " --width/--height (outpainting) (ModifyMaskedPixels)")
    md.add_argument("image")
    md.add_argument("--mask", metavar="IMG", help="white = redrawn (left out: nothing but the new margins)")
    md.add_argument("--invert-mask", action="store_true")
    md.add_argument("--mask-blur", type=int, metavar="PX", help=f"Masked.MaskBlur, {MASK_BLUR_RANGE.lo}.."
                    f"{MASK_BLUR_RANGE.hi} (default {DEFAULT_MASK_BLUR})")
    md.add_argument("--reference", metavar="IMG", help="a reference for the masked area (Image2Image)")
    md.add_argument("--refer-strength", type=float, default=DEFAULT_REFER_STRENGTH)
    md.add_argument("--redraw-strength", type=float, metavar="S", help="without --reference: redraw the masked area"
                    " from the image itself at this strength (0..1; Image2Image on the image)")
    _scene_options(md)
    md.set_defaults(func=cmd_modify)


def cmd_images(args: argparse.Namespace) -> int:
    """GenerateImages: text-to-image; image-to-image with --reference; ControlNet units reading --control-image (or
    the reference); --tileable for a seamless texture."""
    pub, priv = _keys(args)
    images: list[str] = []
    params: dict[str, Any] = {
        "MainModel": {"ModelCode": args.model}, "PositivePrompts": args.prompt,
        "NegativePrompts": args.negative_prompt or [], "Seed": args.seed, "BatchSize": args.batch_size}
    sized = args.reference or args.control_image
    if sized:
        with Image.open(sized) as img:
            width, height = img.size
    else:
        width, height = IMAGES_CLI_SIZE
    params.update(Width=args.width or width, Height=args.height or height)
    if args.reference:
        images.append(_b64(args.reference))
        params["Image2Image"] = {"ImageIndex": 0, "ReferStrength": args.refer_strength,
                                 "ResizeMode": args.resize_mode}
    if args.control:
        if not sized:
            raise ClientError("--control: a unit reads an image: give --control-image (or --reference)")
        if args.control_image:
            images.append(_b64(args.control_image))
        units = [_control_unit(c) for c in args.control if c]
        for unit in units:
            unit["ImageIndex"] = len(images) - 1
        params["ControlNetList"] = units
    if args.sub_model:
        params["SubModelList"] = [_model_ref(s, "LoraWeight") for s in args.sub_model]
    if args.no_translate:
        params["TranslatePrompts"] = False
    if args.tileable:
        params[TILEABLE_FIELD] = True
    if images:
        params["ImageAndMaskList"] = images
    return _generation_results(args, pub, priv, GENERATE_IMAGES_ACTION, params, "images")


#: ``atelier images``' Width and Height without --width/--height and an image to take them from.
IMAGES_CLI_SIZE = (512, 512)


def _images_parser(sub) -> None:
    im = sub.add_parser("images", help="draw images from a prompt (GenerateImages): text-to-image, image-to-image"
                        " with --reference, ControlNet units, seamless textures with --tileable")
    im.add_argument("--prompt", action="append", required=True, help="repeatable")
    im.add_argument("--negative-prompt", action="append")
    im.add_argument("--model", default="demo-inpaint", help="MainModel ModelCode (see `atelier models`)")
    im.add_argument("--width", type=int, help="default: the reference's (or control image's) width, else 512")
    im.add_argument("--height", type=int, help="default: the reference's (or control image's) height, else 512")
    im.add_argument("--batch-size", type=int, default=1)
    im.add_argument("--seed", type=int, default=-1)
    im.add_argument("--reference", metavar="IMG", help="image-to-image: the start image (Image2Image)")
    im.add_argument("--refer-strength", type=float, default=DEFAULT_REFER_STRENGTH,
                    help="how much of the reference is kept (0..1)")
    im.add_argument("--resize-mode", default=DEFAULT_BACKGROUND_RESIZE_MODE, choices=RESIZE_MODES,
                    help="how the reference and control image are fitted (Image2Image.ResizeMode)")
    im.add_argument("--control", action="append", metavar="PRE,MODEL[:WEIGHT]",
                    help="a ControlNet unit reading --control-image (or the reference), e.g. canny,demo-controlnet")
    im.add_argument("--control-image", metavar="IMG", help="the control units' image")
    im.add_argument("--tileable", action="store_true", help="a seamless texture (Tileable; sizes multiples of 8)")
    im.add_argument("--sub-model", action="append", metavar="CODE[:WEIGHT]", help="LoRA / Embedding / HyperNetwork")
    im.add_argument("--no-translate", action="store_true", help="TranslatePrompts false")
    _polling(im)
    im.set_defaults(func=cmd_images)


def _wait(args: argparse.Namespace, pub: str, priv: str, uid: str) -> dict[str, Any]:
    """Poll the task until it ends, with a progress bar; its TaskDetail once Finished (ClientError otherwise)."""
    console.print(f"task [bold]{uid}[/bold] submitted")
    detail: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:
        t = bar.add_task(TaskStatus.QUEUING, total=100)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            details = call(args.url, pub, priv, "ListTasksDetails", TaskUIDList=[uid])["TaskDetailList"]
            detail = details[0] if details else {}
            status = detail.get("Status", "?")
            bar.update(t, description=status, completed=detail.get("Progress", 0))
            if status in ENDED_STATUSES:
                break
            time.sleep(args.poll)
    if detail.get("Status") == TaskStatus.CANCELED:
        raise ClientError(f"task {uid} was canceled")
    if detail.get("Status") != TaskStatus.FINISHED:
        raise ClientError(f"task {uid} did not finish: {detail.get('Status', 'timeout')} "
                          f"{detail.get('ErrorCode', '')} {detail.get('ErrorMessage', '')}".strip())
    return detail


def _save(link: str, path: Path) -> None:
    r = httpx.get(link, timeout=60)
    r.raise_for_status()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(r.content)
    print(path)


def _notes(detail: dict[str, Any]) -> None:
    for note in detail.get("Notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


def _ints(text: str, count: int, what: str) -> list[int]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise ClientError(f"{what} {text!r}: expected {count} integers separated by commas")
    return values


def _point(text: str) -> dict[str, int]:
    x, y = _ints(text, 2, "point")
    return {"X": x, "Y": y}


def _refinement(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"OnlyMask": args.only_mask}
    for flag, field in (("erode_size", "ErodeSize"), ("foreground_threshold", "ForegroundThreshold"),
                        ("background_threshold", "BackgroundThreshold"), ("hair", "HairOptimization"),
                        ("engine", ENGINE_FIELD)):
        if getattr(args, flag) is not None:
            params[field] = getattr(args, flag)
    return params


def _save_masks(detail: dict[str, Any], images: list[str], only_mask: bool, out: Path) -> None:
    """Per input image (in order): ``<stem>_cutout.png`` and ``<stem>_mask.png``, or the mask alone."""
    links = iter(detail["ImgList"])
    for image in images:
        stem = Path(image).stem
        if not only_mask:
            _save(next(links), out / f"{stem}_cutout.png")
        _save(next(links), out / f"{stem}_mask.png")


def cmd_remove_background(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    params = _refinement(args)
    if len(args.image) == 1:
        action, params["RawImage"] = "RemoveBackground", _b64(args.image[0])
        if args.box:
            params["Box"] = _ints(args.box, 4, "--box")
    else:
        if args.box:
            raise ClientError("--box is for one image (RemoveBackground), not a batch")
        action, params["RawImages"] = "RemoveBackgroundsInBatch", [_b64(i) for i in args.image]
    uid = _submit(args, pub, priv, action, params)
    detail = _wait(args, pub, priv, uid)
    _save_masks(detail, args.image, args.only_mask, Path(args.output))
    _notes(detail)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    params = {**_refinement(args), "RawImage": _b64(args.image),
              "IncludePointList": [_point(p) for p in args.point]}
    if args.exclude:
        params["ExcludePointList"] = [_point(p) for p in args.exclude]
    uid = _submit(args, pub, priv, "ExtractContents", params)
    detail = _wait(args, pub, priv, uid)
    _save_masks(detail, [args.image], args.only_mask, Path(args.output))
    _notes(detail)
    return 0


def resize_target(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """The ResizeImage size: both as given (the server checks them); one of them alone keeps the image's aspect
    ratio, the other side rounded, and refused here when it falls outside the action's range (rather than
    distorting the image)."""
    if width is None and height is None:
        raise SystemExit("atelier resize: give --width, --height or both")
    w, h = size
    if height is None:
        height, side = round(width * h / w), "height"
    elif width is None:
        width, side = round(height * w / h), "width"
    else:
        return width, height
    other = height if side == "height" else width
    if not RESIZE_SIZE_RANGE.lo <= other <= RESIZE_SIZE_RANGE.hi:
        raise SystemExit(f"atelier resize: keeping the aspect ratio of {w}x{h}, the {side} would be {other}, outside"
                         f" {RESIZE_SIZE_RANGE.lo}..{RESIZE_SIZE_RANGE.hi}: give both --width and --height")
    return width, height


def _submit(args: argparse.Namespace, pub: str, priv: str, action: str, params: dict[str, Any]) -> str:
    """Send a task-creating request (with ``--priority`` when given); its TaskUID."""
    if args.priority is not None:
        params = {**params, PRIORITY_FIELD: args.priority}
    return call(args.url, pub, priv, action, **params)["TaskUID"]


def _photo_task(args: argparse.Namespace, pub: str, priv: str, action: str, params: dict[str, Any],
                suffix: str) -> int:
    """Run a one-image action on ``args.image`` (ResizeImage, RestoreFaces, SwitchFace) to its end, save its image as
    ``<stem>_<suffix>.png`` under ``args.output`` and print its Notes."""
    uid = _submit(args, pub, priv, action, params)
    detail = _wait(args, pub, priv, uid)
    _save(detail["ImgList"][0], Path(args.output) / f"{Path(args.image).stem}_{suffix}.png")
    _notes(detail)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    """ResizeImage: the image stretched to exactly --width x --height (one of them alone keeps the aspect ratio) by
    Lanczos, or enlarged by the --upscaler model first, saved as ``<stem>_WxH.png``."""
    pub, priv = _keys(args)
    with Image.open(args.image) as img:
        width, height = resize_target(img.size, args.width, args.height)
    params: dict[str, Any] = {"Image": _b64(args.image), "Width": width, "Height": height}
    if args.upscaler:
        params[UPSCALER_FIELD] = args.upscaler
    return _photo_task(args, pub, priv, RESIZE_ACTION, params, f"{width}x{height}")


def cmd_restore_faces(args: argparse.Namespace) -> int:
    """RestoreFaces: each face of the photo redrawn by a Main model at --strength (the server's default model without
    --model), saved as ``<stem>_restored.png``; the Notes say how many faces were."""
    pub, priv = _keys(args)
    params: dict[str, Any] = {"RawImage": _b64(args.image)}
    if args.strength is not None:
        params["RestoreStrength"] = args.strength
    if args.model:
        params["MainModel"] = {"ModelCode": args.model}
    return _photo_task(args, pub, priv, RESTORE_FACES_ACTION, params, "restored")


def cmd_persona(args: argparse.Namespace) -> int:
    """``persona create NAME IMG...`` (prints the PersonaCode), ``persona list``, ``persona delete CODE``."""
    pub, priv = _keys(args)
    if args.persona_command == "create":
        out = call(args.url, pub, priv, CREATE_PERSONA_ACTION, Name=args.name,
                   ImageList=[_b64(path) for path in args.images])
        print(out[PERSONA_CODE_FIELD])
    elif args.persona_command == "list":
        for p in call(args.url, pub, priv, LIST_PERSONAS_ACTION)["PersonaList"]:
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["CreatedAt"]))
            print(f"{p[PERSONA_CODE_FIELD]}  {p['ImageCount']:>2} image(s)  {created} UTC  {p['Name']}")
    else:
        call(args.url, pub, priv, DELETE_PERSONA_ACTION, PersonaCode=args.code)
        print(f"{args.code} deleted")
    return 0


def _persona_parser(sub) -> None:
    p = sub.add_parser("persona", help="your saved face references (CreatePersona, ListPersonas, DeletePersona)")
    ps = p.add_subparsers(dest="persona_command", required=True)
    c = ps.add_parser("create", help="save images of one person; prints the PersonaCode for generate --persona")
    c.add_argument("name", help="a name for you to recognise it (1..64 characters)")
    c.add_argument("images", nargs="+", metavar="IMG", help="the person's images (their embeddings are averaged)")
    ps.add_parser("list", help="your personas: code, images, creation time, name")
    d = ps.add_parser("delete", help="delete a persona: its images and cached embeddings")
    d.add_argument("code")
    p.set_defaults(func=cmd_persona)


def cmd_switch_face(args: argparse.Namespace) -> int:
    """SwitchFace: face number --index of the photo (reading order: left to right, then top to bottom) redrawn with
    the identity of --new-face (or of the persona --persona) through an IP-Adapter (--adapter, else the server's first
    of the model's family) by a Main model (--model, else the server's), saved as ``<stem>_switched.png``."""
    pub, priv = _keys(args)
    params: dict[str, Any] = {"RawImage": _b64(args.image)}
    if args.persona:
        params[PERSONA_CODE_FIELD] = args.persona
    else:
        params["NewFaceImage"] = _b64(args.new_face)
    if args.index is not None:
        params["RawFaceIndex"] = args.index
    if args.model:
        params["MainModel"] = {"ModelCode": args.model}
    if args.adapter:
        params["Adapter"] = {"ModelCode": args.adapter}
    return _photo_task(args, pub, priv, SWITCH_FACE_ACTION, params, "switched")


def cmd_erase(args: argparse.Namespace) -> int:
    """RemoveContents: the white of --mask erased from the photo (--invert: the black) by the server's Eraser (or
    --eraser), or redrawn by a Main model (--model), feathered over --mask-blur pixels; saved as
    ``<stem>_erased.png``. Every pixel farther than --mask-blur from the mask is the photo's."""
    pub, priv = _keys(args)
    raw, mask, invert, blur, eraser, main = REMOVE_CONTENTS_FIELDS
    params: dict[str, Any] = {raw: _b64(args.image), mask: _b64(args.mask)}
    if args.invert:
        params[invert] = True
    if args.mask_blur is not None:
        params[blur] = args.mask_blur
    if args.eraser:
        params[eraser] = args.eraser
    if args.model:
        params[main] = {"ModelCode": args.model}
    return _photo_task(args, pub, priv, REMOVE_CONTENTS_ACTION, params, "erased")


def cmd_describe(args: argparse.Namespace) -> int:
    """DescribeImages: one line per image, ``<path><TAB><text>``, in the order given (TxtList), in --language."""
    pub, priv = _keys(args)
    images, language, describer = DESCRIBE_IMAGES_FIELDS
    params: dict[str, Any] = {images: [_b64(path) for path in args.images], language: args.language}
    if args.describer:
        params[describer] = args.describer
    detail = _wait(args, pub, priv, _submit(args, pub, priv, DESCRIBE_IMAGES_ACTION, params))
    for path, text in zip(args.images, detail.get(TXT_LIST_FIELD, []), strict=False):
        print(f"{path}\t{text}")
    _notes(detail)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    details = call(args.url, pub, priv, "CancelTask", TaskUIDList=args.task_uid)["TaskDetailList"]
    found = {d["TaskUID"]: d["Status"] for d in details}
    for uid in args.task_uid:
        print(f"{uid} {found.get(uid, 'not found (or not yours)')}")
    return 0 if len(found) == len(set(args.task_uid)) else 1


def cmd_models(args: argparse.Namespace) -> int:
    pub, priv = _keys(args)
    models = call(args.url, pub, priv, "ListModels")
    control = call(args.url, pub, priv, "ListControlNets")
    rows = [(m, model_type) for model_type, field in LIST_MODELS_FIELDS.items() for m in models.get(field, [])]
    rows += [(m, ModelType.PRE_PROCESSOR) for m in control["PreProcessors"]]
    rows += [(m, ModelType.CONTROL_MODEL + (f" ({m['Adapter']}, {m.get('Family')})" if m.get("Adapter") else ""))
             for m in control["ControlModels"]]
    rows += [(m, m["ModelType"] + (" (default)" if m.get("Default") else "")) for m in models.get("MaskEngines", [])]
    rows += [(m, m["ModelType"]) for m in models.get(UPSCALERS_FIELD, [])]
    rows += [(m, m["ModelType"]) for m in models.get(ERASERS_FIELD, [])]
    rows += [(m, f"{m['ModelType']} ({', '.join(m.get('Languages', []))})") for m in models.get(DESCRIBERS_FIELD, [])]
    for m, model_type in rows:
        words = f"  trigger: {', '.join(m['TriggerWordList'])}" if m.get("TriggerWordList") else ""
        print(f"{m['ModelCode']:<22} {model_type:<40} {m.get('Name', '')}{words}")
    return 0


def _polling(p: argparse.ArgumentParser, output: bool = True) -> None:
    """The options of a command that runs a task to its end: how it polls, where it saves (``output``), the task's
    Priority."""
    p.add_argument("--priority", type=int, metavar="P", help=f"{PRIORITY_FIELD}, {int(PRIORITY_RANGE.lo)}.."
                   f"{int(PRIORITY_RANGE.hi)} (default {DEFAULT_PRIORITY}): higher runs before the jobs queued below"
                   " it, up to your key's MaxPriority")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between status polls")
    p.add_argument("--timeout", type=float, default=1800)
    if output:
        p.add_argument("-o", "--output", required=True, help="folder for the images")


def _mask_options(p: argparse.ArgumentParser) -> None:
    """The refinement fields of the mask actions (docs/masks.md); left out, the server's defaults."""
    p.add_argument("--only-mask", action="store_true", help="the mask alone, no cut-out")
    p.add_argument("--erode-size", type=int, help=f"edge blur in pixels, {ERODE_SIZE_RANGE.lo}.."
                   f"{ERODE_SIZE_RANGE.hi} (default {DEFAULT_ERODE_SIZE})")
    p.add_argument("--foreground-threshold", type=int, help=f"default {DEFAULT_FOREGROUND_THRESHOLD}")
    p.add_argument("--background-threshold", type=int, help=f"default {DEFAULT_BACKGROUND_THRESHOLD}")
    p.add_argument("--hair", choices=HAIR_OPTIMIZATION_MODES, help="HairOptimization (default"
                   f" {DEFAULT_HAIR_OPTIMIZATION})")
    p.add_argument("--engine", metavar="CODE", help="the engine's ModelCode (`atelier models`)")
    _polling(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atelier", description="Client of a PICPIK-compatible Atelier server")
    ap.add_argument("--url", default=os.environ.get("ATELIER_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--public-key")
    ap.add_argument("--private-key")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="mannequin photo -> fashion model photo(s)")
    g.add_argument("--mannequin", required=True)
    g.add_argument("--clothes-mask", help="white = clothes, kept exactly (left out: the server's clothes"
                   " segmenter finds them and the mask it made is saved too)")
    g.add_argument("--clothes-segmenter", metavar="CODE", help="without --clothes-mask: which ClothesSegmenter")
    g.add_argument("--garment-classes", metavar="ID,ID", help="without --clothes-mask: the class ids that are"
                   " garment (the segmenter's own by default)")
    g.add_argument("--background", help="background reference image (Image2Image)")
    g.add_argument("--refer-strength", type=float, default=DEFAULT_REFER_STRENGTH)
    g.add_argument("--prompt", action="append", required=True, help="repeatable")
    g.add_argument("--negative-prompt", action="append")
    g.add_argument("--model", default="demo-inpaint", help="MainModel ModelCode (see `atelier models`)")
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--height", type=int, default=768)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--refine-strength", type=float, metavar="S",
                   help="a size above the model's native one: how much the second pass redraws (0..1; 0 = upscale"
                        " only; default the model's)")
    g.add_argument("--face-strength", type=float, metavar="S",
                   help="redraw the faces found at this strength (FaceRefine.Strength, 0..1), even on a model that"
                        " does not by default (its faces.refine)")
    g.add_argument("--no-face-refine", action="store_true", help="leave the faces as drawn (FaceRefine.Enabled false)")
    g.add_argument("--refine-upscaler", metavar="CODE", help="a size above the model's native one: the Upscaler"
                   f" that enlarges the first pass (`atelier models`; {LANCZOS}: none; default the model's)")
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("--resize-mode", default=DEFAULT_RESIZE_MODE, choices=RESIZE_MODES)
    g.add_argument("--invert-mask", action="store_true")
    g.add_argument("--sub-model", action="append", metavar="CODE[:WEIGHT]",
                   help="LoRA / Embedding / HyperNetwork from `atelier models` (repeatable)")
    g.add_argument("--control", action="append", metavar="PRE,MODEL[:WEIGHT]",
                   help="a ControlNet unit, e.g. canny,demo-controlnet:0.8 (repeatable); "
                        "--control '' switches a model's default control off")
    g.add_argument("--face", metavar="IMG", help="a face (or person) reference: adds an IP-Adapter unit reading IMG"
                   " to ControlNetList (the model's default control is then off unless --control names it)")
    g.add_argument("--persona", metavar="CODE", help="a saved persona (`atelier persona list`) as the face reference:"
                   " adds an IP-Adapter unit reading its images, like --face")
    g.add_argument("--face-model", metavar="CODE", help="with --face/--persona: the IP-Adapter ControlModel, or a"
                   " FaceID one (ip-adapter-faceid: reads the photo's largest face) (default: the deployment's first"
                   " ip-adapter, `atelier models`)")
    g.add_argument("--face-weight", type=float, metavar="W", help="with --face/--persona: its ControlWeight,"
                   " the adapter's scale (0..2; default the model's)")
    g.add_argument("--no-translate", action="store_true", help="TranslatePrompts false")
    _polling(g)
    g.set_defaults(func=cmd_generate)
    rb = sub.add_parser("remove-background", help="cut the main object out (RemoveBackground; several images:"
                        " RemoveBackgroundsInBatch)")
    rb.add_argument("image", nargs="+")
    rb.add_argument("--box", metavar="X1,Y1,X2,Y2", help="the object's box (one image only)")
    _mask_options(rb)
    rb.set_defaults(func=cmd_remove_background)
    ex = sub.add_parser("extract", help="the content under the points (ExtractContents)")
    ex.add_argument("image")
    ex.add_argument("--point", action="append", required=True, metavar="X,Y", help="on the content (repeatable)")
    ex.add_argument("--exclude", action="append", metavar="X,Y", help="not on the content (repeatable)")
    _mask_options(ex)
    ex.set_defaults(func=cmd_extract)
    rs = sub.add_parser("resize", help="resize an image to exactly WIDTH x HEIGHT (ResizeImage: Lanczos, or an"
                        " Upscaler then Lanczos; stretched when the aspect ratio differs)")
    rs.add_argument("image")
    size = f"{RESIZE_SIZE_RANGE.lo}..{RESIZE_SIZE_RANGE.hi}"
    rs.add_argument("--width", type=int, help=f"pixels, {size} (alone: the height keeps the aspect ratio)")
    rs.add_argument("--height", type=int, help=f"pixels, {size} (alone: the width keeps the aspect ratio)")
    rs.add_argument("--upscaler", metavar="CODE", help="an Upscaler from `atelier models` (a super-resolution model)"
                    " enlarges the image before Lanczos gives the exact size; default Lanczos alone")
    _polling(rs)
    rs.set_defaults(func=cmd_resize)
    rf = sub.add_parser("restore-faces", help="redraw the faces of a photo (RestoreFaces): nothing else changes")
    rf.add_argument("image")
    strengths = f"{number(RESTORE_STRENGTH_RANGE.lo)}..{number(RESTORE_STRENGTH_RANGE.hi)}"
    rf.add_argument("--strength", type=float, metavar="S", help=f"RestoreStrength, {strengths} (default"
                    f" {DEFAULT_RESTORE_STRENGTH}): how much each face is redrawn")
    rf.add_argument("--model", metavar="CODE", help="the Main model that redraws them (default: the server's)")
    _polling(rf)
    rf.set_defaults(func=cmd_restore_faces)
    sw = sub.add_parser("switch-face", help="give one face of a photo another person's identity (SwitchFace): nothing"
                        " farther than the blend margin from that face changes")
    sw.add_argument("image")
    new_face = sw.add_mutually_exclusive_group(required=True)
    new_face.add_argument("--new-face", metavar="IMG", help="a photo of the new face (the IP-Adapter's reference)")
    new_face.add_argument("--persona", metavar="CODE", help="the new face as one of your personas (PersonaCode:"
                          " `atelier persona list`)")
    sw.add_argument("--index", type=int, metavar="N", help=f"RawFaceIndex, {RAW_FACE_INDEX_RANGE.lo}.."
                    f"{RAW_FACE_INDEX_RANGE.hi} (default {DEFAULT_RAW_FACE_INDEX}): which face, counted left to right,"
                    " then top to bottom")
    sw.add_argument("--model", metavar="CODE", help="the Main model that redraws it (default: the server's)")
    sw.add_argument("--adapter", metavar="CODE", help="the IP-Adapter from `atelier models` that carries the new"
                    " face (default: the server's first of the model's family)")
    _polling(sw)
    sw.set_defaults(func=cmd_switch_face)
    _scene_parsers(sub)
    er = sub.add_parser("erase", help="erase what a mask covers (RemoveContents): nothing farther than --mask-blur"
                        " from the mask changes")
    er.add_argument("image")
    er.add_argument("--mask", required=True, metavar="MASK", help="white = erase (the photo's size, else resized)")
    er.add_argument("--invert", action="store_true", help="InvertMask: erase the black instead")
    er.add_argument("--mask-blur", type=int, metavar="N", help=f"MaskBlur, {int(MASK_BLUR_RANGE.lo)}.."
                    f"{int(MASK_BLUR_RANGE.hi)} (default {DEFAULT_MASK_BLUR}): pixels feathered beyond the mask")
    by = er.add_mutually_exclusive_group()
    by.add_argument("--eraser", metavar="CODE", help="an Eraser from `atelier models` (default: the server's first)")
    by.add_argument("--model", metavar="CODE", help="a Main model that redraws the area instead (inpainting)")
    _polling(er)
    er.set_defaults(func=cmd_erase)
    de = sub.add_parser("describe", help="a text per image (DescribeImages), printed as PATH<TAB>TEXT")
    de.add_argument("images", nargs="+", metavar="IMG")
    de.add_argument("--language", choices=DESCRIBE_LANGUAGES, default=DEFAULT_DESCRIBE_LANGUAGE,
                    help="TranslateDescription (default en; others need the server's translator of it: `atelier"
                    " models` lists a Describer's languages)")
    de.add_argument("--describer", metavar="CODE", help="a Describer from `atelier models` (default: the server's"
                    " first)")
    _polling(de, output=False)
    de.set_defaults(func=cmd_describe)
    _images_parser(sub)
    sub.add_parser("models", help="list the server's models").set_defaults(func=cmd_models)
    _persona_parser(sub)
    c = sub.add_parser("cancel", help="cancel tasks (CancelTask): queued ones never run, running ones stop")
    c.add_argument("task_uid", nargs="+")
    c.set_defaults(func=cmd_cancel)
    add_pull_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ClientError, httpx.HTTPError, OSError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
