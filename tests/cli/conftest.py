"""The stand-in hub of ``atelier pull``'s tests, started once per session on a free port of 127.0.0.1, serving tiny
repos laid out as the real ones are: a diffusers inpainting pipeline whose weights are fp16 variants (beside plain
decoys, a safety checker and a .ckpt a pull must leave), annotator files, an ONNX file in a subfolder, a ControlNet
and a MarianMT translator. The models are the demo's, built by code (real formats, tiny, random weights)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.hub import StandInHub
from workers.demo import demo_path

#: What a pull must never fetch from the pipeline repo: the decoys its selection rules leave out.
DECOY = b"decoy: a pull must not take this file\n" * 8


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("atelier_demo")}


def _as_variant(files: dict[str, bytes], variant: str = "fp16") -> dict[str, bytes]:
    """Each weights file ``x.safetensors`` served as ``x.fp16.safetensors``, with a decoy under the plain name and a
    ``.bin`` one: only a pull that takes the variant and stores it under the plain name gives a loadable folder."""
    out = {}
    for path, data in files.items():
        if path.endswith(".safetensors"):
            stem = path.removesuffix(".safetensors")
            out[f"{stem}.{variant}.safetensors"] = data
            out[path] = DECOY
            out[f"{stem}.bin"] = DECOY
        else:
            out[path] = data
    return out


def tiny_repos(models_dir: Path) -> dict[str, dict[str, bytes]]:
    inpaint = _as_variant(_folder_files(demo_path("inpaint", models_dir)))
    index = json.loads(inpaint["model_index.json"])
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True}
    inpaint |= {"model_index.json": json.dumps(index, indent=2).encode(),
                "safety_checker/config.json": b'{"decoy": true}', "safety_checker/model.safetensors": DECOY,
                "feature_extractor/preprocessor_config.json": b'{"decoy": true}',
                "sd-v1-5-inpainting.ckpt": DECOY * 50, "v1-inpainting-inference.yaml": DECOY,
                "README.md": b"# tiny inpainting\n"}
    annotators = {name: f"tiny {name} weights\n".encode() * 40 for name in
                  ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth", "sk_model.pth", "ControlNetHED.pth")}
    cloth = {"onnx/u2net_cloth_seg.onnx": demo_path("cloth-onnx", models_dir).read_bytes(), "README.md": b"# cloth\n"}
    controlnet = _as_variant(_folder_files(demo_path("controlnet", models_dir)))
    controlnet["images/control.png"] = DECOY
    translator = _folder_files(demo_path("translator", models_dir))
    translator |= {"tf_model.h5": DECOY, "README.md": b"# opus-mt-mul-en\n", "pytorch_model.bin": DECOY}
    return {"tiny/sd15-inpainting": inpaint, "tiny/annotators": annotators, "tiny/cloth-seg": cloth,
            "tiny/controlnet": controlnet, "tiny/opus-mt-mul-en": translator}


@pytest.fixture(scope="session")
def stand_in_hub():
    models_dir = Path(os.environ.get("ATELIER_DEMO_MODELS_DIR", Path.home() / ".cache" / "atelier" / "test-models"))
    hub = StandInHub()
    for repo, files in tiny_repos(models_dir).items():
        hub.add_repo(repo, files)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture()
def hub(stand_in_hub, monkeypatch):
    """The session's stand-in hub, faults and logs cleared, as HF_ENDPOINT."""
    stand_in_hub.reset()
    monkeypatch.setenv("HF_ENDPOINT", stand_in_hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield stand_in_hub
    stand_in_hub.reset()
