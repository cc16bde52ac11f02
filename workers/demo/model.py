"""Tiny Stable Diffusion checkpoints, built from code, for demos and tests.

Nothing is downloaded. :func:`ensure_demo_model` writes a real diffusers folder (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; safetensors weights, about 4 MB)
that ``AutoPipelineForInpainting.from_pretrained`` loads like any downloaded checkpoint, so the service's
real loading and inference code runs on it on a CPU in well under a second per image.

Shapes follow Stable Diffusion 1.5 where it matters to the code around the model: a VAE with 4 resolution
levels (``vae_scale_factor`` 8, so sizes must be multiples of 8), 4 latent channels, a 9-channel
inpainting UNet (:func:`ensure_demo_model`) or a plain 4-channel one (:func:`ensure_demo_model_sd15`),
CLIP text encoder and byte-level BPE tokenizer with ``model_max_length`` 77, DDIM scheduler with SD 1.5's
betas. Everything else is as small as the classes allow.

The text encoder and the UNet have random weights: what the UNet draws is noise-like, it is a plumbing
model, not an image model. The VAE, however, really reconstructs (:func:`build_demo_vae`): a diffusers
``AutoencoderTiny`` (the TAESD architecture) whose weights are set by construction so that
``decode(encode(x))`` is ``x`` averaged over 8x8 blocks. So whatever the pipeline keeps in latent space
(an image-to-image reference, the kept region of a 4-channel model) comes back out as that picture, and
image-level properties of the service can be tested on this model.

Weights are deterministic from the seed and independent of the machine and of torch's initialisers: each
random parameter is drawn from numpy's legacy ``RandomState`` (a frozen bit stream) seeded by (seed,
parameter name), and the constructed ones are exact constants, so two builds with the same seed write
byte-identical safetensors.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderTiny,
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from workers.demo.publish import ensure_folder

#: Written into every demo folder; records what was built so a folder is never reused for another build.
MARKER_FILE = "atelier_demo_model.json"

#: Version of what a demo folder contains, recorded in its marker. Bump it whenever a build changes what it
#: writes: a folder of the same kind and seed with an older build is then rebuilt and replaced (atomically)
#: instead of being refused. Build 1 (no ``build`` key in the marker) had a random ``AutoencoderKL``;
#: build 2 has the reconstructing ``AutoencoderTiny``.
DEMO_BUILD = 2

#: ``scaling_factor`` of the demo VAE: its raw latents lie in [-0.5, 0.5] (far inside the decoder's
#: ``tanh`` clamp, so the decoder stays near-linear); the pipeline works on them times 2, in [-1, 1], the
#: range of Stable Diffusion's scaled latents.
DEMO_VAE_SCALING_FACTOR = 2.0

#: Channels of every demo VAE level: R, G, B and luminance (ITU-R 601-2, :data:`LUMA`).
DEMO_VAE_CHANNELS = 4
LUMA = (0.299, 0.587, 0.114)

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


def build_tokenizer(workdir: Path) -> CLIPTokenizer:
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


def _decoder_gain(half_range: float = 0.5) -> float:
    """Least-squares gain g with g * 3 tanh(z / 3) ~= z on [-half_range, half_range].

    ``DecoderTiny`` starts with a soft clamp, ``3 tanh(x / 3)``; at |z| <= 0.5 it is within 0.5% of the
    identity, and scaling by g brings the worst error below half a grey level.
    """
    z = np.linspace(-half_range, half_range, 2001)
    clamped = 3.0 * np.tanh(z / 3.0)
    return float(z @ clamped / (clamped @ clamped))


def _set_reconstruction_weights(vae: AutoencoderTiny, tint: Sequence[float]) -> None:
    """Set the weights of a (4, 4, 4, 4)-channel ``AutoencoderTiny`` so that it reconstructs its input.

    Encoder (input mapped to [0, 1] by ``EncoderTiny`` itself): the first conv copies R, G, B into channels
    0-2 and puts the luminance into channel 3; every ``AutoencoderTinyBlock`` is the identity (its last
    conv is zero, the skip is the identity, and the ReLU that fuses them keeps the non-negative values);
    every stride-2 conv averages 2x2 pixels per channel; the last conv subtracts 0.5: the raw latents are
    the 8x8 block means of (R, G, B, Y) - 0.5, in [-0.5, 0.5].

    Decoder: after its ``3 tanh(x / 3)`` clamp, the first conv maps each latent back with the gain of
    :func:`_decoder_gain` and adds 0.5 (then a ReLU: negative values are cut, as the image would clip them
    anyway); blocks are identities, upsampling is nearest, the convs after it are identities, and the last
    conv returns R, G, B times ``tint`` in [0, 1], which ``DecoderTiny`` maps to [-1, 1] itself.

    The first two convs of each block keep their (seeded) random weights: with the last conv zero they do
    not change the output, and they make the weights depend on the seed like those of the other models.
    """
    encoder = list(vae.encoder.layers)
    decoder = list(vae.decoder.layers)
    gain = _decoder_gain()

    def centre(conv: torch.nn.Conv2d, matrix: np.ndarray, bias: Sequence[float] | None = None) -> None:
        weight = np.zeros(tuple(conv.weight.shape), dtype=np.float32)
        weight[:, :, 1, 1] = matrix
        conv.weight.copy_(torch.from_numpy(weight))
        if conv.bias is not None:
            values = np.zeros(conv.out_channels, dtype=np.float32) if bias is None else np.asarray(bias, np.float32)
            conv.bias.copy_(torch.from_numpy(values))

    with torch.no_grad():
        rgb_to_features = np.zeros((DEMO_VAE_CHANNELS, 3))
        rgb_to_features[:3] = np.eye(3)
        rgb_to_features[3] = LUMA
        centre(encoder[0], rgb_to_features)
        centre(encoder[-1], np.eye(DEMO_VAE_CHANNELS), [-0.5] * DEMO_VAE_CHANNELS)
        for layer in encoder[1:-1]:
            if isinstance(layer, torch.nn.Conv2d):  # stride 2: out(i, j) sees in(2i-1..2i+1, 2j-1..2j+1)
                weight = np.zeros(tuple(layer.weight.shape), dtype=np.float32)
                for channel in range(DEMO_VAE_CHANNELS):
                    weight[channel, channel, 1:3, 1:3] = 0.25  # taps on in(2i..2i+1, 2j..2j+1)
                layer.weight.copy_(torch.from_numpy(weight))

        centre(decoder[0], gain * np.eye(DEMO_VAE_CHANNELS), [0.5] * DEMO_VAE_CHANNELS)
        features_to_rgb = np.zeros((3, DEMO_VAE_CHANNELS))
        features_to_rgb[:, :3] = np.diag(np.asarray(tint, dtype=np.float64))
        centre(decoder[-1], features_to_rgb)
        for layer in decoder[1:-1]:
            if isinstance(layer, torch.nn.Conv2d):
                centre(layer, np.eye(DEMO_VAE_CHANNELS))

        for block in (*encoder, *decoder):
            if isinstance(block, AutoencoderTinyBlock):
                if not isinstance(block.skip, torch.nn.Identity):
                    raise RuntimeError("demo VAE blocks must have an identity skip")
                last = block.conv[-1]
                last.weight.zero_()
                last.bias.zero_()


def _normalise_tint(tint: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(value) for value in tint)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) < 0:
        raise ValueError(f"tint must be three finite non-negative numbers, got {tint!r}")
    return values  # type: ignore[return-value]


def build_demo_vae(seed: int, tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> AutoencoderTiny:
    """A tiny ``AutoencoderTiny`` (TAESD architecture, 4 levels, scale factor 8, 4 latent channels) that
    reconstructs images: ``decode(encode(x))`` is ``x`` averaged over 8x8 blocks (nearest upsampling), to
    within half a grey level, each of R, G, B multiplied by ``tint`` (a test can see which VAE decoded).

    Latents: the block means of (R, G, B, luminance) in [0, 1], minus 0.5; ``scaling_factor`` is
    :data:`DEMO_VAE_SCALING_FACTOR`. See :func:`_set_reconstruction_weights` for the construction.
    ``seed`` only changes weights that do not affect the output.
    """
    tint = _normalise_tint(tint)
    vae = AutoencoderTiny(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(DEMO_VAE_CHANNELS,) * 4,
        decoder_block_out_channels=(DEMO_VAE_CHANNELS,) * 4,
        latent_channels=DEMO_VAE_CHANNELS,
        act_fn="relu",
        upsample_fn="nearest",
        scaling_factor=DEMO_VAE_SCALING_FACTOR,
    )
    _seed_parameters(vae, seed)
    _set_reconstruction_weights(vae, tint)
    return vae.eval()


def _build_pipeline(
    workdir: Path, seed: int, in_channels: int
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    """The tiny pipeline: inpainting (9 input channels) or plain text-to-image (4)."""
    tokenizer = build_tokenizer(workdir / "tokenizer-source")
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
    vae = build_demo_vae(seed * 3 + 2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for index, model in enumerate((text_encoder, unet)):
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


def _ensure(dest: Path, marker: dict, write: Callable[[Path, Path], None]) -> Path:
    """Make ``dest`` hold the build described by ``marker`` (this module's :data:`DEMO_BUILD`);
    ``write(folder, workdir)`` saves it to ``folder``. See :func:`workers.demo.publish.ensure_folder`."""
    return ensure_folder(dest, {**marker, "build": DEMO_BUILD}, write, marker_file=MARKER_FILE)


def _ensure_pipeline(dest: Path, seed: int, in_channels: int) -> Path:
    def write(folder: Path, workdir: Path) -> None:
        _build_pipeline(workdir, seed, in_channels).save_pretrained(folder, safe_serialization=True)

    return _ensure(dest, {"kind": "atelier-demo", "unet_in_channels": in_channels, "seed": seed}, write)


def ensure_demo_model(dest: Path, seed: int = 0) -> Path:
    """Build, once, a tiny ``StableDiffusionInpaintPipeline`` folder (9-channel UNet) at ``dest``.

    Idempotent and safe when several processes call it at once: the folder is built in a temporary
    directory next to ``dest`` and published by an atomic rename; a loser of the race discards its build
    and returns the winner's. A folder holding the same demo model (kind and seed) from an older build
    (:data:`DEMO_BUILD`) is rebuilt and replaced atomically. Returns ``dest``. Raises ``ValueError`` when
    ``dest`` already holds a demo model of another kind or seed (or of a newer build), ``FileExistsError``
    when it holds anything else.
    """
    return _ensure_pipeline(dest, seed, in_channels=9)


def ensure_demo_model_sd15(dest: Path, seed: int = 0) -> Path:
    """Like :func:`ensure_demo_model`, but a plain text-to-image checkpoint (``StableDiffusionPipeline``,
    4-channel UNet), the shape of SD 1.5 base models, which the service inpaints by latent blending."""
    return _ensure_pipeline(dest, seed, in_channels=4)


def ensure_demo_vae(
    dest: Path, tint: tuple[float, float, float] = (1.0, 1.0, 1.0), seed: int = 0
) -> Path:
    """Build, once, a standalone VAE folder (``config.json`` + safetensors, ``AutoencoderTiny.save_pretrained``)
    of :func:`build_demo_vae` at ``dest``: an "external VAE" for the demo family. Same guarantees and errors
    as :func:`ensure_demo_model`; a folder with another ``tint`` or ``seed`` is refused. Load it with
    ``AutoencoderTiny.from_pretrained(dest)``."""
    tint = _normalise_tint(tint)

    def write(folder: Path, workdir: Path) -> None:
        build_demo_vae(seed, tint).save_pretrained(folder, safe_serialization=True)

    return _ensure(dest, {"kind": "atelier-demo-vae", "seed": seed, "tint": list(tint)}, write)
