"""Where each ``demo:`` source of models_config/ lives: built locally on first use under the demo
models dir (``ATELIER_DEMO_MODELS_DIR``, default ``$ATELIER_DATA_DIR/models``), never downloaded.

Every builder is idempotent and publishes atomically, so several worker processes may ask at once.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.demo.adapters import ensure_demo_clip_vision, ensure_demo_ip_adapter
from workers.demo.control import ensure_demo_controlnet, write_demo_annotators
from workers.demo.describer import ensure_demo_describer, ensure_demo_translator_en
from workers.demo.eraser import ensure_demo_eraser
from workers.demo.faceid import ensure_demo_arcface, ensure_demo_faceid
from workers.demo.masks import ensure_demo_cloth_seg, ensure_demo_sam, ensure_demo_segformer, ensure_demo_u2net
from workers.demo.model import ensure_demo_model, ensure_demo_model_sd15
from workers.demo.publish import ensure_folder
from workers.demo.submodels import DEMO_SUBMODELS, ensure_demo_submodels
from workers.demo.translator import ensure_demo_translator
from workers.demo.upscaler import ensure_demo_upscaler

#: annotators of the demo deployment; MiDaS (depth) is left out: its weights are ~250 MB even in fp16
DEMO_ANNOTATORS = ("openpose", "lineart")


def demo_path(kind: str, demo_dir: Path) -> Path:
    """The folder or file of demo source ``kind`` (see ModelSource.demo), built if missing."""
    demo_dir = Path(demo_dir)
    if kind in ("inpaint", "sd15"):
        return (ensure_demo_model if kind == "inpaint" else ensure_demo_model_sd15)(demo_dir / f"demo-{kind}")
    if kind == "translator":
        return ensure_demo_translator(demo_dir / "demo-translator")
    if kind in DEMO_SUBMODELS:
        return ensure_demo_submodels(demo_dir / "demo-submodels")[kind]
    if kind == "controlnet":
        return ensure_demo_controlnet(demo_dir / "demo-controlnet", base_model=demo_path("inpaint", demo_dir))
    if kind == "ip-adapter":  # the .safetensors file inside the folder
        return ensure_demo_ip_adapter(demo_dir / "demo-ip-adapter", base_model=demo_path("inpaint", demo_dir))
    if kind == "ip-adapter-faceid":  # the .safetensors file inside the folder
        return ensure_demo_faceid(demo_dir / "demo-faceid", base_model=demo_path("inpaint", demo_dir))
    if kind == "arcface":  # the .onnx file inside the folder
        return ensure_demo_arcface(demo_dir / "demo-arcface")
    if kind == "clip-vision":
        return ensure_demo_clip_vision(demo_dir / "demo-clip-vision")
    if kind == "annotators":
        return ensure_demo_annotators(demo_dir / "demo-annotators")
    if kind == "u2net-onnx":  # the .onnx file inside the folder
        return ensure_demo_u2net(demo_dir / "demo-u2net")
    if kind == "cloth-onnx":  # the .onnx file inside the folder
        return ensure_demo_cloth_seg(demo_dir / "demo-cloth-seg")
    if kind == "sam":
        return ensure_demo_sam(demo_dir / "demo-sam")
    if kind == "segformer":
        return ensure_demo_segformer(demo_dir / "demo-segformer")
    if kind == "upscaler":  # the weights file inside the folder
        return ensure_demo_upscaler(demo_dir / "demo-upscaler")
    if kind == "eraser":  # the weights file inside the folder
        return ensure_demo_eraser(demo_dir / "demo-eraser")
    if kind == "describer":
        return ensure_demo_describer(demo_dir / "demo-describer")
    if kind == "translator-en":
        return ensure_demo_translator_en(demo_dir / "demo-translator-en")
    raise ValueError(f"unknown demo source {kind!r}")


def ensure_demo_annotators(dest: Path) -> Path:
    """Random-weight annotator files (fp16) for the demo pre-processors, in controlnet-aux's layout."""

    def write(folder: Path, work: Path) -> None:
        write_demo_annotators(folder, dtype=torch.float16, detectors=DEMO_ANNOTATORS)

    marker = {"kind": "atelier-demo-annotators", "detectors": list(DEMO_ANNOTATORS), "build": 1}
    return ensure_folder(Path(dest), marker, write, marker_file="atelier_demo_annotators.json",
                         what="demo annotator")
