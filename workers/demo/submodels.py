"""Tiny submodel files in the real on-disk formats, for the demo model (:mod:`workers.demo.model`).

Nothing is downloaded: every file is written from code, deterministic from its seed (values drawn from
numpy's legacy ``RandomState``, a frozen bit stream, seeded by (seed, tensor name)). The shapes fit the demo
checkpoint built by :func:`workers.demo.model.ensure_demo_model`: CLIP text encoder of width 32 with 2
layers (MLP width 64), a UNet whose four transformer blocks work at 64 channels with a cross-attention
context of width 32. The strengths are chosen so that each file visibly changes the demo model's images.

Formats written (the exact key layouts are listed in each function's docstring):

* :func:`write_demo_lora_kohya`: a kohya-ss / A1111 LoRA ``.safetensors`` (``lora_down``/``lora_up``/``alpha``).
* :func:`write_demo_lora_peft`: a diffusers/peft LoRA folder (``pytorch_lora_weights.safetensors``), written
  by diffusers' own ``save_lora_weights``.
* :func:`write_demo_embedding_a1111`: an A1111 textual-inversion ``.pt`` (``string_to_param``).
* :func:`write_demo_embedding_safetensors`: an A1111/kohya textual-inversion ``.safetensors`` (``emb_params``).
* :func:`write_demo_embedding_diffusers`: a diffusers ``learned_embeds.safetensors`` (``{token: tensor}``).
* :func:`write_demo_hypernetwork`: an A1111 hypernetwork ``.pt``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from safetensors.torch import save_file

from app.contract.limits import ModelType

#: Width of the demo text encoder (= the UNet's cross-attention context width).
TEXT_WIDTH = 32
#: Width of the demo CLIP MLP.
TEXT_MLP_WIDTH = 64
TEXT_LAYERS = 2
#: Channels of the demo UNet's transformer blocks.
UNET_ATTENTION_CHANNELS = 64
#: The demo UNet's Transformer2DModel blocks (diffusers module paths).
UNET_ATTENTION_BLOCKS = (
    "down_blocks.1.attentions.0",
    "mid_block.attentions.0",
    "up_blocks.0.attentions.0",
    "up_blocks.0.attentions.1",
)

DEMO_LORA_RANK = 4
DEMO_LORA_ALPHA = 2.0
PEFT_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _rng(seed: int, name: str) -> np.random.RandomState:
    return np.random.RandomState([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    values = _rng(seed, name).normal(0.0, std, shape)
    return torch.from_numpy(values.astype(np.float32))


def _lora_targets() -> list[tuple[str, str, int, int, bool]]:
    """``(component, module path, in_features, out_features, is_1x1_conv)`` of every layer kohya's LoRA
    trains on SD 1.x: in the UNet, every Linear / 1x1 Conv of the Transformer2DModel blocks; in CLIP, the
    attention projections and the MLP."""
    c, ctx = UNET_ATTENTION_CHANNELS, TEXT_WIDTH
    targets: list[tuple[str, str, int, int, bool]] = []
    for block in UNET_ATTENTION_BLOCKS:
        tb = f"{block}.transformer_blocks.0"
        targets += [
            ("unet", f"{block}.proj_in", c, c, True),
            ("unet", f"{tb}.attn1.to_q", c, c, False),
            ("unet", f"{tb}.attn1.to_k", c, c, False),
            ("unet", f"{tb}.attn1.to_v", c, c, False),
            ("unet", f"{tb}.attn1.to_out.0", c, c, False),
            ("unet", f"{tb}.attn2.to_q", c, c, False),
            ("unet", f"{tb}.attn2.to_k", ctx, c, False),
            ("unet", f"{tb}.attn2.to_v", ctx, c, False),
            ("unet", f"{tb}.attn2.to_out.0", c, c, False),
            ("unet", f"{tb}.ff.net.0.proj", c, 8 * c, False),  # GEGLU: twice the 4x inner width
            ("unet", f"{tb}.ff.net.2", 4 * c, c, False),
            ("unet", f"{block}.proj_out", c, c, True),
        ]
    w, m = TEXT_WIDTH, TEXT_MLP_WIDTH
    for layer in range(TEXT_LAYERS):
        base = f"text_model.encoder.layers.{layer}"
        targets += [
            ("text_encoder", f"{base}.self_attn.q_proj", w, w, False),
            ("text_encoder", f"{base}.self_attn.k_proj", w, w, False),
            ("text_encoder", f"{base}.self_attn.v_proj", w, w, False),
            ("text_encoder", f"{base}.self_attn.out_proj", w, w, False),
            ("text_encoder", f"{base}.mlp.fc1", w, m, False),
            ("text_encoder", f"{base}.mlp.fc2", m, w, False),
        ]
    return targets


def _lora_pair(seed: int, name: str, n_in: int, n_out: int, conv: bool, rank: int, alpha: float,
               strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) scaled so that ``up @ down * alpha / rank`` has entries of about
    ``strength / sqrt(in)``: the size of the layer's own weights, a change that shows."""
    down = _normal(seed, f"{name}.down", (rank, n_in), 1.0 / np.sqrt(n_in))
    up = _normal(seed, f"{name}.up", (n_out, rank), strength * rank / alpha / np.sqrt(rank))
    if conv:
        down, up = down[:, :, None, None], up[:, :, None, None]
    return down.contiguous(), up.contiguous()


def write_demo_lora_kohya(path: Path, seed: int, rank: int = DEMO_LORA_RANK, alpha: float = DEMO_LORA_ALPHA,
                          strength: float = 1.0) -> Path:
    """Write a kohya-ss / A1111 LoRA ``.safetensors`` for the demo model at ``path``; return ``path``.

    Keys (kohya names a layer by its module path with ``.`` replaced by ``_``, prefixed ``lora_unet_`` or
    ``lora_te_``), for each of the 48 UNet and 12 text-encoder layers of :func:`_lora_targets`::

        lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight  [rank, 32]
        lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight    [64, rank]
        lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha             [] (float32)
        lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight                          [rank, 64, 1, 1]
        lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight                            [64, rank, 1, 1]
        lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                  [rank, 32]
        lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight                             [64, rank]
        ...

    The effective update of a layer is ``up @ down * alpha / rank``. The safetensors header carries kohya's
    ``ss_*`` training metadata (strings), as sd-scripts writes it.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for component, module, n_in, n_out, conv in _lora_targets():
        prefix = "lora_unet_" if component == "unet" else "lora_te_"
        name = prefix + module.replace(".", "_")
        down, up = _lora_pair(seed, name, n_in, n_out, conv, rank, alpha, strength)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_output_name": path.stem,
        "ss_seed": str(seed),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_demo_lora_peft(directory: Path, seed: int, rank: int = DEMO_LORA_RANK, alpha: float = 8.0,
                         strength: float = 1.0) -> Path:
    """Write a diffusers/peft LoRA folder for the demo model; return the weights file's path.

    ``directory/pytorch_lora_weights.safetensors``, written by diffusers' own
    ``StableDiffusionLoraLoaderMixin.save_lora_weights``, the layout of diffusers' training scripts::

        unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight   [rank, 32]
        unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight   [64, rank]
        unet.down_blocks.1.attentions.0.proj_in.lora_A.weight                           [rank, 64, 1, 1]
        text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight         [rank, 32]
        ...

    plus the header entry ``lora_adapter_metadata``: JSON of each component's peft ``LoraConfig``
    (``unet.r``, ``unet.lora_alpha``, ``unet.target_modules``, ``text_encoder.r``, ...). ``alpha`` differs
    from ``rank`` on purpose (scale ``alpha / rank`` = 2 by default), so a loader that drops the metadata
    gives a visibly different image.
    """
    directory = Path(directory)
    layers: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text_encoder": {}}
    targets: dict[str, set[str]] = {"unet": set(), "text_encoder": set()}
    for component, module, n_in, n_out, conv in _lora_targets():
        down, up = _lora_pair(seed, f"{component}.{module}", n_in, n_out, conv, rank, alpha, strength)
        layers[component][f"{module}.lora_A.weight"] = down
        layers[component][f"{module}.lora_B.weight"] = up
        targets[component].add(module.rsplit(".", 1)[-1] if component == "text_encoder" else module)

    def config(component: str) -> dict:
        cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                         target_modules=sorted(targets[component])).to_dict()
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}

    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"],
        unet_lora_adapter_metadata=config("unet"),
        text_encoder_lora_adapter_metadata=config("text_encoder"),
        weight_name=PEFT_LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
    return directory / PEFT_LORA_WEIGHT_NAME


def _embedding_vectors(seed: int, n_vectors: int) -> torch.Tensor:
    # CLIP's token embeddings have std 0.02; these are far larger so that the change shows in a tiny model
    return _normal(seed, "embedding", (n_vectors, TEXT_WIDTH), 0.5)


def write_demo_embedding_a1111(path: Path, seed: int, n_vectors: int = 2, name: str | None = None) -> Path:
    """Write an A1111 textual-inversion ``.pt`` (a ``torch.save`` pickle) at ``path``; return ``path``::

        {"string_to_token": {"*": 265},
         "string_to_param": {"*": tensor[n_vectors, 32]},
         "name": <name, default the file stem>, "step": 0,
         "sd_checkpoint": None, "sd_checkpoint_name": None}
    """
    path = Path(path)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _embedding_vectors(seed, n_vectors)},
        "name": name or path.stem,
        "step": 0,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def write_demo_embedding_safetensors(path: Path, seed: int, n_vectors: int = 2) -> Path:
    """Write an A1111/kohya textual-inversion ``.safetensors`` at ``path``: ``{"emb_params": [n_vectors, 32]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": _embedding_vectors(seed, n_vectors)}, str(path))
    return path


def write_demo_embedding_diffusers(path: Path, seed: int, token: str = "<demo-style>", n_vectors: int = 1) -> Path:
    """Write a diffusers textual-inversion file, ``{token: tensor}``; return its path.

    ``path`` is the file (``.safetensors``, or ``.bin`` for a ``torch.save`` pickle) or a folder, which then
    receives ``learned_embeds.safetensors`` (the name diffusers' training script uses). A single vector is
    stored as shape ``[32]``, several as ``[n_vectors, 32]``, as diffusers' training script saves them.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".bin"):
        path = path / "learned_embeds.safetensors"
    vectors = _embedding_vectors(seed, n_vectors)
    data = {token: vectors[0].clone() if n_vectors == 1 else vectors}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".bin":
        torch.save(data, path)
    else:
        save_file(data, str(path))
    return path


def hypernetwork_module_keys(layer_structure: list[float], activation_func: str | None, is_layer_norm: bool,
                             dropout_structure: list[float], activate_output: bool) -> list[tuple[int, str]]:
    """``(index in the nn.Sequential, kind)`` of the layers A1111 builds for one hypernetwork module, kind in
    linear / activation / layer_norm / dropout. Per step i: Linear; the activation unless it is "linear" or
    None, or i is the last step and ``activate_output`` is off; LayerNorm if ``is_layer_norm``; Dropout if
    ``dropout_structure[i + 1] > 0``. Only linear and layer_norm entries have parameters."""
    layers: list[tuple[int, str]] = []
    steps = len(layer_structure) - 1
    for i in range(steps):
        layers.append((len(layers), "linear"))
        if not (activation_func in ("linear", None) or (i >= steps - 1 and not activate_output)):
            layers.append((len(layers), "activation"))
        if is_layer_norm:
            layers.append((len(layers), "layer_norm"))
        if dropout_structure[i + 1] > 0:
            layers.append((len(layers), "dropout"))
    return layers


def write_demo_hypernetwork(path: Path, seed: int, layer_norm: bool = False, activation_func: str = "relu",
                            use_dropout: bool = False, last_layer_dropout: bool = False,
                            widths: tuple[int, ...] = (TEXT_WIDTH,), strength: float = 1.0) -> Path:
    """Write an A1111 hypernetwork ``.pt`` (``torch.save`` pickle) at ``path``; return ``path``.

    Layer structure [1, 2, 1]. Top level, as A1111's ``Hypernetwork.save`` writes it::

        {32: (k_state_dict, v_state_dict),            # one pair per context width in ``widths``
         "step": 0, "name": <file stem>, "layer_structure": [1, 2, 1],
         "activation_func": "relu", "is_layer_norm": False, "weight_initialization": "Normal",
         "sd_checkpoint": None, "sd_checkpoint_name": None, "activate_output": False,
         "use_dropout": False, "dropout_structure": [0, 0, 0], "last_layer_dropout": False,
         "optional_info": None}

    Each state dict (an OrderedDict) holds the parameters of ``nn.Sequential`` ``linear``, e.g. for
    width 32, relu, no layer norm, no dropout::

        linear.0.weight [64, 32]  linear.0.bias [64]     (Linear 32 -> 64; linear.1 is the ReLU)
        linear.2.weight [32, 64]  linear.2.bias [32]     (Linear 64 -> 32, output not activated)

    with ``layer_norm=True``::

        linear.0 Linear 32->64, linear.1 ReLU, linear.2 LayerNorm(64), linear.3 Linear 64->32,
        linear.4 LayerNorm(32)  -> keys linear.{0,2,3,4}.{weight,bias}

    and with ``use_dropout=True, last_layer_dropout=True`` (dropout structure [0, 0.3, 0]) a Dropout follows
    the first step's layers, shifting the later indices by one.
    """
    path = Path(path)
    layer_structure = [1, 2, 1]
    if use_dropout:
        dropout_structure = [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]
    else:
        dropout_structure = [0] * len(layer_structure)
    activate_output = False
    layout = hypernetwork_module_keys(layer_structure, activation_func, layer_norm, dropout_structure,
                                      activate_output)
    data: dict = {}
    for width in widths:
        pair = []
        for part in ("k", "v"):
            state: OrderedDict[str, torch.Tensor] = OrderedDict()
            step = -1
            for index, kind in layout:
                if kind == "linear":
                    step += 1
                    n_in = int(width * layer_structure[step])
                    n_out = int(width * layer_structure[step + 1])
                    name = f"{width}.{part}.linear.{index}"
                    last = step == len(layer_structure) - 2
                    scale = (strength if last else 1.0) / np.sqrt(n_in)
                    state[f"linear.{index}.weight"] = _normal(seed, f"{name}.weight", (n_out, n_in), scale)
                    state[f"linear.{index}.bias"] = _normal(seed, f"{name}.bias", (n_out,), 0.1)
                elif kind == "layer_norm":
                    n = int(width * layer_structure[step + 1])
                    name = f"{width}.{part}.linear.{index}"
                    state[f"linear.{index}.weight"] = 1.0 + _normal(seed, f"{name}.weight", (n,), 0.1)
                    state[f"linear.{index}.bias"] = _normal(seed, f"{name}.bias", (n,), 0.1)
            pair.append(state)
        data[int(width)] = tuple(pair)
    data.update({
        "step": 0,
        "name": path.stem,
        "layer_structure": layer_structure,
        "activation_func": activation_func,
        "is_layer_norm": layer_norm,
        "weight_initialization": "Normal",
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": activate_output,
        "use_dropout": use_dropout,
        "dropout_structure": dropout_structure,
        "last_layer_dropout": dropout_structure[-2] != 0,
        "optional_info": None,
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


#: The demo submodels :func:`ensure_demo_submodels` writes: name -> (file or folder name, ModelType).
DEMO_SUBMODELS: dict[str, tuple[str, ModelType]] = {
    "lora-kohya": ("demo-lora-kohya.safetensors", ModelType.LORA),
    "lora-peft": ("demo-lora-peft", ModelType.LORA),
    "embedding": ("demo-embedding.pt", ModelType.EMBEDDING),
    "hypernetwork": ("demo-hypernetwork.pt", ModelType.HYPERNETWORK),
}


def ensure_demo_submodels(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write, once, one demo file of each kind under ``root`` (see :data:`DEMO_SUBMODELS`); return
    name -> path. Each is written under a temporary name and renamed into place, so concurrent callers and
    interrupted writes never leave a half-written file behind; existing files are kept."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    writers = {
        "lora-kohya": lambda p: write_demo_lora_kohya(p, seed + 1),
        "lora-peft": lambda p: write_demo_lora_peft(p, seed + 2),
        "embedding": lambda p: write_demo_embedding_a1111(p, seed + 3, n_vectors=2),
        "hypernetwork": lambda p: write_demo_hypernetwork(p, seed + 4, layer_norm=True),
    }
    paths = {}
    for name, (filename, _) in DEMO_SUBMODELS.items():
        dest = root / filename
        if not dest.exists():
            work = Path(tempfile.mkdtemp(prefix=f".{filename}.", dir=root))
            try:
                writers[name](work / filename)
                try:
                    os.rename(work / filename, dest)
                except OSError:
                    if not dest.exists():
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        paths[name] = dest
    return paths
