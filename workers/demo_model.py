"""Tiny random-weight Stable Diffusion checkpoints, built from code, for demos and tests.

Nothing is downloaded. :func:`ensure_demo_model` writes a real diffusers folder (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; safetensors weights, about 4.5 MB)
that ``AutoPipelineForInpainting.from_pretrained`` loads like any downloaded checkpoint, so the service's
real loading and inference code runs on it on a CPU in well under a second per image.

Shapes follow Stable Diffusion 1.5 where it matters to the code around the model: a VAE with 4 resolution
levels (``vae_scale_factor`` 8, so sizes must be multiples of 8), 4 latent channels, a 9-channel
inpainting UNet (:func:`ensure_demo_model`) or a plain 4-channel one (:func:`ensure_demo_model_sd15`),
CLIP text encoder and byte-level BPE tokenizer with ``model_max_length`` 77, DDIM scheduler with SD 1.5's
betas. Everything else is as small as the classes allow.

Weights are deterministic from the seed and independent of the machine and of torch's initialisers: each
parameter is drawn from numpy's legacy ``RandomState`` (a frozen bit stream) seeded by (seed, parameter
name), so two builds with the same seed write byte-identical safetensors.

The images such a model produces are noise-like: it is a plumbing model, not an image model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

#: Written into every demo folder; records what was built so a folder is never reused for another build.
MARKER_FILE = "atelier_demo_model.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
VOCAB_SIZE = 1000

# Text the tokenizer's BPE merges are learnt from: the words prompts for this service are made of.
_MERGE_CORPUS = """
a photo of a young woman wearing the dress standing in a bright studio with soft natural light
a professional fashion photograph of a man wearing a jacket and trousers on a city street at sunset
full body portrait of a model with long brown hair and a friendly smile looking at the camera
realistic skin detailed face beautiful eyes sharp focus high quality best quality masterpiece
an elegant evening gown made of silk and lace with a white collar and black buttons
casual summer outfit with cotton shirt denim jeans leather shoes and a straw hat on the beach
winter coat wool scarf knitted sweater gloves boots walking through the snow in the park
blurry low quality worst quality deformed hands extra fingers bad anatomy watermark text
outdoor catalogue picture for an online clothing store with a clean grey background
she is posing next to the window of a modern apartment while the morning sun is shining
the athletic man is running along the river in sports wear with a hooded top and shorts
striped blouse pleated skirt floral print pattern velvet satin linen polyester fabric texture
red orange yellow green blue purple pink brown black white grey beige navy gold silver colour
tall slim curvy petite asian african european latin middle eastern people of every age
editorial lookbook magazine cover shot by a famous photographer with cinematic lighting
"""
_MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _learn_merges(text: str, count: int) -> list[tuple[str, str]]:
    """Learn up to ``count`` BPE merges from ``text`` the way CLIP splits words (last symbol ends in
    ``</w>``). Ties are broken by the pair itself, so the result is deterministic."""
    words = Counter(text.lower().split())
    splits = {word: tuple(word[:-1]) + (word[-1] + "</w>",) for word in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = tuple(merged)
    return merges


def _build_tokenizer(workdir: Path) -> CLIPTokenizer:
    """Write a byte-level BPE ``vocab.json`` + ``merges.txt`` and load them the way checkpoints are loaded.

    ``CLIPTokenizer(vocab_file, merges_file)`` must not be used: in transformers 5 its first arguments are
    the vocab *dict* and merges *list*, and file paths silently give a 2-token tokenizer.
    """
    byte_chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(_MERGE_CORPUS, _MERGE_COUNT)
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("demo tokenizer vocabulary has duplicate tokens")
    workdir.mkdir(parents=True)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (workdir / "merges.txt").write_text(merges_text, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(
        workdir, model_max_length=MODEL_MAX_LENGTH, pad_token=EOS_TOKEN
    )
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"demo tokenizer loaded with {len(tokenizer)} tokens instead of {len(vocab)}")
    return tokenizer


def _seed_parameters(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter with values drawn from (seed, parameter name), independent of torch's RNG.

    Linear/conv weights and biases: uniform(-1/sqrt(fan_in), +1/sqrt(fan_in)) (torch's default scale);
    embeddings: normal(0, 0.02) (CLIP's); normalisation layers: weight 1, bias 0.
    """
    initialised: set[str] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                rng = np.random.RandomState([seed, zlib.crc32(full_name.encode())])
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    fan_in = module.weight[0].numel()
                    values = rng.uniform(-1, 1, tuple(param.shape)) / np.sqrt(fan_in)
                elif isinstance(module, torch.nn.Embedding):
                    values = rng.normal(0.0, 0.02, tuple(param.shape))
                elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    values = np.ones(tuple(param.shape)) if param_name == "weight" else np.zeros(tuple(param.shape))
                else:
                    raise TypeError(f"no deterministic initialiser for {full_name} ({type(module).__name__})")
                param.copy_(torch.from_numpy(values.astype(np.float32)))
                initialised.add(full_name)
    missing = {name for name, _ in model.named_parameters()} - initialised
    if missing:
        raise RuntimeError(f"parameters left uninitialised: {sorted(missing)[:5]}")


def _build_pipeline(
    workdir: Path, seed: int, in_channels: int
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """The tiny pipeline: inpainting (9 input channels) or plain text-to-image (4)."""
    tokenizer = _build_tokenizer(workdir / "tokenizer-source")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        sample_size=256,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for index, model in enumerate((text_encoder, unet, vae)):
        _seed_parameters(model, seed * 3 + index)
    pipeline_class = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _ensure(dest: Path, seed: int, in_channels: int) -> Path:
    dest = Path(dest)
    marker = {"kind": "atelier-demo", "unet_in_channels": in_channels, "seed": seed}
    marker_path = dest / MARKER_FILE

    def existing() -> bool:
        if not marker_path.is_file():
            return False
        found = json.loads(marker_path.read_text())
        if found != marker:
            raise ValueError(f"{dest} holds a different demo model ({found}), not {marker}")
        return True

    if existing():
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not a demo model folder; refusing to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    build_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        pipe = _build_pipeline(build_root / "work", seed, in_channels)
        folder = build_root / "model"
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        for path in folder.rglob("*"):
            # diffusers writes weight files 0600; let a worker running as another user read the folder too
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            # Atomic publish: rename() onto a missing (or empty) directory. When another process won the
            # race, the rename fails (the destination is not empty) and its finished folder is used.
            os.rename(folder, dest)
        except OSError:
            if not existing():
                raise
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    return dest


def ensure_demo_model(dest: Path, seed: int = 0) -> Path:
    """Build, once, a tiny random-weight ``StableDiffusionInpaintPipeline`` folder (9-channel UNet) at ``dest``.

    Idempotent and safe when several processes call it at once: the folder is built in a temporary
    directory next to ``dest`` and published by an atomic rename; a loser of the race discards its build
    and returns the winner's. Returns ``dest``. Raises ``ValueError`` when ``dest`` already holds a demo
    model of another kind or seed, ``FileExistsError`` when it holds anything else.
    """
    return _ensure(dest, seed, in_channels=9)


def ensure_demo_model_sd15(dest: Path, seed: int = 0) -> Path:
    """Like :func:`ensure_demo_model`, but a plain text-to-image checkpoint (``StableDiffusionPipeline``,
    4-channel UNet), the shape of SD 1.5 base models, which the service inpaints by latent blending."""
    return _ensure(dest, seed, in_channels=4)
