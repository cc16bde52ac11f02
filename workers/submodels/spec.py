"""What a job asks for (:class:`SubModelSpec`), how it fails (:class:`SubmodelError`), what a submodel kind is
(:class:`SubmodelKind`: how its files are read, cached, checked and applied) and how trigger words reach the
prompt (:func:`build_prompt`). Pure Python: no torch, importable anywhere (the kinds themselves, which need
torch, are registered in :mod:`workers.submodels.kinds`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from app.contract.limits import MODEL_TYPES, SUBMODEL_TYPES, ModelType


class SubmodelError(Exception):
    """A submodel could not be read or applied: a missing, corrupt or wrong-format file, a file made for
    another base model. ``str(error)`` is a one-line message fit for the task record."""

    def __init__(self, model_code: str, message: str):
        super().__init__(f"submodel {model_code}: {message}")
        self.model_code = model_code
        self.message = message


@dataclass(frozen=True)
class SubModelSpec:
    """One entry of a job's SubModelList, resolved against the deployment's model registry.

    ``path``: the submodel's file, or a folder holding it (diffusers layouts:
    ``pytorch_lora_weights.safetensors``, ``learned_embeds.safetensors``).
    ``weight``: for a LoRA its LoraWeight (-1..2; 0 = no effect); for a hypernetwork its strength
    (A1111's multiplier, default 1.0); ignored for an embedding.
    ``trigger_words``: the model's TriggerWordList. An embedding's token is its first trigger word.
    ``image``: the storage key of the request's own image for a kind that needs one
    (:attr:`SubmodelKind.needs_image`, e.g. an IP-Adapter unit); the job resolves it (:class:`WithImage`).
    """

    model_code: str
    model_type: ModelType
    path: Path
    weight: float = 1.0
    trigger_words: list[str] = field(default_factory=list)
    image: str | None = None

    def __post_init__(self) -> None:
        if self.model_type not in SUBMODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUBMODEL_TYPES}, got {self.model_type!r}")
        if self.model_type in MODEL_TYPES:
            object.__setattr__(self, "model_type", ModelType(self.model_type))
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "trigger_words", list(self.trigger_words))


class WithImage(NamedTuple):
    """What a job's ``read(spec)`` returns for a spec with an ``image``: the kind's parsed file (from the model
    cache) and the request's image, resolved by the job from the storage key (a PIL image)."""

    data: Any
    image: Any


@dataclass(frozen=True)
class Loaded:
    """One submodel of a job, ready to apply: its spec, its parsed file (shared between jobs: read-only), its
    weight (checked) and, for a kind that needs one, the request's image."""

    spec: SubModelSpec
    data: Any
    weight: float
    image: Any = None


def file_key(spec: SubModelSpec, file: Path) -> tuple[Hashable, ...]:
    """The default cache key parts of a submodel: its type and its resolved file (the worker adds the file's
    modification time and size, so that a file replaced on disk is read again)."""
    return (str(spec.model_type), str(file))


def no_check(spec: SubModelSpec, weight: float) -> None:
    """The check of a kind that accepts any finite weight."""


@dataclass(frozen=True)
class SubmodelKind:
    """Everything the worker knows of one kind of submodel, registered once in :mod:`workers.submodels.kinds`.

    ``model_type``: the contract's :class:`~app.contract.limits.ModelType` (one of ``SUBMODEL_TYPES``).
    ``read(path)``: the parsed content of a weights file (raises ``FileFormatError`` or ``OSError``); what it
    returns is kept in the model cache and shared between jobs.
    ``apply(pipe, items, **options)``: a context manager that applies this kind's :class:`Loaded` items of one
    job (in the job's order) to ``pipe`` and undoes them, exactly, when it exits (also on an error); options
    are :func:`~workers.submodels.apply.apply_submodels`' keywords, each kind reads those it knows.
    ``order``: kinds are applied in ascending order (and undone in reverse): LoRA 10, Embedding 20,
    HyperNetwork 30.
    ``preferred_names``: in a folder, the file names looked for first (diffusers layouts).
    ``check(spec, weight)``: what a request must satisfy for this kind, before any file is read (raises
    :class:`SubmodelError`); the weight is already known to be finite.
    ``needs_image``: a request must carry an image for it (``SubModelSpec.image``).
    ``separate_attention``: it hooks an attention's separate q/k/v projections, which a fused layer
    (``speed.fuse_qkv``) never calls: they are separated while it is applied.
    ``cache_key(spec, file)``: what makes two jobs share one read copy; ``place``: where the cache keeps it.
    """

    model_type: ModelType
    read: Callable[[Path], Any]
    apply: Callable[..., AbstractContextManager[Any]]
    order: int
    preferred_names: tuple[str, ...] = ()
    check: Callable[[SubModelSpec, float], None] = no_check
    needs_image: bool = False
    separate_attention: bool = False
    cache_key: Callable[[SubModelSpec, Path], tuple[Hashable, ...]] = file_key
    place: Literal["host", "device"] = "host"


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def _contains_phrase(prompt: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``prompt`` as whole words (case and spacing ignored)."""
    words = [re.escape(word) for word in phrase.split()]
    pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
    return re.search(pattern, prompt, flags=re.IGNORECASE) is not None


def build_prompt(positive_prompts: list[str], trigger_words: list[str]) -> str:
    """The positive prompt sent to the model: the trigger words first, then the prompts, comma-separated.

    Trigger words go first because CLIP truncates prompts at 77 tokens: at the front they are never cut.
    Empty or blank entries are dropped and whitespace inside an entry is collapsed. A trigger word is left
    out when the prompt already holds it: an earlier trigger word equals or contains it, or the prompts
    contain it, as whole words (compared ignoring case and spacing). Prompts are kept as written,
    duplicates included (a user's repetition is emphasis). Trigger words keep their spelling; the tokenizer
    ignores case.
    """
    prompts = [" ".join(p.split()) for p in positive_prompts if p and p.strip()]
    body = ", ".join(prompts)
    words: list[str] = []
    seen: set[str] = set()
    for word in trigger_words:
        if not word or not word.strip():
            continue
        word = " ".join(word.split())
        key = _normalize(word)
        if key in seen or _contains_phrase(body, word) or _contains_phrase(", ".join(words), word):
            continue
        seen.add(key)
        words.append(word)
    return ", ".join(words + prompts)
