"""Tiny random-weight ControlNets and controlnet-aux annotator files, built from code, for demos and tests.

Nothing is downloaded.

* :func:`ensure_demo_controlnet`: a ``ControlNetModel`` diffusers folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``, about 2 MB) that fits the demo UNet of
  :func:`workers.demo.model.ensure_demo_model` (or the UNet of any SD 1.x folder given as ``base_model``).
* :func:`write_openpose_annotators`, :func:`write_midas_annotators`, :func:`write_lineart_annotators`
  (:func:`write_demo_annotators`: all of them): the weight files controlnet-aux's own
  ``<Detector>.from_pretrained(local_dir)`` reads, with controlnet-aux's default file names and the exact
  key layout its loaders expect, made by instantiating controlnet-aux's own model classes (on the ``meta``
  device: the names and shapes come from the real classes, nothing is run) and saving their state dicts,
  filled with random values, with ``torch.save``. These are full-size networks (the loaders build the real
  architectures): about 1 GB in float32 for all of them, half in float16 (``dtype``; the loaders copy
  into float32 modules with ``load_state_dict``, so both load). Random weights detect nothing meaningful:
  an OpenPose map of a random network is black (no person found), a depth or line-art map is structured
  noise. They are plumbing weights.

File layouts (keys as written; ``torch.load`` of each gives a flat ``{name: tensor}`` dict):

* ``body_pose_model.pth``: ``bodypose_model().state_dict()`` with the first component of every key
  removed (``model0.conv1_1.weight`` -> ``conv1_1.weight``): controlnet-aux's ``util.transfer`` maps each
  model key to ``'.'.join(key.split('.')[1:])`` of the file, the layout of the original CMU/Caffe export.
* ``hand_pose_model.pth``: the same for ``handpose_model()``.
* ``facenet.pth``: ``FaceNet().state_dict()`` as is (loaded with a plain ``load_state_dict``).
* ``dpt_hybrid-midas-501f0c75.pt``: ``DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)``'s
  state dict as is (``pretrained.model.*`` is timm's ``vit_base_resnet50_384``, ``scratch.*`` the DPT head).
* ``sk_model.pth``, ``sk_model2.pth``: ``lineart.Generator(3, 1, 3)``'s state dict as is (fine and coarse).

Weights are deterministic for a given seed and torch version, and the caller's RNG state is untouched:
every tensor is drawn from its own CPU ``torch.Generator`` seeded by (seed, tensor name).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from workers.demo.model import ensure_demo_model
from workers.demo.publish import ensure_folder, read_marker
from workers.inference.preprocess import LINEART_FILES, MIDAS_FILES, OPENPOSE_FILES

MARKER_FILE = "atelier_demo_controlnet.json"

#: Version of what :func:`ensure_demo_controlnet` writes; recorded in the marker.
DEMO_CONTROLNET_BUILD = 1

#: Channels of the demo ControlNet's conditioning embedding (4 levels: the map is downsampled 8 times, the
#: VAE factor of Stable Diffusion; the last level is projected to the UNet's first block width).
CONDITIONING_CHANNELS = (8, 16, 32, 32)

#: Standard deviation, relative to 1 / sqrt(fan_in), of the "zero convolutions" (the 1x1 convs that feed
#: the UNet) and of the conditioning embedding's convs. Real ControlNets start their zero convs at 0 and
#: train them; the demo gives them random weights so that control visibly changes the image.
ZERO_CONV_GAIN = 1.0
CONDITIONING_GAIN = 1.5

#: The conditioning embedding's last conv is scaled so that two different random maps give embeddings
#: that differ by this standard deviation: the size of the UNet's own first features, so the control
#: image, not only the presence of a ControlNet, changes the result.
CONDITIONING_DIFFERENCE_STD = 0.5


# --- helpers -----------------------------------------------------------------------------------------------

def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the tensor ``name`` of build ``seed``. The seed is hashed into 32 bits: torch's CPU
    generator (mt19937) keeps only the low 32 bits of ``manual_seed``, so ``seed * 2**32 + x`` would
    silently ignore ``seed``."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:4], "little"))


def _uniform_(param: torch.Tensor, bound: float, seed: int, name: str) -> None:
    values = torch.rand(tuple(param.shape), generator=_generator(seed, name), dtype=torch.float32) * 2 - 1
    param.copy_(values * bound)


def _init_convs(module: torch.nn.Module, prefix: str, gain: float, seed: int) -> None:
    """Uniform weights and biases with standard deviation ``gain / sqrt(fan_in)`` for every conv/linear."""
    for name, layer in module.named_modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            bound = gain * (3.0 / layer.weight[0].numel()) ** 0.5
            full = f"{prefix}.{name}" if name else prefix
            _uniform_(layer.weight, bound, seed, f"{full}.weight")
            if layer.bias is not None:
                _uniform_(layer.bias, bound, seed, f"{full}.bias")


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.modules.batchnorm._NormBase)


def _random_state(build: Callable[[], torch.nn.Module], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict of ``build()`` (a controlnet-aux model class) filled with random weights.

    The model is instantiated on the ``meta`` device: its structure (names, shapes, which module owns each
    parameter) comes from the real class, but nothing is allocated or initialised, and the forward pass timm
    runs inside the DPT-Hybrid constructor costs nothing (on the CPU, a real construction takes 5-10 s of
    ResNet forward and initialisers). Values: conv / linear weights and biases uniform in
    +-1/sqrt(fan_in) (torch's default scale), normalisation weights 1 and biases 0, other parameters
    (positional embeddings, class token) normal(0, 0.02), BatchNorm running statistics 0 / 1; each
    tensor drawn from a generator seeded by (seed, its name).
    """
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    owners: dict[str, torch.nn.Module] = {}
    for module_name, module in model.named_modules():
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            owners[f"{module_name}.{name}" if module_name else name] = module
    state: dict[str, torch.Tensor] = {}
    for key, meta in model.state_dict(keep_vars=True).items():
        module, leaf = owners[key], key.rsplit(".", 1)[-1]
        shape = tuple(meta.shape)
        if isinstance(module, torch.nn.modules.conv._ConvNd | torch.nn.Linear) and leaf in ("weight", "bias"):
            bound = (1.0 / module.weight[0].numel()) ** 0.5
            value = (torch.rand(shape, generator=_generator(seed, key)) * 2 - 1) * bound
        elif isinstance(module, _NORMS) and leaf in ("weight", "running_var"):
            value = torch.ones(shape)
        elif isinstance(module, _NORMS) and leaf in ("bias", "running_mean", "num_batches_tracked"):
            value = torch.zeros(shape, dtype=meta.dtype)
        elif meta.dtype.is_floating_point:
            value = torch.randn(shape, generator=_generator(seed, key)) * 0.02
        else:
            raise TypeError(f"no random value for {key} ({type(module).__name__}, {meta.dtype})")
        state[key] = value.to(dtype) if value.dtype.is_floating_point else value
    return state


def _write(dest: Path, files: Iterable[tuple[str, dict[str, torch.Tensor]]]) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, state in files:
        _save_atomically(state, dest / name)
    return dest


# --- annotators --------------------------------------------------------------------------------------------

def _strip_first_component(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of controlnet-aux's ``open_pose.util.transfer``: ``model0.conv1_1.weight`` ->
    ``conv1_1.weight``. Refuses a model whose stripped names would collide."""
    stripped = {key.split(".", 1)[1]: value for key, value in state.items()}
    if len(stripped) != len(state):
        raise RuntimeError("OpenPose parameter names collide once their first component is removed")
    return stripped


def write_openpose_annotators(dest: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``body_pose_model.pth``, ``hand_pose_model.pth`` and ``facenet.pth`` (random weights, the
    layout ``OpenposeDetector.from_pretrained(dest)`` reads) into ``dest``; return ``dest``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.face import FaceNet
        from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    body, hand, face = OPENPOSE_FILES
    files = [
        (body, _strip_first_component(_random_state(bodypose_model, seed, dtype))),
        (hand, _strip_first_component(_random_state(handpose_model, seed + 1, dtype))),
        (face, _random_state(FaceNet, seed + 2, dtype)),
    ]
    return _write(dest, files)


def write_midas_annotators(dest: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``dpt_hybrid-midas-501f0c75.pt`` (a random DPT-Hybrid MiDaS, the layout
    ``MidasDetector.from_pretrained(dest)`` reads with its default ``model_type="dpt_hybrid"``) into
    ``dest``; return ``dest``. About 490 MB in float32 (123 M parameters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    def build() -> torch.nn.Module:
        return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)

    (name,) = MIDAS_FILES
    return _write(dest, [(name, _random_state(build, seed, dtype))])


def write_lineart_annotators(dest: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``sk_model.pth`` and ``sk_model2.pth`` (random line-art generators, the layout
    ``LineartDetector.from_pretrained(dest)`` reads) into ``dest``; return ``dest``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.lineart import Generator

    fine, coarse = LINEART_FILES
    files = [
        (fine, _random_state(lambda: Generator(3, 1, 3), seed, dtype)),
        (coarse, _random_state(lambda: Generator(3, 1, 3), seed + 1, dtype)),
    ]
    return _write(dest, files)


def write_demo_annotators(
    dest: Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    detectors: Iterable[str] = ("openpose", "midas", "lineart"),
) -> Path:
    """Write the annotator files of ``detectors`` (``openpose``, ``midas``, ``lineart``) into one folder, the
    layout :func:`workers.inference.preprocess.preprocess` reads for every kind; return ``dest``."""
    writers = {
        "openpose": write_openpose_annotators,
        "midas": write_midas_annotators,
        "lineart": write_lineart_annotators,
    }
    for detector in detectors:
        if detector not in writers:
            raise ValueError(f"unknown detector {detector!r}; expected one of {', '.join(writers)}")
        writers[detector](dest, seed=seed, dtype=dtype)
    return Path(dest)


# --- ControlNet --------------------------------------------------------------------------------------------

def build_demo_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A ControlNet for ``unet``: ``ControlNetModel.from_unet``'s architecture with

    * ``in_channels`` = 4 whatever the UNet's: in the inpainting ControlNet pipeline the ControlNet sees
      the noisy latents only, never the mask and masked-image channels of a 9-channel inpainting UNet
      (``from_unet`` on such a UNet would give 9 and fail at the first step). Its ``conv_in`` is the
      UNet's restricted to the 4 latent channels;
    * the time embedding, down blocks and mid block copied from the UNet (as ``from_unet`` does);
    * a small conditioning embedding (:data:`CONDITIONING_CHANNELS`) with random weights, its last conv
      scaled (:data:`CONDITIONING_DIFFERENCE_STD`) so that the control image matters;
    * random, non-zero "zero convolutions" (:data:`ZERO_CONV_GAIN`), so that control changes the image.
    """
    template = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS, load_weights_from_unet=False
    )
    controlnet = ControlNetModel.from_config(dict(template.config), in_channels=4)
    del template
    latent = min(4, unet.config.in_channels)
    with torch.no_grad():
        controlnet.conv_in.weight.zero_()
        controlnet.conv_in.weight[:, :latent].copy_(unet.conv_in.weight[:, :latent])
        controlnet.conv_in.bias.copy_(unet.conv_in.bias)
        controlnet.time_embedding.load_state_dict(unet.time_embedding.state_dict())
        if controlnet.class_embedding is not None:
            controlnet.class_embedding.load_state_dict(unet.class_embedding.state_dict())
        controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict())
        controlnet.mid_block.load_state_dict(unet.mid_block.state_dict())

        embedding = controlnet.controlnet_cond_embedding
        _init_convs(embedding, "controlnet_cond_embedding", CONDITIONING_GAIN, seed)
        _init_convs(controlnet.controlnet_down_blocks, "controlnet_down_blocks", ZERO_CONV_GAIN, seed)
        _init_convs(controlnet.controlnet_mid_block, "controlnet_mid_block", ZERO_CONV_GAIN, seed)

        # Scale the embedding's output so that different maps give clearly different embeddings.
        probe = torch.rand((2, 3, 64, 64), generator=_generator(seed, "probe"))
        first, second = embedding(probe).chunk(2)
        spread = float((first - second).std())
        if not spread > 0:
            raise RuntimeError("demo ControlNet conditioning embedding is constant")
        embedding.conv_out.weight.mul_(CONDITIONING_DIFFERENCE_STD / spread)
        embedding.conv_out.bias.mul_(CONDITIONING_DIFFERENCE_STD / spread)
    return controlnet.eval()


def _unet_signature(unet: UNet2DConditionModel) -> dict:
    keys = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
            "attention_head_dim")
    return {key: (list(value) if isinstance(value, (list, tuple)) else value)
            for key in keys for value in [unet.config[key]]}


def ensure_demo_controlnet(dest: Path, seed: int = 0, base_model: Path | None = None) -> Path:
    """Build, once, a tiny random ControlNet folder (``ControlNetModel.save_pretrained``) at ``dest``.

    It fits the UNet of ``base_model`` (a diffusers SD 1.x folder, e.g. one made by
    :func:`workers.demo.model.ensure_demo_model`) and copies its weights (:func:`build_demo_controlnet`);
    without ``base_model``, the demo inpainting model of the same ``seed`` is built in a temporary folder
    for the purpose and discarded (the ControlNet then fits any demo model: they share the UNet shape).

    Idempotent and safe when several processes call it at once (:func:`workers.demo.publish.ensure_folder`).
    Returns ``dest``. Raises ``ValueError`` when ``dest`` holds a demo ControlNet of
    another seed or UNet shape, ``FileExistsError`` when it holds anything else.
    """
    dest = Path(dest)
    if base_model is None:
        found = read_marker(dest, MARKER_FILE)
        if found is not None and found.get("seed") == seed and found.get("build") == DEMO_CONTROLNET_BUILD:
            return dest  # any demo ControlNet of this seed fits every demo model (they share the UNet shape)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.base-", dir=dest.parent) as scratch:
        if base_model is None:
            base_model = ensure_demo_model(Path(scratch) / "base", seed=seed)
        unet = UNet2DConditionModel.from_pretrained(Path(base_model) / "unet", local_files_only=True)
        marker = {"kind": "atelier-demo-controlnet", "build": DEMO_CONTROLNET_BUILD, "seed": seed,
                  "unet": _unet_signature(unet)}
        return ensure_folder(dest, marker,
                             lambda folder, work: build_demo_controlnet(unet, seed).save_pretrained(
                                 folder, safe_serialization=True),
                             marker_file=MARKER_FILE, what="demo ControlNet")
