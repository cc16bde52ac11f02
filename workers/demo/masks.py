"""Tiny demo models, built by code, in the real formats of the mask engines (nothing is downloaded).

=================  =======================================  ==============================================
demo kind          what is built                            loaded like
=================  =======================================  ==============================================
``u2net-onnx``     ``demo-u2net/u2net.onnx``                rembg's ``u2net`` (``U2netSession``)
``cloth-onnx``     ``demo-cloth-seg/u2net_cloth_seg.onnx``  rembg's ``u2net_cloth_seg`` (``Unet2ClothSession``)
``sam``            ``demo-sam/`` (config, safetensors,      ``SamModel`` / ``SamProcessor.from_pretrained``
                   processor_config.json)
``segformer``      ``demo-segformer/`` (config,             ``AutoModelForSemanticSegmentation`` /
                   safetensors, preprocessor_config.json)   ``AutoImageProcessor.from_pretrained``
=================  =======================================  ==============================================

The two ONNX models are small **hand-set** graphs (opset 17, no weights to train) that do something
sensible on a product photo on a plain backdrop, so a demo mask looks like a mask:

* u2net: ``float32 [1,3,320,320]`` normalised as rembg does (``img / max(img)``, then ImageNet mean/std)
  -> ``float32 [1,1,320,320]`` saliency: the input is un-normalised back to colour, the backdrop colour is
  the mean of the top-left 8x8 corner, and ``saliency = sigmoid(k * (sum_c |x - backdrop| - t))``, smoothed
  by a 5x5 average (same size). One output (u2net has seven; rembg reads only the first).
* u2net_cloth_seg: ``float32 [1,3,768,768]`` (same normalisation) -> ``float32 [1,4,768,768]`` logits of
  0 background, 1 upper-body, 2 lower-body, 3 full-body clothes (rembg takes the argmax over axis 1): the
  saturation ``(max_c - min_c) / (max_c + eps)``, smoothed 5x5, gives ``class 3 = 20 * (sat - 0.3)`` and
  ``class 0 = -class 3``; classes 1 and 2 are a constant -100. A saturated garment on a neutral mannequin
  is "full-body clothes".

SAM and SegFormer are random-weight models (``torch.manual_seed(seed)``) with tiny configs: they run the
real transformers loading and inference code and give masks / logits of the right shapes, nothing more.
SAM works on 128x128 inputs (patch 16: an 8x8 image embedding, 32x32 low-resolution masks); SegFormer on
128x128 (logits at 32x32).

Sizes: the ONNX files are ~1 KB each (the constants are a few floats), SAM ~0.4 MB, SegFormer ~0.4 MB.
Each builds in well under a second once torch/transformers are imported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from workers.demo.publish import ensure_folder

#: The 18 ATR clothes labels of the popular SegFormer clothes models (id -> name), as in their config.json.
ATR_CLOTHES_LABELS: dict[int, str] = {
    0: "Background", 1: "Hat", 2: "Hair", 3: "Sunglasses", 4: "Upper-clothes", 5: "Skirt", 6: "Pants",
    7: "Dress", 8: "Belt", 9: "Left-shoe", 10: "Right-shoe", 11: "Face", 12: "Left-leg", 13: "Right-leg",
    14: "Left-arm", 15: "Right-arm", 16: "Bag", 17: "Scarf",
}

U2NET_FILE = "u2net.onnx"
CLOTH_FILE = "u2net_cloth_seg.onnx"
U2NET_MARKER = "atelier_demo_u2net.json"
CLOTH_MARKER = "atelier_demo_cloth_seg.json"
SAM_MARKER = "atelier_demo_sam.json"
SEGFORMER_MARKER = "atelier_demo_segformer.json"

#: rembg's normalisation (ImageNet mean / std, applied after ``img / max(img)``)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

U2NET_SIZE = 320
CLOTH_SIZE = 768
#: u2net saliency: sigmoid(K * (sum_c |x - backdrop| - T)); a channel sum of 0.2 is a clearly visible change
U2NET_K, U2NET_T = 25.0, 0.2
#: cloth logits: class 3 = CLOTH_GAIN * (saturation - CLOTH_SAT); classes 1 and 2 = CLOTH_LOW
CLOTH_GAIN, CLOTH_SAT, CLOTH_LOW = 20.0, 0.3, -100.0

#: the demo SAM's input size (longest edge, padded square) and patch size
SAM_IMAGE_SIZE = 128
SAM_PATCH_SIZE = 16
#: the demo SegFormer's input size
SEGFORMER_SIZE = 128

_OPSET = 17
_IR_VERSION = 8  # the IR version of opset 17: readable by any onnxruntime that runs opset 17


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.asarray(value), name=name))


def _colour_nodes() -> list[onnx.NodeProto]:
    """``input`` (rembg-normalised) -> ``rgb`` (colour in [0, 1], as ``img / max(img)``)."""
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    return [
        _const("std", std),
        _const("mean", mean),
        helper.make_node("Mul", ["input", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["rgb"]),
    ]


def _smooth(src: str, dst: str) -> onnx.NodeProto:
    """5x5 average, same size (the border averages only what is inside the image)."""
    return helper.make_node("AveragePool", [src], [dst], kernel_shape=[5, 5], pads=[2, 2, 2, 2],
                            strides=[1, 1], count_include_pad=0)


def _model(nodes: list[onnx.NodeProto], size: int, out_name: str, out_channels: int, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, out_channels, size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="atelier-demo", producer_version="1")
    model.ir_version = _IR_VERSION
    model.doc_string = f"Atelier demo {name}: a hand-set graph, not a trained network (see workers/demo/masks.py)"
    onnx.checker.check_model(model, full_check=True)
    return model


def u2net_model() -> onnx.ModelProto:
    """The demo u2net graph (see the module docstring)."""
    nodes = _colour_nodes() + [
        _const("corner_starts", np.array([0, 0], dtype=np.int64)),
        _const("corner_ends", np.array([8, 8], dtype=np.int64)),
        _const("corner_axes", np.array([2, 3], dtype=np.int64)),
        helper.make_node("Slice", ["rgb", "corner_starts", "corner_ends", "corner_axes"], ["corner"]),
        helper.make_node("ReduceMean", ["corner"], ["backdrop"], axes=[2, 3], keepdims=1),  # [1,3,1,1]
        helper.make_node("Sub", ["rgb", "backdrop"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["absdiff"]),
        _const("channel_axis", np.array([1], dtype=np.int64)),
        helper.make_node("ReduceSum", ["absdiff", "channel_axis"], ["distance"], keepdims=1),  # [1,1,H,W]
        _const("threshold", np.array(U2NET_T, dtype=np.float32)),
        _const("gain", np.array(U2NET_K, dtype=np.float32)),
        helper.make_node("Sub", ["distance", "threshold"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["raw"]),
        _smooth("raw", "d0"),
    ]
    return _model(nodes, U2NET_SIZE, "d0", 1, "u2net")


def cloth_model() -> onnx.ModelProto:
    """The demo u2net_cloth_seg graph (see the module docstring)."""
    # one 1x1 convolution turns the smoothed saturation into the 4 logits
    weight = np.array([-CLOTH_GAIN, 0.0, 0.0, CLOTH_GAIN], dtype=np.float32).reshape(4, 1, 1, 1)
    bias = np.array([CLOTH_GAIN * CLOTH_SAT, CLOTH_LOW, CLOTH_LOW, -CLOTH_GAIN * CLOTH_SAT], dtype=np.float32)
    nodes = _colour_nodes() + [
        helper.make_node("ReduceMax", ["rgb"], ["cmax"], axes=[1], keepdims=1),
        helper.make_node("ReduceMin", ["rgb"], ["cmin"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["cmax", "cmin"], ["chroma"]),
        _const("eps", np.array(1e-3, dtype=np.float32)),
        helper.make_node("Add", ["cmax", "eps"], ["cmax_eps"]),
        helper.make_node("Div", ["chroma", "cmax_eps"], ["saturation"]),
        _smooth("saturation", "smooth"),
        _const("weight", weight),
        _const("bias", bias),
        helper.make_node("Conv", ["smooth", "weight", "bias"], ["logits"], kernel_shape=[1, 1]),
    ]
    return _model(nodes, CLOTH_SIZE, "logits", 4, "u2net_cloth_seg")


def _ensure_onnx(dest: Path, file_name: str, marker_file: str, kind: str, what: str, build) -> Path:
    def write(folder: Path, work: Path) -> None:
        folder.mkdir(parents=True)
        onnx.save_model(build(), str(folder / file_name))

    marker = {"kind": kind, "build": 1}
    return ensure_folder(Path(dest), marker, write, marker_file=marker_file, what=what) / file_name


def ensure_demo_u2net(dest: Path) -> Path:
    """Build, once, the folder ``dest`` holding the demo ``u2net.onnx``; returns the path of that file."""
    return _ensure_onnx(dest, U2NET_FILE, U2NET_MARKER, "atelier-demo-u2net", "demo u2net", u2net_model)


def ensure_demo_cloth_seg(dest: Path) -> Path:
    """Build, once, the folder ``dest`` holding the demo ``u2net_cloth_seg.onnx``; returns that file's path."""
    return _ensure_onnx(dest, CLOTH_FILE, CLOTH_MARKER, "atelier-demo-cloth-seg", "demo cloth-seg",
                        cloth_model)


def _seeded(seed: int, make):
    """``make()`` with torch's global RNG seeded, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _write_sam(folder: Path, seed: int) -> None:
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    hidden = 32  # vision output channels = prompt encoder = mask decoder width (they must agree)
    vision = SamVisionConfig(
        hidden_size=32, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
        image_size=SAM_IMAGE_SIZE, patch_size=SAM_PATCH_SIZE, window_size=4, global_attn_indexes=[1],
        num_pos_feats=hidden // 2,  # the positional encoding is [sin, cos] of num_pos_feats each
    )
    prompt = SamPromptEncoderConfig(hidden_size=hidden, image_size=SAM_IMAGE_SIZE, patch_size=SAM_PATCH_SIZE,
                                    mask_input_channels=8)
    decoder = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    model = _seeded(seed, lambda: SamModel(config)).eval()
    low_res = SAM_IMAGE_SIZE // 4  # the mask decoder upscales the image embedding 4x
    image_processor = SamImageProcessor(
        size={"longest_edge": SAM_IMAGE_SIZE}, pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE},
        mask_size={"longest_edge": low_res}, mask_pad_size={"height": low_res, "width": low_res},
    )
    model.save_pretrained(folder, safe_serialization=True)
    SamProcessor(image_processor=image_processor).save_pretrained(folder)


def _write_segformer(folder: Path, seed: int) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 32, 64], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
        num_attention_heads=[1, 1, 2, 4], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32,
        num_labels=len(ATR_CLOTHES_LABELS), id2label=dict(ATR_CLOTHES_LABELS),
        label2id={name: i for i, name in ATR_CLOTHES_LABELS.items()}, semantic_loss_ignore_index=255,
    )
    model = _seeded(seed, lambda: SegformerForSemanticSegmentation(config)).eval()
    processor = SegformerImageProcessor(size={"height": SEGFORMER_SIZE, "width": SEGFORMER_SIZE},
                                        do_reduce_labels=False)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def ensure_demo_sam(dest: Path, seed: int = 0) -> Path:
    """Build, once, a tiny random-weight SAM folder at ``dest`` (``SamModel`` + ``SamProcessor``)."""
    marker = {"kind": "atelier-demo-sam", "seed": seed, "build": 1}
    return ensure_folder(Path(dest), marker, lambda folder, work: _write_sam(folder, seed),
                         marker_file=SAM_MARKER, what="demo SAM")


def ensure_demo_segformer(dest: Path, seed: int = 0) -> Path:
    """Build, once, a tiny random-weight SegFormer folder at ``dest`` with the 18 ATR clothes labels."""
    marker = {"kind": "atelier-demo-segformer", "seed": seed, "build": 1}
    return ensure_folder(Path(dest), marker, lambda folder, work: _write_segformer(folder, seed),
                         marker_file=SEGFORMER_MARKER, what="demo SegFormer")
