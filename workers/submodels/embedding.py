"""Textual-inversion embeddings: A1111 ``.pt`` / ``.safetensors`` and diffusers files, added to the tokenizer
and text encoder for one job with ``load_textual_inversion`` and taken out again exactly.

Traps handled here (diffusers 0.42, transformers 5):

* ``unload_textual_inversion(token)`` leaves a multi-vector embedding's ``token_1 .. token_n`` behind, keeps
  the text encoder's ``config.vocab_size`` (and ``vocab_size`` attribute) at the grown size, and builds a
  new ``nn.Embedding`` whose weight is a view into the grown matrix. It is not used. Instead the tokenizer
  works on a private copy of its Rust backend during the job, and the text encoder gets a grown copy of
  its token-embedding module; afterwards the original backend object and the original, never-modified
  embedding module are put back, with the config and attributes as they were. Exact by construction.
* ``resize_token_embeddings`` initialises new rows from the covariance of the whole vocabulary (about
  30 GFLOP for SD 1.5, drawing on the global RNG) only for diffusers to overwrite them. The matrix is grown
  here first, so that resize is a no-op.
* CLIP's tokenizer lowercases the prompt before it matches added tokens, so a token spelled with capitals
  would never match: the token is the trigger word as the tokenizer normalises it. But diffusers expands a
  multi-vector token in the raw prompt with a case-sensitive ``str.replace``, so "MyBrand" would get one
  vector of three. For multi-vector embeddings the pipeline's ``maybe_convert_prompt`` is wrapped for the
  job: it first rewrites the trigger word, in any case, to the registered spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from workers.submodels.files import FileFormatError, find_weights_file, read_weights
from workers.submodels.spec import SubmodelError

DIFFUSERS_EMBEDDING_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")


def read_embedding(path: Path) -> torch.Tensor:
    """The vectors of a textual-inversion file, float32 ``[n_vectors, width]`` on the CPU.

    Formats: A1111 ``.pt`` (``{"string_to_param": {"*": tensor}, "name": ..., ...}``), A1111/kohya
    ``.safetensors`` (``{"emb_params": tensor}``), diffusers ``learned_embeds.safetensors`` / ``.bin``
    (``{token: tensor}``; a folder holding one is accepted), a bare tensor.
    """
    file = find_weights_file(path, DIFFUSERS_EMBEDDING_NAMES)
    content, _ = read_weights(file)
    vectors = _vectors(content, file.name)
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise FileFormatError(f"{file.name}: embedding has shape {tuple(vectors.shape)}, expected [n_vectors, width]")
    vectors = vectors.detach().to(dtype=torch.float32, device="cpu").contiguous()
    if not torch.isfinite(vectors).all():
        raise FileFormatError(f"{file.name}: embedding holds NaN or infinite values")
    return vectors


def _vectors(content: Any, name: str) -> torch.Tensor:
    if isinstance(content, torch.Tensor):
        return content
    if not isinstance(content, dict):
        raise FileFormatError(f"{name} holds {type(content).__name__}, not a textual-inversion embedding")
    if "string_to_param" in content:  # A1111
        params = content["string_to_param"]
        params = getattr(params, "_parameters", params)  # torch 1.11 saved a ParameterDict
        if not isinstance(params, dict) or len(params) != 1:
            raise FileFormatError(f"{name}: A1111 embedding must hold exactly one term in string_to_param")
        tensor = next(iter(params.values()))
    elif "emb_params" in content:  # A1111 / kohya safetensors
        tensor = content["emb_params"]
    elif "clip_l" in content and "clip_g" in content:
        raise FileFormatError(f"{name} is an SDXL embedding (clip_l/clip_g); this service's base models are SD 1.x")
    elif len(content) == 1:  # diffusers: {token: tensor}
        tensor = next(iter(content.values()))
    else:
        keys = ", ".join(sorted(map(str, content))[:3])
        raise FileFormatError(f"{name} is not a textual-inversion embedding (keys: {keys}; a LoRA or "
                              "hypernetwork file?)")
    if not isinstance(tensor, torch.Tensor):
        raise FileFormatError(f"{name}: embedding is a {type(tensor).__name__}, not a tensor")
    return tensor


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


def _expanding_prompt_converter(previous, token: str, trigger_word: str):
    """``maybe_convert_prompt`` that first rewrites ``trigger_word`` (any case, whole words) to ``token``,
    then runs ``previous`` (diffusers' own, which expands ``token`` into ``token token_1 ...``)."""
    words = [re.escape(word) for word in trigger_word.split()]
    pattern = re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", flags=re.IGNORECASE)

    def convert(prompt, tokenizer):
        if isinstance(prompt, list):
            prompt = [pattern.sub(lambda _: token, p) for p in prompt]
        elif isinstance(prompt, str):
            prompt = pattern.sub(lambda _: token, prompt)
        return previous(prompt, tokenizer)

    return convert


@contextmanager
def textual_inversion(pipe, model_code: str, trigger_word: str, vectors: torch.Tensor) -> Iterator[str]:
    """Add the embedding ``vectors`` ``[n, width]`` under ``trigger_word`` for the ``with`` block; yield the
    registered token. On exit, also on error, the tokenizer and text encoder are exactly the base again."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    token = embedding_token(tokenizer, trigger_word)
    if not token:
        raise SubmodelError(model_code, "an embedding needs a trigger word (its TriggerWordList is empty)")
    width = text_encoder.get_input_embeddings().embedding_dim
    if vectors.shape[1] != width:
        raise SubmodelError(model_code, f"embedding width {vectors.shape[1]} does not fit this base model's text "
                                        f"encoder (width {width}): an embedding made for another base model")
    n_vectors = vectors.shape[0]

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise SubmodelError(model_code, f"tokenizer {type(tokenizer).__name__} has no tokenizers backend; "
                                        "embeddings need a fast tokenizer")
    saved_embedding = text_encoder.get_input_embeddings()
    saved_attrs = {k: v for k, v in vars(text_encoder).items() if k not in ("_parameters", "_buffers", "_modules")}
    text_config = text_encoder.config.get_text_config()
    saved_vocab_size = text_config.vocab_size
    pipe_dict = vars(pipe)
    saved_converter = pipe_dict.get("maybe_convert_prompt", _MISSING)
    base_len = len(tokenizer)
    try:
        tokenizer._tokenizer = Tokenizer.from_str(backend.to_str())  # the job's private copy
        text_encoder.set_input_embeddings(_grown_embedding(saved_embedding, base_len + n_vectors))
        try:
            pipe.load_textual_inversion({token: vectors}, token=token)
        except ValueError as e:
            message = " ".join(str(e).split())
            if "already in tokenizer vocabulary" in message:
                message = (f"trigger word {trigger_word!r} (token {token!r}) is already a token of this model's "
                           "vocabulary or of another embedding of this job; choose another trigger word")
            raise SubmodelError(model_code, message[:300]) from e
        if n_vectors > 1:
            previous = pipe.maybe_convert_prompt
            object.__setattr__(pipe, "maybe_convert_prompt",
                               _expanding_prompt_converter(previous, token, trigger_word))
        yield token
    finally:
        if saved_converter is _MISSING:
            pipe_dict.pop("maybe_convert_prompt", None)
        else:
            pipe_dict["maybe_convert_prompt"] = saved_converter
        tokenizer._tokenizer = backend
        text_encoder.set_input_embeddings(saved_embedding)
        text_config.vocab_size = saved_vocab_size
        for key in [k for k in vars(text_encoder) if k not in ("_parameters", "_buffers", "_modules")]:
            if key not in saved_attrs:
                delattr(text_encoder, key)
        for key, value in saved_attrs.items():
            if vars(text_encoder).get(key, _MISSING) is not value:
                object.__setattr__(text_encoder, key, value)
        if len(tokenizer) != base_len or text_encoder.get_input_embeddings() is not saved_embedding:
            raise RuntimeError("textual inversion could not be removed; the pipeline is not the base any more")


_MISSING = object()
