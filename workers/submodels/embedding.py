"""Textual-inversion embeddings in the formats A1111 and ComfyUI load, added to the tokenizer(s) and text
encoder(s) of a pipeline for one job and taken out again exactly.

Formats (:func:`read_embedding`):

* SD 1.x, one text encoder: A1111 ``.pt`` (``{"string_to_param": {"*": [n, width]}, "name": ...}``), A1111 /
  kohya ``.safetensors`` (``{"emb_params": [n, width]}``), diffusers ``learned_embeds.safetensors`` / ``.bin``
  (``{token: [width] or [n, width]}``), ComfyUI's ``{"clip_l": ...}`` and list of ``{name: tensor}`` dicts,
  a bare tensor. Read as a ``torch.Tensor`` ``[n, width]``.
* SDXL, two text encoders: A1111 / kohya ``{"clip_l": [n, width_1], "clip_g": [n, width_2]}`` (``.safetensors``
  or ``.pt``). Read as an :class:`SDXLEmbedding`; ``clip_l`` goes to ``text_encoder`` / ``tokenizer``,
  ``clip_g`` to ``text_encoder_2`` / ``tokenizer_2``.

An SD 1.x embedding on an SDXL model, an SDXL embedding on an SD 1.x model and vectors whose width fits no
text encoder are refused with a :class:`SubmodelError` saying so (A1111 skips such files, ComfyUI loads an SD
1.x file into SDXL's first encoder only: neither is what the model was trained for).

The math is A1111's and diffusers': the trigger word becomes ``n`` placeholder tokens ``token token_1 ...``
whose rows of the token-embedding matrix are the file's vectors; nothing else changes.

How it is done without a trace (diffusers 0.42, transformers 5). diffusers' ``load_textual_inversion`` is not
used: its ``resize_token_embeddings`` draws the new rows from the covariance of the whole vocabulary (about
30 GFLOP for SD 1.5, on the global RNG) only to overwrite them, it refuses a tokenizer shared by both SDXL
encoders (the second call finds the tokens already there), and ``unload_textual_inversion`` leaves the
multi-vector tokens and the grown ``vocab_size`` behind. Instead, for the ``with`` block:

* each tokenizer (once, when both SDXL encoders share one) works on a private copy of its Rust backend, to
  which the tokens are added; afterwards the original backend object is put back. The tokens match whole
  words only (``single_word``), as A1111's token-sequence match does: trigger "brand" leaves "brandy" alone;
* each text encoder gets a grown copy of its token-embedding module holding the vectors at the new ids;
  afterwards the original, never-modified module is put back, with the config and attributes as they were;
* the pipeline's ``maybe_convert_prompt`` is replaced by one expander for all embeddings of the job. CLIP's
  tokenizer lowercases the prompt before it matches added tokens, so the token is the trigger word as the
  tokenizer normalises it; diffusers' own conversion expands a multi-vector token with a case-sensitive,
  substring ``str.replace``, so "MyBrand" would get one vector of three. The expander rewrites each trigger
  word, in any case and as whole words, to ``token token_1 ...`` in one pass (so that one trigger word
  inside another's expansion is never expanded again), for both tokenizers of SDXL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer

from app.contract.limits import ModelType
from workers.submodels.files import FileFormatError, find_weights_file, read_weights
from workers.submodels.spec import Loaded, SubmodelError, SubmodelKind, SubModelSpec

DIFFUSERS_EMBEDDING_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
SDXL_KEYS = ("clip_l", "clip_g")  # text_encoder / tokenizer, text_encoder_2 / tokenizer_2


@dataclass(frozen=True)
class SDXLEmbedding:
    """An SDXL textual-inversion embedding: the same ``n`` placeholder tokens, with ``clip_l`` ``[n, width of
    text_encoder]`` for the first text encoder and ``clip_g`` ``[n, width of text_encoder_2]`` for the
    second; float32 on the CPU."""

    clip_l: torch.Tensor
    clip_g: torch.Tensor

    @property
    def n_vectors(self) -> int:
        return self.clip_l.shape[0]


Embedding = torch.Tensor | SDXLEmbedding


def read_embedding(path: Path) -> Embedding:
    """The vectors of a textual-inversion file: float32 ``[n_vectors, width]`` on the CPU for an SD 1.x file,
    an :class:`SDXLEmbedding` for an SDXL one (the formats: module docstring; a folder holding a diffusers
    ``learned_embeds.*`` is accepted). Raises :class:`FileFormatError`."""
    file = find_weights_file(path, DIFFUSERS_EMBEDDING_NAMES)
    content, _ = read_weights(file)
    if isinstance(content, dict) and all(key in content for key in SDXL_KEYS):
        clip_l, clip_g = (_matrix(content[key], f"{file.name} ({key})") for key in SDXL_KEYS)
        if clip_l.shape[0] != clip_g.shape[0]:
            raise FileFormatError(f"{file.name}: SDXL embedding has {clip_l.shape[0]} clip_l and {clip_g.shape[0]} "
                                  "clip_g vectors; they must be as many")
        return SDXLEmbedding(clip_l=clip_l, clip_g=clip_g)
    return _matrix(_vectors(content, file.name), file.name)


def _matrix(tensor: Any, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise FileFormatError(f"{name}: embedding is a {type(tensor).__name__}, not a tensor")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise FileFormatError(f"{name}: embedding has shape {tuple(tensor.shape)}, expected [n_vectors, width]")
    if not tensor.is_floating_point():
        raise FileFormatError(f"{name}: embedding holds {tensor.dtype} values, not floating-point vectors")
    tensor = tensor.detach().to(dtype=torch.float32, device="cpu").contiguous()
    if not torch.isfinite(tensor).all():
        raise FileFormatError(f"{name}: embedding holds NaN or infinite values")
    return tensor


def _vectors(content: Any, name: str) -> torch.Tensor:
    """The one tensor of an SD 1.x-format file."""
    if isinstance(content, torch.Tensor):
        return content
    if isinstance(content, list):  # ComfyUI: a list of {name: tensor} dicts, the vectors concatenated
        tensors = [t for item in content if isinstance(item, dict) for t in item.values()
                   if isinstance(t, torch.Tensor)]
        if not tensors or len({t.shape[-1] for t in tensors}) != 1:
            raise FileFormatError(f"{name} holds a list that is not a textual-inversion embedding")
        return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors])
    if not isinstance(content, dict):
        raise FileFormatError(f"{name} holds {type(content).__name__}, not a textual-inversion embedding")
    if "string_to_param" in content:  # A1111
        params = content["string_to_param"]
        params = getattr(params, "_parameters", params)  # torch 1.11 saved a ParameterDict
        if not isinstance(params, dict) or len(params) != 1:
            raise FileFormatError(f"{name}: A1111 embedding must hold exactly one term in string_to_param")
        return next(iter(params.values()))
    if "emb_params" in content:  # A1111 / kohya safetensors
        return content["emb_params"]
    if "clip_l" in content:  # ComfyUI reads an SD 1.x embedding from this key when it is there
        return content["clip_l"]
    if "clip_g" in content:
        raise FileFormatError(f"{name} holds clip_g vectors without clip_l: not a complete SDXL embedding")
    if len(content) == 1:  # diffusers: {token: tensor}
        return next(iter(content.values()))
    keys = ", ".join(sorted(map(str, content))[:3])
    raise FileFormatError(f"{name} is not a textual-inversion embedding (keys: {keys}; a LoRA or "
                          "hypernetwork file?)")


def embedding_token(tokenizer, trigger_word: str) -> str:
    """The token an embedding is registered under: the trigger word as the tokenizer's normaliser writes it
    (lowercase for CLIP), so that it matches the prompt in any case."""
    word = " ".join(trigger_word.split())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if backend is not None else None
    if normalizer is not None:
        word = normalizer.normalize_str(word)
    elif getattr(tokenizer, "do_lower_case", False):
        word = word.lower()
    return word.strip()


def _grown_embedding(old: torch.nn.Embedding, rows: int) -> torch.nn.Embedding:
    """A new embedding module with ``rows`` rows: the old rows copied, zeros after (overwritten next)."""
    weight = torch.zeros(rows, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
    keep = min(rows, old.num_embeddings)
    weight[:keep] = old.weight.data[:keep]
    new = torch.nn.Embedding(rows, old.embedding_dim, padding_idx=old.padding_idx, _weight=weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    new.train(old.training)
    return new


class _PromptExpander:
    """The pipeline's ``maybe_convert_prompt`` while embeddings are applied: every trigger word, in any case
    and spacing, as whole words, becomes ``token token_1 ... token_<n-1>``, all trigger words in one pass
    (the longest first where they overlap)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[str, str]] = {}  # key -> (trigger word, expansion)
        self._pattern: re.Pattern[str] | None = None
        self._expansions: list[str] = []

    def add(self, key: int, trigger_word: str, expansion: str) -> None:
        self._entries[key] = (trigger_word, expansion)
        self._pattern = None

    def remove(self, key: int) -> None:
        self._entries.pop(key, None)
        self._pattern = None

    def _compile(self) -> re.Pattern[str]:
        if self._pattern is None:
            entries = sorted(self._entries.values(), key=lambda e: -len(" ".join(e[0].split())))
            alternatives = [r"\s+".join(re.escape(w) for w in word.split()) for word, _ in entries]
            self._expansions = [expansion for _, expansion in entries]
            self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(f"({a})" for a in alternatives) + r")(?!\w)",
                                       flags=re.IGNORECASE)
        return self._pattern

    def expand(self, prompt: str) -> str:
        pattern = self._compile()
        return pattern.sub(lambda m: self._expansions[m.lastindex - 1], prompt)

    def __call__(self, prompt, tokenizer=None):
        if isinstance(prompt, list):
            return [self.expand(p) if isinstance(p, str) else p for p in prompt]
        return self.expand(prompt) if isinstance(prompt, str) else prompt


def _encoders(pipe) -> list[tuple[Any, torch.nn.Module, str | None]]:
    """``(tokenizer, text encoder, SDXL key)`` of each text encoder of ``pipe``; the key is None for SD 1.x."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return [(pipe.tokenizer, pipe.text_encoder, None)]
    pairs = [(pipe.tokenizer, pipe.text_encoder, "clip_l")] if getattr(pipe, "text_encoder", None) is not None else []
    return pairs + [(pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")]


def _width(text_encoder) -> int:
    return text_encoder.get_input_embeddings().embedding_dim


def _targets(pipe, model_code: str, vectors: Embedding) -> list[tuple[Any, torch.nn.Module, torch.Tensor]]:
    """``(tokenizer, text encoder, vectors [n, width])`` for each text encoder of ``pipe``; a
    :class:`SubmodelError` when the embedding was made for another kind of model."""
    encoders = _encoders(pipe)
    widths = ("widths " if len(encoders) > 1 else "width ") + ", ".join(str(_width(te)) for _, te, _ in encoders)
    another = "an embedding made for another base model"
    if isinstance(vectors, SDXLEmbedding):
        if encoders[0][2] is None:
            raise SubmodelError(model_code, "an SDXL embedding (clip_l and clip_g vectors); this model is SD 1.x, "
                                            "which needs an SD 1.x embedding")
        chosen = [(tok, te, getattr(vectors, key)) for tok, te, key in encoders]
        if any(v.shape[1] != _width(te) for _, te, v in chosen):
            raise SubmodelError(model_code, f"SDXL embedding widths (clip_l {vectors.clip_l.shape[1]}, clip_g "
                                            f"{vectors.clip_g.shape[1]}) fit no text encoder of this model "
                                            f"({widths}): {another}")
        return chosen
    if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2:
        raise SubmodelError(model_code, f"not a textual-inversion embedding ({type(vectors).__name__})")
    width = vectors.shape[1]
    if width not in {_width(te) for _, te, _ in encoders}:
        raise SubmodelError(model_code, f"embedding width {width} fits no text encoder of this model "
                                        f"({widths}): {another}")
    if encoders[0][2] is not None:
        raise SubmodelError(model_code, "an SD 1.x embedding; this model is SDXL, which needs an SDXL embedding "
                                        "(clip_l and clip_g vectors)")
    tokenizer, text_encoder, _ = encoders[0]
    return [(tokenizer, text_encoder, vectors)]


def _attrs(module: torch.nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}


@contextmanager
def textual_inversion(pipe, model_code: str, trigger_word: str, vectors: Embedding) -> Iterator[str]:
    """Add the embedding ``vectors`` (a tensor ``[n, width]`` for SD 1.x, an :class:`SDXLEmbedding` for SDXL)
    under ``trigger_word`` for the ``with`` block; yield the registered token. On exit, also on error, the
    tokenizer(s) and text encoder(s) are exactly the base again."""
    targets = _targets(pipe, model_code, vectors)
    token = embedding_token(targets[0][0], trigger_word)
    if not token:
        raise SubmodelError(model_code, "an embedding needs a trigger word (its TriggerWordList is empty)")
    n_vectors = targets[0][2].shape[0]
    names = [token] + [f"{token}_{i}" for i in range(1, n_vectors)]

    tokenizers = list({id(tok): tok for tok, _, _ in targets}.values())  # SDXL's two may be one object
    for tokenizer in tokenizers:
        backend = getattr(tokenizer, "_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise SubmodelError(model_code, f"tokenizer {type(tokenizer).__name__} has no tokenizers backend; "
                                            "embeddings need a fast tokenizer")
        vocabulary = tokenizer.get_vocab()
        if any(name in vocabulary for name in names):
            raise SubmodelError(model_code, f"trigger word {trigger_word!r} (token {token!r}) is already a token of "
                                            "this model's vocabulary or of another embedding of this job; choose "
                                            "another trigger word")

    saved_backends = [(tok, tok._tokenizer) for tok in tokenizers]
    saved_encoders = [(te, te.get_input_embeddings(), _attrs(te), te.config.get_text_config(),
                       te.config.get_text_config().vocab_size) for _, te, _ in targets]
    pipe_dict = vars(pipe)
    saved_converter = pipe_dict.get("maybe_convert_prompt", _MISSING)
    key = id(names)  # unique while this block runs
    expander: _PromptExpander | None = None
    try:
        ids: dict[int, list[int]] = {}
        for tokenizer, backend in saved_backends:
            tokenizer._tokenizer = Tokenizer.from_str(backend.to_str())  # the job's private copy
            tokenizer.add_tokens([AddedToken(name, single_word=True, normalized=True) for name in names])
            ids[id(tokenizer)] = tokenizer.convert_tokens_to_ids(names)
            if len(set(ids[id(tokenizer)])) != n_vectors or min(ids[id(tokenizer)]) < backend.get_vocab_size():
                raise RuntimeError(f"tokenizer gave the tokens of {token!r} the ids {ids[id(tokenizer)]}")
        for tokenizer, text_encoder, rows in targets:
            old = text_encoder.get_input_embeddings()
            token_ids = ids[id(tokenizer)]
            grown = _grown_embedding(old, max(old.num_embeddings, len(tokenizer), max(token_ids) + 1))
            grown.weight.data[token_ids] = rows.to(dtype=grown.weight.dtype, device=grown.weight.device)
            text_encoder.set_input_embeddings(grown)
            text_encoder.config.get_text_config().vocab_size = grown.num_embeddings
        expander = saved_converter if isinstance(saved_converter, _PromptExpander) else _PromptExpander()
        expander.add(key, trigger_word, " ".join(names))
        object.__setattr__(pipe, "maybe_convert_prompt", expander)
        yield token
    finally:
        if expander is not None:
            expander.remove(key)
        if saved_converter is _MISSING:
            pipe_dict.pop("maybe_convert_prompt", None)
        else:
            pipe_dict["maybe_convert_prompt"] = saved_converter
        for tokenizer, backend in saved_backends:
            tokenizer._tokenizer = backend
        for text_encoder, embedding, attrs, text_config, vocab_size in reversed(saved_encoders):
            text_encoder.set_input_embeddings(embedding)
            text_config.vocab_size = vocab_size
            for name in [k for k in _attrs(text_encoder) if k not in attrs]:
                delattr(text_encoder, name)
            for name, value in attrs.items():
                if vars(text_encoder).get(name, _MISSING) is not value:
                    object.__setattr__(text_encoder, name, value)
        if any(tok._tokenizer is not backend for tok, backend in saved_backends) or any(
                te.get_input_embeddings() is not embedding for te, embedding, *_ in saved_encoders):
            raise RuntimeError("textual inversion could not be removed; the pipeline is not the base any more")


_MISSING = object()


# --------------------------------------------------------------------------------------- the kind

def _trigger(spec: SubModelSpec) -> str | None:
    """An embedding's token: its first non-blank trigger word."""
    return next((w for w in spec.trigger_words if w.strip()), None)


def _check_trigger(spec: SubModelSpec, weight: float) -> None:
    if _trigger(spec) is None:
        raise SubmodelError(spec.model_code, "an embedding needs a trigger word (its TriggerWordList is empty)")


@contextmanager
def _applied(pipe: Any, items: list[Loaded], **_options: Any) -> Iterator[None]:
    """A job's embeddings, each under its first trigger word, in the job's order (undone in reverse)."""
    with ExitStack() as stack:
        for item in items:
            stack.enter_context(textual_inversion(pipe, item.spec.model_code, _trigger(item.spec), item.data))
        yield


#: Textual-inversion embeddings: added to the tokenizer(s) and text encoder(s) after the LoRAs.
EMBEDDING = SubmodelKind(ModelType.EMBEDDING, read=read_embedding, apply=_applied, order=20,
                         preferred_names=DIFFUSERS_EMBEDDING_NAMES, check=_check_trigger)
