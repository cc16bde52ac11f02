"""``TranslatePrompts``: detect prompts that are not in English and translate them with a local model.

A shop in Shanghai or Madrid writes its prompts in its own language; diffusion text encoders only
understand English. This module decides which prompts need translating and translates them with a
transformers sequence-to-sequence model (a MarianMT ``opus-mt-*-en`` folder, typically) that the
deployment configures; nothing is ever downloaded.

Public API
----------
* :func:`workers.translate.detect.detect_language` / ``is_english`` -- the language guess (``detect.py``).
* :class:`Translator` -- ``Translator.load(path)`` loads a local translation model; ``translate(texts)``.
* :func:`translate_prompts` -- the ``TranslatePrompts`` behaviour for a list of prompts, returning a
  :class:`TranslationResult` (the prompts to use and notes for the task detail).

What is sent to the model (:func:`translate_prompts`)
-----------------------------------------------------
Prompts are usually comma-separated tag lists, so a non-English prompt is split on ``, ， 、 ; ；`` and
newlines, and each segment is translated on its own (translation models handle short phrases far better
than long comma lists, and the tag structure survives). Weighting syntax around a segment --
``(vestido rojo:1.2)``, ``[falda]`` -- is kept and only the words inside are translated. Segments
that need no translation are kept verbatim: those without a word of two letters ("8k", "4:3"),
``<lora:...>``-style tags, purely Latin segments of a prompt in a non-Latin script ("女孩, best
quality"), and segments of a Latin-script prompt that are positively English (English evidence, none
stronger for another language: "best quality", "bad anatomy"). Full-width separators of a translated
prompt become ", " / "; ". English prompts (and empty ones) are never sent to the model; identical
segments are translated once; all segments of all prompts go to the model in one batched call.

Notes (:attr:`TranslationResult.notes`, for the task detail)
------------------------------------------------------------
None when disabled or when every prompt is English (with or without a translator: nothing was lost).
:data:`NOTE_NO_TRANSLATOR` when a non-English prompt is met and no translator is configured; one note
when prompts were translated (how many, from which languages, with which model); one when some
language is not among the translator's declared source languages; one when the model raised (then
every prompt passes through unchanged: a failed translation does not fail the generation).

Light to import: torch and transformers are imported by :meth:`Translator.load`, not by this module.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.translate.detect import (
    LATIN_LANGUAGES,
    SEPARATOR,
    detect_language,
    has_non_latin,
    is_positively_english,
    split_words,
)

__all__ = [
    "NOTE_NO_TRANSLATOR",
    "TranslationResult",
    "Translator",
    "TranslatorLoadError",
    "translate_prompts",
]

log = logging.getLogger("atelier.worker.translate")

#: The task-detail note when a non-English prompt is met and the deployment has no translator.
NOTE_NO_TRANSLATOR = "TranslatePrompts: no translator configured; prompts passed through unchanged"

# --------------------------------------------------------------------------------------------------
# The translation model
# --------------------------------------------------------------------------------------------------

class TranslatorLoadError(RuntimeError):
    """The configured translator folder could not be loaded."""


# ISO 639-2/3 codes found in opus-mt folder names and tokenizer configs -> the codes detect_language returns.
_ISO3 = {
    "spa": "es", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "ita": "it", "por": "pt", "zho": "zh",
    "chi": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko", "rus": "ru", "ukr": "uk", "ara": "ar", "fas": "fa",
    "per": "fa", "ell": "el", "gre": "el", "heb": "he", "tha": "th", "hin": "hi", "pol": "pl", "tur": "tr",
    "vie": "vi",
}


def _language_code(code: Any) -> str | None:
    if not isinstance(code, str):
        return None
    code = code.strip().lower()
    if re.fullmatch(r"[a-z]{2}", code):
        return code
    return _ISO3.get(code)  # group codes such as "mul", "roa", "zle" -> None (no restriction)


def _source_languages(path: Path, model_config: Any, tokenizer: Any) -> list[str] | None:
    """The languages a translator declares it reads, or None (= no restriction).

    In order: ``source_languages`` (a list) in the folder's config.json -- the convention of this
    project, written by :mod:`workers.demo.translator` and addable to any folder --, else the
    tokenizer's ``source_lang`` when it is a single language, else an ``opus-mt-XX-en`` folder name."""
    declared = getattr(model_config, "source_languages", None)
    if isinstance(declared, (list, tuple)) and declared:
        codes = [c for c in (_language_code(x) for x in declared) if c]
        return sorted(set(codes)) or None
    single = _language_code(getattr(tokenizer, "source_lang", None))
    if single:
        return [single]
    m = re.fullmatch(r"opus-mt-([a-z]{2,3})-en", path.name.lower())
    if m and (code := _language_code(m.group(1))):
        return [code]
    return None


class Translator:
    """A local sequence-to-sequence translation model (MarianMT or any ``AutoModelForSeq2SeqLM``) into English.

    Build it with :meth:`load`. ``source_languages`` restricts what :func:`translate_prompts` sends to it
    (None: anything). Decoding is greedy by default (``num_beams=1``); the number of new tokens is bounded
    by ``max_new_tokens`` and by 3 x the longest input + 8, so a degenerate model cannot run away.
    """

    def __init__(self, tokenizer: Any, model: Any, *, source_languages: Sequence[str] | None = None,
                 num_beams: int = 1, max_new_tokens: int = 256, batch_size: int = 16,
                 max_input_tokens: int = 256, name: str = "translator") -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.source_languages = list(source_languages) if source_languages else None
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.name = name

    @classmethod
    def load(cls, path: Path, device: str = "cpu", *, source_languages: Sequence[str] | None = None,
             **kwargs: Any) -> Translator:
        """Load a translation model folder (``config.json``, weights, tokenizer files) from disk only.

        ``source_languages`` overrides what the folder declares (see :func:`_source_languages`); other
        keyword arguments go to the constructor. Raises :class:`TranslatorLoadError`.
        """
        path = Path(path)
        if not path.is_dir():
            raise TranslatorLoadError(f"translator folder {path} does not exist")
        try:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            with warnings.catch_warnings():
                # MarianTokenizer warns on every load when the optional sacremoses is not installed
                warnings.filterwarnings("ignore", message=".*sacremoses.*")
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True)
            model.to(torch.device(device))
            model.eval()
        except Exception as e:  # noqa: BLE001 -- any failure here is a configuration problem
            raise TranslatorLoadError(f"cannot load the translator at {path}: {type(e).__name__}: {e}") from e
        if not getattr(model.config, "is_encoder_decoder", False):
            raise TranslatorLoadError(f"{path} is not a sequence-to-sequence translation model")
        declared = source_languages or _source_languages(path, model.config, tokenizer)
        kwargs.setdefault("name", path.name)
        translator = cls(tokenizer, model, source_languages=declared, **kwargs)
        log.info("translator %s loaded from %s on %s (source languages: %s)", translator.name, path, device,
                 ", ".join(declared) if declared else "any")
        return translator

    def translate(self, texts: list[str]) -> list[str]:
        """Translate each text to English, in batches; blank texts come back unchanged without the model."""
        import torch

        out = list(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        device = next(self.model.parameters()).device
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_input_tokens)
            batch = {k: v.to(device) for k, v in batch.items()}
            limit = min(self.max_new_tokens, 3 * int(batch["input_ids"].shape[1]) + 8)
            with torch.inference_mode():
                generated = self.model.generate(**batch, num_beams=self.num_beams, do_sample=False,
                                                max_new_tokens=limit)
            for i, text in zip(idx, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


# --------------------------------------------------------------------------------------------------
# TranslatePrompts
# --------------------------------------------------------------------------------------------------

@dataclass
class TranslationResult:
    """The prompts to use, and notes for the task detail (empty when there is nothing worth saying).

    ``languages`` is the detected language of each input prompt (empty when translation was disabled)."""

    prompts: list[str]
    notes: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)


_FULLWIDTHSEPARATORS = {"，": ", ", "、": ", ", "；": "; "}
# (opening brackets)(words)(optional :weight)(closing brackets)
_WRAPPED = re.compile(r"^([\s(\[{（【]*)(.*?)((?:\s*:\s*[-+]?\d*\.?\d+)?[\s)\]}）】]*)$", re.DOTALL)
_EXTRA_NETWORK = re.compile(r"^\s*<[^<>]*>\s*$")


def _needs_model(core: str, prompt_language: str) -> bool:
    if _EXTRA_NETWORK.match(core):
        return False
    if not has_non_latin(core) and not any(len(w) >= 2 for w in split_words(core)):
        return False  # no letters, or only units and sizes: "8k", "4:3", "1.5x"
    if prompt_language in LATIN_LANGUAGES:
        return not is_positively_english(core)
    return has_non_latin(core)  # a non-Latin prompt: its Latin segments are English tags or names


def _plan(prompt: str, language: str) -> list[tuple[str, str | None, str]]:
    """The prompt as (prefix, words to translate or None, suffix) pieces whose concatenation is the prompt."""
    pieces: list[tuple[str, str | None, str]] = []
    for part in SEPARATOR.split(prompt):
        if SEPARATOR.fullmatch(part):
            pieces.append((part, None, ""))
            continue
        m = _WRAPPED.match(part)
        prefix, core, suffix = m.groups() if m else ("", part, "")
        if core and _needs_model(core, language):
            pieces.append((prefix, core, suffix))
        else:
            pieces.append((part, None, ""))
    return pieces


def _rejoin(pieces: list[tuple[str, str | None, str]], translated: dict[str, str]) -> str:
    out = []
    for prefix, core, suffix in pieces:
        if core is None:
            sep = prefix.strip()
            out.append(prefix.replace(sep, _FULLWIDTHSEPARATORS[sep]).rstrip() + " "
                       if sep in _FULLWIDTHSEPARATORS else prefix)
        else:
            out.append(prefix + translated[core] + suffix)
    return re.sub(r" +(\n|$)", r"\1", "".join(out))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def translate_prompts(prompts: list[str], translator: Translator | None, enabled: bool) -> TranslationResult:
    """Apply ``TranslatePrompts`` to a list of prompts.

    * ``enabled`` False: the prompts unchanged, no note, no detection.
    * English prompts (and empty ones) are returned untouched and never sent to the model.
    * Non-English prompts are translated with ``translator`` (segment by segment, see the module
      docstring) and a note says how many and from which languages.
    * Non-English prompts and no translator: everything unchanged and the note :data:`NOTE_NO_TRANSLATOR`.
      When every prompt is English no translator is needed, so there is no note.
    * A prompt whose language the translator does not declare (``Translator.source_languages``) is left
      unchanged, with a note.
    * The model raising: every prompt unchanged, with a note (and the error logged) -- a failed
      translation must not fail the generation.
    """
    prompts = list(prompts)
    if not enabled:
        return TranslationResult(prompts=prompts)
    languages = [detect_language(p) for p in prompts]
    foreign = [i for i, lang in enumerate(languages) if lang != "en"]
    if not foreign:
        return TranslationResult(prompts=prompts, languages=languages)
    if translator is None:
        return TranslationResult(prompts=prompts, notes=[NOTE_NO_TRANSLATOR], languages=languages)

    notes: list[str] = []
    supported = translator.source_languages
    if supported:
        unsupported = sorted({languages[i] for i in foreign if languages[i] not in supported})
        if unsupported:
            count = sum(1 for i in foreign if languages[i] in unsupported)
            notes.append(f"TranslatePrompts: the translator reads {', '.join(supported)}, not "
                         f"{', '.join(unsupported)}; {_plural(count, 'prompt')} passed through unchanged")
            foreign = [i for i in foreign if languages[i] not in unsupported]

    plans = {i: _plan(prompts[i], languages[i]) for i in foreign}
    cores = list(dict.fromkeys(core for pieces in plans.values() for _, core, _ in pieces if core is not None))
    if not cores:
        return TranslationResult(prompts=prompts, notes=notes, languages=languages)
    try:
        translations = translator.translate(cores)
        if len(translations) != len(cores):
            raise RuntimeError(f"the translator returned {len(translations)} texts for {len(cores)}")
    except Exception as e:  # noqa: BLE001
        log.exception("prompt translation failed; prompts passed through unchanged")
        notes.append(f"TranslatePrompts: translation failed ({type(e).__name__}: {e}); "
                     "prompts passed through unchanged")
        return TranslationResult(prompts=prompts, notes=notes, languages=languages)

    table = dict(zip(cores, translations))
    out = list(prompts)
    done: list[int] = []
    for i, pieces in plans.items():
        if any(core is not None for _, core, _ in pieces):
            out[i] = _rejoin(pieces, table)
            done.append(i)
    if done:
        langs = ", ".join(dict.fromkeys(languages[i] for i in done))
        notes.append(f"TranslatePrompts: translated {_plural(len(done), 'prompt')} from {langs} to English "
                     f"with {translator.name}")
        log.debug("translated %s from %s: %s", _plural(len(done), "prompt"), langs,
                 json.dumps({prompts[i]: out[i] for i in done}, ensure_ascii=False))
    return TranslationResult(prompts=out, notes=notes, languages=languages)

