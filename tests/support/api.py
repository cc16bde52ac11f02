"""Helpers of the API tests: the test deployment (keys, models), signed bodies and small example images."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from app.contract.limits import MASK_ACTIONS
from app.contract.queue import queue_lists
from support.bodies import PHOTO, backgrounds_body, images_body, modify_body
from support.signer import picpik_signature

ROOT = Path(__file__).resolve().parents[2]
TEST_REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
KEYS = {"pk-alice": "alice-secret", "pk-bob": "bob-secret"}  # logical key name -> PrivateKey
# The PublicKeys are unique per test session, so that tasks left in Redis by an earlier session (or a
# concurrent one) never count against this session's per-key limits or show up in its listings.
PUB = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in KEYS}

# The test deployment: the shipped models plus a 4-channel demo and a model whose files are missing.
TEST_MODELS_YAML = (ROOT / "models_config" / "models.yaml").read_text() + """
  - ModelCode: demo-sd15
    Name: Demo 4-channel base model
    ModelType: Main
    source: {demo: sd15}
    defaults: {steps: 4, guidance_scale: 5.0}
    TriggerWordList: [fashion photo]
  - ModelCode: broken
    Name: A model whose files are missing
    ModelType: Main
    source: {path: /nonexistent/model}
  - ModelCode: corrupt-lora
    Name: A LoRA file that is not a LoRA
    ModelType: LoRA
    source: {file: corrupt-lora.safetensors}
  - ModelCode: demo-canny-default
    Name: Demo model with canny control by default
    ModelType: Main
    source: {demo: inpaint}
    defaults: {steps: 8, guidance_scale: 5.0}
    default_control:
      - {PreProcessor: canny, ControlModel: demo-controlnet}
  - ModelCode: corrupt-onnx
    Name: An ONNX file that is not one
    ModelType: BackgroundRemover
    engine: rembg
    source: {file: corrupt.onnx}
  - ModelCode: corrupt-sam
    Name: A folder that is no SAM model
    ModelType: PointSegmenter
    engine: sam
    source: {path: corrupt-sam}
  - ModelCode: ip-adapter-xl
    Name: An SDXL IP-Adapter (its files are not there; the gateway refuses it on an sd15 model)
    ModelType: ControlModel
    adapter: ip-adapter
    family: sdxl
    source: {file: ip-adapter_sdxl.safetensors}
    image_encoder: {path: sdxl-image-encoder}
  - ModelCode: corrupt-cloth
    Name: A clothes segmenter whose ONNX file is not one
    ModelType: ClothesSegmenter
    engine: rembg-cloth
    source: {file: corrupt.onnx}
  - ModelCode: corrupt-upscaler
    Name: A safetensors file of random tensors, in no upscaler's layout
    ModelType: Upscaler
    source: {file: not-an-upscaler.safetensors}
  - ModelCode: priced-upscaler
    Name: The demo upscaler at 3 points a resize
    ModelType: Upscaler
    source: {demo: upscaler}
    tile: {size: 40, overlap: 16}
    points: 3
"""


def write_corrupt_engines(base: Path) -> None:
    """The files of the corrupt mask engines and upscaler of TEST_MODELS_YAML, next to the models file."""
    (base / "corrupt.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 16)
    (base / "corrupt-sam").mkdir(exist_ok=True)
    (base / "corrupt-sam" / "config.json").write_text('{"model_type": "sam", "vision_config": 7}')
    write_random_safetensors(base / "not-an-upscaler.safetensors")


def write_random_safetensors(path: Path, seed: int = 0) -> Path:
    """A valid safetensors file of a few random float32 tensors under made-up names (no model's layout), written
    byte by byte (8-byte header length, JSON header, data) so that this module needs no torch."""
    rng = np.random.default_rng(seed)
    tensors = {"encoder.weight": rng.standard_normal((16, 8)), "encoder.bias": rng.standard_normal(16),
               "head.weight": rng.standard_normal((4, 16))}
    header, data, offset = {}, b"", 0
    for name, value in tensors.items():
        raw = value.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- request helpers ---------------------------------------------------------------------------

def png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def signed(body: dict, key: str = "pk-alice", private_key: str | None = None) -> dict:
    """Sign as the test key ``key`` ("pk-alice" or "pk-bob") with an implementation written independently
    of app.signature (tests/support/signer.py)."""
    body = {"PublicKey": PUB[key], "request_uuid": str(uuid.uuid4()), **body}
    body["Signature"] = picpik_signature(body, private_key or KEYS[key])
    return body


def example_inputs(w: int = 64, h: int = 80) -> tuple[Image.Image, Image.Image]:
    """A small mannequin (grey figure, red garment block) and its clothes mask."""
    man = Image.new("RGB", (w, h), (220, 220, 215))
    for x in range(w // 3, 2 * w // 3):
        for y in range(4, h - 4):
            man.putpixel((x, y), (140, 140, 140))
    mask = Image.new("L", (w, h), 0)
    for x in range(w // 3, 2 * w // 3):
        for y in range(h // 3, 2 * h // 3):
            man.putpixel((x, y), (200, 20 + (x * 7) % 50, 40 + (y * 5) % 60))
            mask.putpixel((x, y), 255)
    return man, mask


def generate_body(**overrides) -> dict:
    man, mask = example_inputs()
    body = {
        "Action": "GenerateFromMannequin",
        "MainModel": {"ModelCode": "demo-inpaint"},
        "PositivePrompts": ["a woman", "studio photo"],
        "ImageAndMaskList": [png_b64(man), png_b64(mask)],
        "Mannequin": {"ImageIndex": 0, "ClothesMaskIndex": 1},
        "Width": 64, "Height": 64, "Seed": 1234,
    }
    body.update(overrides)
    return body


def stored(rt, image: Image.Image) -> str:
    """``image`` stored as an input PNG in the storage of ``rt`` (a WorkerRuntime), by content hash as the gateway
    stores one; its storage key."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    return rt.storage.put_input(hashlib.sha256(data).hexdigest(), data)


def queued_raw(r: redis.Redis, queue: str) -> list[bytes | str]:
    """Every job message waiting in ``queue``, in all of kombu's priority lists (highest priority first)."""
    return [raw for name in queue_lists(queue) for raw in r.lrange(name, 0, -1)]


def _mask_body(action: str) -> dict:
    images = {"RawImages": [PHOTO, PHOTO]} if action == "RemoveBackgroundsInBatch" else {"RawImage": PHOTO}
    points = {"IncludePointList": [{"X": 2, "Y": 3}]} if action == "ExtractContents" else {}
    return {"Action": action, **images, **points}


#: A valid request body of each task-creating action (a function, so that each test gets its own copy).
TASK_BODIES = {"GenerateFromMannequin": generate_body, **{a: (lambda a=a: _mask_body(a)) for a in MASK_ACTIONS},
               "ResizeImage": lambda: {"Action": "ResizeImage", "Image": PHOTO, "Width": 128, "Height": 96},
               "RestoreFaces": lambda: {"Action": "RestoreFaces", "RawImage": PHOTO},
               "SwitchFace": lambda: {"Action": "SwitchFace", "RawImage": PHOTO, "NewFaceImage": PHOTO},
               "GenerateBackgrounds": lambda: backgrounds_body(MainModel={"ModelCode": "demo-inpaint"}),
               "ModifyMaskedPixels": lambda: modify_body(MainModel={"ModelCode": "demo-inpaint"}),
               "RemoveContents": lambda: {"Action": "RemoveContents", "RawImage": PHOTO, "Mask": PHOTO},
               "DescribeImages": lambda: {"Action": "DescribeImages", "ImageList": [PHOTO, PHOTO]},
               "GenerateImages": lambda: images_body(MainModel={"ModelCode": "demo-inpaint"})}
