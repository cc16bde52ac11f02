"""What a job asks for (:class:`SubModelSpec`), how it fails (:class:`SubmodelError`) and how trigger words
reach the prompt (:func:`build_prompt`). Pure Python: no torch, importable anywhere."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.contract.limits import SUBMODEL_TYPES

SubModelType = Literal[SUBMODEL_TYPES]


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
    """

    model_code: str
    model_type: SubModelType
    path: Path
    weight: float = 1.0
    trigger_words: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.model_type not in SUBMODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUBMODEL_TYPES}, got {self.model_type!r}")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "trigger_words", list(self.trigger_words))


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
