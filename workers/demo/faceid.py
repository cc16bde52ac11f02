"""A tiny random-weight FaceID IP-Adapter and an ArcFace-shaped face-recognition ONNX model, built from code.

Nothing is downloaded.

* :func:`ensure_demo_faceid`: ``ip-adapter-faceid-plusv2_demo.safetensors`` in the published layout of a
  *faceid-plus* (v2) file (h94/IP-Adapter-FaceID): ``image_proj.proj.0/2.*`` (the id MLP: 512 -> 1024 -> 4 x 32),
  ``image_proj.norm.*``, ``image_proj.perceiver_resampler.*`` (proj_in from the demo CLIP encoder's hidden width
  32, four layers ``layers.<i>.0.{norm1,norm2,to_q,to_kv,to_out}`` and ``layers.<i>.1.{0,1,3}``, proj_out to the
  UNet's cross-attention width, norm_out), ``ip_adapter.<n>.to_k_ip/to_v_ip.weight`` for each cross-attention
  layer and the LoRA part ``ip_adapter.<n>.to_{q,k,v,out}_lora.{down,up}.weight`` (rank 4) for every attention
  layer ``n`` of the demo inpainting UNet (``unet.attn_processors`` order).
* :func:`ensure_demo_arcface`: ``arcface_demo.onnx``, input ``input.1`` ``[1, 3, 112, 112]`` float, output
  ``[1, 512]`` (pooled 8x8, two random dense layers): ArcFace's interface, no recognition skill. Written with the
  ``onnx`` package like the demo mask engines.

Values are drawn from (seed, tensor name): the same files on every machine and run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from workers.demo.adapters import ADAPTER_GAIN, ENCODER_HIDDEN, _values, ensure_unet_fitted_file
from workers.demo.publish import ensure_folder

FACEID_MARKER = "atelier_demo_faceid.json"
FACEID_FILE = "ip-adapter-faceid-plusv2_demo.safetensors"
ARCFACE_MARKER = "atelier_demo_arcface.json"
ARCFACE_FILE = "arcface_demo.onnx"
DEMO_FACEID_BUILD = 1
DEMO_ARCFACE_BUILD = 1
#: The id embedding's width (ArcFace's), the resampler's attention width (one 64-wide head, diffusers' fixed head
#: size), its tokens, the LoRA's rank. The resampler's own width is the UNet's (a v2 shortcut adds the two).
ID_DIM, HEAD_DIM, FACE_TOKENS, LORA_RANK = 512, 64, 4, 4
_IR_VERSION, _OPSET = 8, 17


def demo_faceid_state(unet, seed: int = 0, clip_dim: int = ENCODER_HIDDEN, plus: bool = True,
                      lora_rank: int = LORA_RANK) -> dict[str, torch.Tensor]:
    """A FaceID file's tensors for ``unet`` under the published flat names: faceid-plus (``plus``) or plain
    faceid, with a LoRA part of ``lora_rank`` (0: none)."""
    width = e = unet.config.cross_attention_dim
    h = HEAD_DIM

    def lin(name: str, out: int, inp: int, bias: bool = True) -> None:
        state[f"image_proj.{name}.weight"] = _values(seed, name, (out, inp), (3.0 / inp) ** 0.5)
        if bias:
            state[f"image_proj.{name}.bias"] = _values(seed, name + ".b", (out,), 0.1)

    def norm(name: str, dim: int) -> None:
        state[f"image_proj.{name}.weight"], state[f"image_proj.{name}.bias"] = torch.ones(dim), torch.zeros(dim)

    state: dict[str, torch.Tensor] = {}
    if plus:
        lin("proj.0", 2 * ID_DIM, ID_DIM)
        lin("proj.2", e * FACE_TOKENS, 2 * ID_DIM)
        norm("norm", e)
        pr = "perceiver_resampler"
        lin(f"{pr}.proj_in", e, clip_dim)
        lin(f"{pr}.proj_out", width, e)
        norm(f"{pr}.norm_out", width)
        for i in range(4):
            norm(f"{pr}.layers.{i}.0.norm1", e)
            norm(f"{pr}.layers.{i}.0.norm2", e)
            lin(f"{pr}.layers.{i}.0.to_q", h, e, bias=False)
            lin(f"{pr}.layers.{i}.0.to_kv", 2 * h, e, bias=False)
            lin(f"{pr}.layers.{i}.0.to_out", e, h, bias=False)
            norm(f"{pr}.layers.{i}.1.0", e)
            lin(f"{pr}.layers.{i}.1.1", 4 * e, e, bias=False)
            lin(f"{pr}.layers.{i}.1.3", e, 4 * e, bias=False)
    else:
        lin("proj.0", 2 * ID_DIM, ID_DIM)
        lin("proj.2", width * FACE_TOKENS, 2 * ID_DIM)
        norm("norm", width)
    for n, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if attn.is_cross_attention:
            for part in ("to_k_ip", "to_v_ip"):
                state[f"ip_adapter.{n}.{part}.weight"] = _values(seed, f"{n}.{part}", (attn.inner_dim, width),
                                                                 ADAPTER_GAIN * (3.0 / width) ** 0.5)
        if not lora_rank:
            continue
        for x, module in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            state[f"ip_adapter.{n}.to_{x}_lora.down.weight"] = _values(
                seed, f"{n}.{x}.down", (lora_rank, module.in_features), (1.0 / module.in_features) ** 0.5)
            state[f"ip_adapter.{n}.to_{x}_lora.up.weight"] = _values(seed, f"{n}.{x}.up",
                                                                     (module.out_features, lora_rank), 0.05)
    return state


def ensure_demo_faceid(dest: Path, seed: int = 0, base_model: Path | None = None) -> Path:
    """Build, once, the folder ``dest`` holding :data:`FACEID_FILE` (:func:`demo_faceid_state`, faceid-plus v2)
    fitting the UNet of ``base_model`` (default: the demo inpainting model of ``seed``, built in a scratch folder)
    and the demo CLIP encoder. Returns the file's path."""
    return ensure_unet_fitted_file(dest, seed, base_model, file=FACEID_FILE, marker_file=FACEID_MARKER,
                                   kind="atelier-demo-faceid", build=DEMO_FACEID_BUILD, state=demo_faceid_state,
                                   what="demo FaceID IP-Adapter")


def arcface_model(seed: int = 0):
    """The ArcFace-shaped ONNX model (module doc)."""
    rng = np.random.RandomState(seed)
    w1 = rng.uniform(-1, 1, (3 * 8 * 8, 256)).astype(np.float32) * (3.0 / 192) ** 0.5
    w2 = rng.uniform(-1, 1, (256, ID_DIM)).astype(np.float32) * (3.0 / 256) ** 0.5
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "arcface_demo",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, ID_DIM])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def ensure_demo_arcface(dest: Path, seed: int = 0) -> Path:
    """Build, once, the folder ``dest`` holding :data:`ARCFACE_FILE`; returns the file's path."""
    def write(folder: Path, work: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save_model(arcface_model(seed), str(folder / ARCFACE_FILE))

    marker = {"kind": "atelier-demo-arcface", "build": DEMO_ARCFACE_BUILD, "seed": seed}
    ensure_folder(Path(dest), marker, write, marker_file=ARCFACE_MARKER, what="demo ArcFace model")
    return Path(dest) / ARCFACE_FILE
