"""FaceID IP-Adapters (h94/IP-Adapter-FaceID): the face embedding of a reference, and the file's LoRA part.

A FaceID unit reads a *face*, not a whole image (docs/faces.md "FaceID alignment"):

1. the reference's faces are found by the worker's face detector (:mod:`workers.faces.detect`, MTCNN: a box, a
   score, five landmarks); the **largest** face is taken (by box area; equal ones: the first in reading order);
   none -> :class:`NoFaceFound`;
2. the face is **aligned**: the similarity transform (rotation, uniform scale, translation) that best carries its
   five landmarks onto ArcFace's standard 112x112 template (:data:`ARCFACE_TEMPLATE`, insightface's
   ``arcface_dst``) in the least-squares sense (Umeyama's closed form, what insightface's ``norm_crop`` gets from
   scikit-image's ``SimilarityTransform``: :func:`similarity`) warps the image into a 112x112 crop
   (``cv2.warpAffine``, :func:`align_face`);
3. the face-recognition model (an ArcFace ONNX file as insightface's packs ship it: ``w600k_r50.onnx`` of
   ``buffalo_l``, ``glintr100.onnx`` of ``antelopev2``; input ``[1, 3, 112, 112]``, output ``[1, 512]``) embeds
   the crop with onnxruntime (:class:`FaceModel`, insightface's pre-processing: RGB, ``(x - 127.5) / 127.5``
   unless the graph normalises itself), and the embedding is L2-normalised: insightface's
   ``face.normed_embedding``, what the published FaceID pipelines feed the adapter;
4. **faceid-plus** files also read the CLIP image encoder's penultimate hidden states of the face aligned at
   224x224 (insightface's ``norm_crop(image, kps, 224)``), and the unconditional side is the encoder's states of
   a black image (diffusers' ``prepare_ip_adapter_image_embeds``); the id embedding's unconditional side is zeros.

The result is a :class:`~workers.adapters.encoder.ReferenceEmbeds` of kind ``face_id`` (``(1, 512)``) or
``face_id_plus`` (the id embedding and the flattened hidden states in one ``(1, 512 + tokens * width)`` vector per
side, so that the pipelines' batching and guidance handle both parts alike; :class:`FaceIDPlusProjection` splits
them again). ``v2`` files (``plusv2`` in the file's name) add the id tokens back through the projection's shortcut
at scale 1 (diffusers' ``shortcut`` / ``shortcut_scale``; the insightface demo's ``s_scale=1.0``).

The LoRA part of a FaceID file (``ip_adapter.<n>.to_q_lora.down.weight`` ..., rank 128 in the published files) is
made a :class:`~workers.submodels.lora.LoraFile` (:func:`faceid_lora`): the job patches it into the UNet's weights
with the submodels' own :func:`~workers.submodels.lora.patched` (scale 1: no alpha, as diffusers loads it) and puts
every weight back bit for bit afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import torch
from PIL import Image

from workers.adapters.encoder import ImageEncoder, ReferenceEmbeds, encode_reference
from workers.submodels.lora import LoraFile, LoraLayer

#: ArcFace's standard five-point template for a 112x112 crop (insightface ``face_align.arcface_dst``), in the
#: detector's landmark order: the image's left eye, right eye, the nose tip, the mouth's left and right corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
#: The side of the crop the face model reads, and of the crop a faceid-plus file's CLIP encoder reads.
ARCFACE_SIZE = 112
CLIP_CROP_SIZE = 224
#: The width of a face embedding (ArcFace's, and the published FaceID files').
FACE_EMBED_DIM = 512
#: ``shortcut_scale`` of a v2 faceid-plus file (the published pipelines' ``s_scale``).
SHORTCUT_SCALE = 1.0


class NoFaceFound(ValueError):
    """The reference image shows no face the detector accepts."""


class FaceModelError(ValueError):
    """A face-recognition ONNX file that is not one (another input or output shape); ``str`` says what."""


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity transform (rotation, uniform scale, translation; no reflection) carrying the
    points ``src`` onto ``dst`` with the least squared error (Umeyama 1991). A robust estimator
    (``cv2.estimateAffinePartial2D``'s RANSAC / LMedS) would fit three of the five landmarks exactly and leave the
    others off by several pixels; every landmark counts here, as in insightface."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    var = (s ** 2).sum() / len(src)
    if var == 0:  # degenerate landmarks (all on one point): nothing to align
        raise NoFaceFound("the face's landmarks do not define an alignment")
    scale = float((sigma * np.diag(sign)).sum() / var)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def align_face(image: Image.Image | np.ndarray, landmarks, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` RGB crop (uint8 array) of the face with these five ``(x, y)`` landmarks, warped by
    the similarity transform that carries them onto :data:`ARCFACE_TEMPLATE` (scaled to ``size``)."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
    matrix = similarity(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def main_face(faces: list) -> Any:
    """The face a FaceID unit reads: the largest (box area); among equal ones the first of ``faces`` (which the
    detector gives in reading order)."""
    if not faces:
        raise NoFaceFound("no face found in the reference image")
    return max(faces, key=lambda f: (f.width * f.height))  # max keeps the first of equals


@dataclass(frozen=True)
class FaceModel:
    """A face-recognition ONNX model loaded in onnxruntime: ``session``, its input's name, whether the graph
    normalises the pixels itself (insightface's test: ``Sub`` and ``Mul`` among its first nodes), and ``key``
    (its file, for the embeddings cache)."""

    session: Any
    input_name: str
    raw_pixels: bool
    key: str

    def embed(self, crop: np.ndarray) -> np.ndarray:
        """The L2-normalised embedding (float32, ``(512,)``) of a 112x112 RGB crop."""
        x = crop.astype(np.float32)
        if not self.raw_pixels:
            x = (x - 127.5) / 127.5
        blob = x.transpose(2, 0, 1)[None]
        out = np.asarray(self.session.run(None, {self.input_name: blob})[0], dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(out))
        return out / norm if norm > 0 else out


def load_face_model(path: Path, device: str = "cpu") -> FaceModel:
    """The ArcFace ONNX file at ``path`` in onnxruntime (CUDA's provider on a CUDA worker when onnxruntime has it,
    else the CPU's). :class:`FaceModelError` for a model whose input is not ``[N, 3, 112, 112]`` or whose output is
    not 512 wide."""
    import onnxruntime as ort

    path = Path(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [node.op_type for node in graph.node[:8]]
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    if list(inp.shape[1:]) != [3, ARCFACE_SIZE, ARCFACE_SIZE]:
        raise FaceModelError(f"{path.name}: input {inp.shape}, not [N, 3, {ARCFACE_SIZE}, {ARCFACE_SIZE}] (an"
                             " ArcFace recognition model, e.g. insightface's w600k_r50.onnx)")
    if out.shape[-1] != FACE_EMBED_DIM:
        raise FaceModelError(f"{path.name}: output {out.shape}, not {FACE_EMBED_DIM} wide")
    return FaceModel(session=session, input_name=inp.name, raw_pixels="Sub" in ops and "Mul" in ops,
                     key=f"{path.resolve()}|{path.stat().st_mtime_ns}")


def face_embeds(image: Image.Image, faces: list, model: FaceModel, kind: str,
                encoder: ImageEncoder | None = None) -> ReferenceEmbeds:
    """The :class:`ReferenceEmbeds` of kind ``face_id`` or ``face_id_plus`` (module doc) of ``image``'s main face
    (:func:`main_face` of the detector's ``faces``). ``face_id_plus`` needs the adapter's CLIP ``encoder``.
    :class:`NoFaceFound` when ``faces`` is empty."""
    face = main_face(faces)
    image = image.convert("RGB")
    ids = torch.from_numpy(model.embed(align_face(image, face.landmarks)))[None]
    if kind == "face_id":
        return ReferenceEmbeds(ids, torch.zeros_like(ids), "face_id")
    if encoder is None:
        raise ValueError("a faceid-plus adapter needs its image encoder")
    crop = Image.fromarray(align_face(image, face.landmarks, CLIP_CROP_SIZE))
    clip = encode_reference(encoder, crop, "hidden_states")
    ids = ids.to(device=clip.positive.device, dtype=clip.positive.dtype)
    return ReferenceEmbeds(torch.cat([ids, clip.positive.flatten(1)], dim=1),
                           torch.cat([torch.zeros_like(ids), clip.negative.flatten(1)], dim=1), "face_id_plus")


class FaceIDPlusProjection(torch.nn.Module):
    """diffusers' ``IPAdapterFaceIDPlusImageProjection`` taking its two inputs in one tensor: ``(B, id_dim +
    tokens * clip_dim)`` -> the id part as ``id_embeds``, the rest as its ``clip_embeds`` ``(B, 1, tokens,
    clip_dim)`` for this call only (the module is shared by every job: nothing stays on it)."""

    def __init__(self, inner: torch.nn.Module, id_dim: int, clip_dim: int, shortcut: bool):
        super().__init__()
        self.inner, self.id_dim, self.clip_dim = inner, id_dim, clip_dim
        self.inner.shortcut, self.inner.shortcut_scale = shortcut, SHORTCUT_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, clip = x[:, :self.id_dim], x[:, self.id_dim:]
        self.inner.clip_embeds = clip.reshape(x.shape[0], 1, -1, self.clip_dim)
        try:
            return self.inner(ids)
        finally:
            self.inner.clip_embeds = None


def is_v2(name: str) -> bool:
    """Whether a faceid-plus file is a v2 one (its shortcut on), by its name (``...-plusv2_sd15.bin``)."""
    return "v2" in name.lower()


#: ``to_<x>_lora`` of the published files -> the module of an attention layer it patches.
_TARGETS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}


def faceid_lora(lora: dict[int, dict[str, torch.Tensor]], unet: Any, source: str) -> LoraFile:
    """The LoRA part of a FaceID file (``n -> {"q.down": ..., "q.up": ...}``, ``n`` numbering
    ``unet.attn_processors``) as a :class:`LoraFile` in diffusers' names (``unet.<attention module>.to_q`` ...), as
    diffusers' ``_load_ip_adapter_loras`` names it: :func:`workers.submodels.lora.patched` applies and undoes it.
    A number past the UNet's processors gives a name that resolves to no layer (refused by ``patched``, named)."""
    names = list(unet.attn_processors)
    layers = {}
    for n, parts in sorted(lora.items()):
        module = names[n].removesuffix(".processor") if n < len(names) else f"attn_processors[{n}]"
        for x, target in _TARGETS.items():
            if f"{x}.down" in parts:
                layers[f"unet.{module}.{target}"] = LoraLayer("lora", {"down": parts[f"{x}.down"],
                                                                       "up": parts[f"{x}.up"]})
    return LoraFile(layers=layers, metadata={}, source=source, formats=("lora",))
