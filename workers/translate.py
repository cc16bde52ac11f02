"""``TranslatePrompts``: detect prompts that are not in English and translate them with a local model.

A shop in Shanghai or Madrid writes its prompts in its own language; diffusion text encoders only
understand English. This module decides which prompts need translating and translates them with a
transformers sequence-to-sequence model (a MarianMT ``opus-mt-*-en`` folder, typically) that the
deployment configures; nothing is ever downloaded.

Public API
----------
* :func:`detect_language` / :func:`is_english` -- a dependency-free language guess, tuned for prompts.
* :class:`Translator` -- ``Translator.load(path)`` loads a local translation model; ``translate(texts)``.
* :func:`translate_prompts` -- the ``TranslatePrompts`` behaviour for a list of prompts, returning a
  :class:`TranslationResult` (the prompts to use and notes for the task detail).

Language detection (:func:`detect_language`)
--------------------------------------------
1. Letters are classified by Unicode script. Ideographs, kana and hangul weigh 3 letters each (one such
   character carries about a Latin word's worth of meaning). When non-Latin scripts hold at least a
   quarter of the weighted letters of the text, or at least half of one comma-separated segment's, the
   text's language is that of the heaviest non-Latin script: kana present -> ``ja`` (Japanese mixes
   kana and kanji), else Han -> ``zh``, hangul -> ``ko``, Cyrillic -> ``ru`` (``uk`` with
   Ukrainian-only letters), Arabic -> ``ar`` (``fa`` with Persian-only letters), Greek ``el``, Hebrew
   ``he``, Thai ``th``, Devanagari ``hi``, ... ``other`` for the rest. So "女孩, best quality" is ``zh``
   but "a T-shirt with a 愛 print" stays ``en``. Kanji-only Japanese ("笑顔") is reported as ``zh``
   (the two cannot be told apart by script alone).
2. Latin-script text is scored against Spanish, French, German, Italian and Portuguese (and Polish,
   Turkish, Vietnamese with short lists): each distinct word found in a language's stopword or
   fashion-word list scores 1 for that language, and a word with a letter characteristic of it scores 1
   (``ñ ß ä ö ü ã õ œ ł ğ ư``...) or 0.5 (accents shared by several languages: ``é è à ç á``...).
   English scores 1 per distinct word in its own stopword and fashion-word lists. Words shared with
   English ("a", "in", "die", "hat", "robe", "blonde", "photo", "studio", "mode"...) are in no foreign
   list.

   **Rule: Latin text is English unless the evidence for another language is unambiguous** -- the best
   foreign score F must be strictly greater than the English score, contain at least 1 point of strong
   evidence (a listed word or a weight-1 letter, so accents alone -- "café", "naïve résumé" -- never
   suffice), and be either >= 2 or cover at least half of the distinct words. Hence English tag lists
   without stopwords ("girl, smile, red dress", "1girl, solo, masterpiece"), brand and place names
   ("Comme des Garçons jacket", "a woman in Zürich") and text without letters ("8k", "") are ``en`` and
   never translated, while "vestido rojo", "chica", "robe rouge" or "ein Mädchen mit Hut" are not.
   Known misses both ways: "photo de studio" alone is ``en`` (only "de" is foreign), "con artist" is
   ``es``. The cost of a miss is a prompt left as typed; the cost of a false alarm is an English prompt
   run through a translation model, which is why ties go to English.

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
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "NOTE_NO_TRANSLATOR",
    "TranslationResult",
    "Translator",
    "TranslatorLoadError",
    "detect_language",
    "is_english",
    "translate_prompts",
]

log = logging.getLogger("atelier.worker.translate")

#: The task-detail note when a non-English prompt is met and the deployment has no translator.
NOTE_NO_TRANSLATOR = "TranslatePrompts: no translator configured; prompts passed through unchanged"

# --------------------------------------------------------------------------------------------------
# Language detection
# --------------------------------------------------------------------------------------------------

# (first code point, last code point, script) -- letters outside every range and not Latin are "other".
_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"), (0x1C80, 0x1C8F, "cyrillic"), (0x2DE0, 0x2DFF, "cyrillic"),
    (0xA640, 0xA69F, "cyrillic"),
    (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"), (0xFB1D, 0xFB4F, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0x08A0, 0x08FF, "arabic"),
    (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"), (0x0A00, 0x0A7F, "gurmukhi"),
    (0x0A80, 0x0AFF, "gujarati"), (0x0B80, 0x0BFF, "tamil"), (0x0C00, 0x0C7F, "telugu"),
    (0x0C80, 0x0CFF, "kannada"), (0x0D00, 0x0D7F, "malayalam"), (0x0D80, 0x0DFF, "sinhala"),
    (0x0E00, 0x0E7F, "thai"), (0x0E80, 0x0EFF, "lao"), (0x0F00, 0x0FFF, "tibetan"),
    (0x1000, 0x109F, "myanmar"), (0x10A0, 0x10FF, "georgian"), (0x1200, 0x139F, "ethiopic"),
    (0x1780, 0x17FF, "khmer"), (0x1800, 0x18AF, "mongolian"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xA960, 0xA97F, "hangul"),
    (0xAC00, 0xD7AF, "hangul"), (0xD7B0, 0xD7FF, "hangul"), (0xFFA0, 0xFFDC, "hangul"),
    (0x3040, 0x309F, "kana"), (0x30A0, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"), (0xFF66, 0xFF9D, "kana"),
    (0x2E80, 0x2FDF, "han"), (0x3005, 0x3007, "han"), (0x3021, 0x3029, "han"), (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"), (0x20000, 0x3134F, "han"),
)
_SCRIPT_LANGUAGE = {
    "greek": "el", "cyrillic": "ru", "armenian": "hy", "hebrew": "he", "arabic": "ar", "devanagari": "hi",
    "bengali": "bn", "gurmukhi": "pa", "gujarati": "gu", "tamil": "ta", "telugu": "te", "kannada": "kn",
    "malayalam": "ml", "sinhala": "si", "thai": "th", "lao": "lo", "tibetan": "bo", "myanmar": "my",
    "georgian": "ka", "ethiopic": "am", "khmer": "km", "mongolian": "mn", "hangul": "ko", "kana": "ja",
    "han": "zh", "other": "other",
}
_HEAVY_SCRIPTS = {"han": 3.0, "kana": 3.0, "hangul": 3.0}  # weight of one character, in Latin letters
_NON_LATIN_SHARE = 0.25
# Separators of prompt segments (tags), kept by re.split thanks to the group.
_SEPARATOR = re.compile(r"(\s*(?:[,，、;；]|\n)\s*)")
_UKRAINIAN_ONLY = set("іїєґІЇЄҐ")
_PERSIAN_ONLY = set("پچژگ")


def _script(ch: str) -> str:
    """Script of an alphabetic character: "latin" or one of _SCRIPT_RANGES' names, else "other"."""
    cp = ord(ch)
    if cp < 0x0250 or 0x1E00 <= cp <= 0x1EFF or 0xFF21 <= cp <= 0xFF5A or 0x2C60 <= cp <= 0x2C7F \
            or 0xA720 <= cp <= 0xA7FF:
        return "latin"
    for lo, hi, name in _SCRIPT_RANGES:
        if lo <= cp <= hi:
            return name
    return "other"


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text)


def _wordset(*blocks: str) -> frozenset[str]:
    return frozenset(w for block in blocks for w in block.split())


# Stopwords and fashion/prompt words. A word that is also common English is in NO foreign list.
_EN = _wordset(
    """the an and of with in on at to for from by is are was be her his she he it its their they them
    this that these those who which while into onto over under near next behind between without very
    wearing wears holding standing sitting looking walking posing smiling lying""",
    """girl girls woman women man men boy lady young old beautiful pretty cute handsome smile face eyes
    lips hair long short blonde brown curly straight dress dresses skirt shirt blouse jacket coat
    trousers pants jeans shoes boots hat bag handbag red blue black white green yellow pink purple
    grey gray orange silver golden gold silk leather cotton wool lace background light lighting shadow
    beach street city park room indoor outdoor sunset full body half shot close up upper best high
    quality detailed realistic masterpiece sharp focus soft natural bright dark clean simple professional
    fashion clothing outfit wear summer winter spring autumn day night""",
    """solo raw hdr uhd dslr bokeh cinematic nsfw sfw lowres low res bad anatomy worst blurry ugly
    deformed disfigured extra fingers hands watermark text signature jpeg artifacts cropped duplicate
    mutated poorly drawn""",
)
_FOREIGN: dict[str, frozenset[str]] = {
    "es": _wordset(
        """el la los las un una unos unas del y con para por en de que es está están muy su sus
        sobre entre desde hacia pero lleva llevando usando""",
        """chica chicas chico mujer mujeres hombre niña niño modelo sonrisa sonriente vestido falda camisa
        camiseta blusa chaqueta abrigo pantalones vaqueros zapatos botas sombrero bolso pelo cabello
        largo larga corto corta rubio rubia rojo roja azul negro negra blanco blanca verde amarillo
        morado gris foto fotografía fondo luz playa calle ciudad seda cuero algodón encaje cuerpo entero
        moda calidad alta hermosa guapa joven""",
    ),
    "fr": _wordset(
        """le la les un une des du de et avec sans pour sur dans en au aux est très qui portant porte""",
        """fille filles femme femmes homme garçon sourire souriante souriant jupe chemise chemisier veste
        manteau pantalon chaussures bottes chapeau sac cheveux longs longue longues blonds rouge
        bleue bleu noire blanche blanc verte vert jaune gris grise lumière naturelle plage ville
        soie cuir coton dentelle corps entier debout haute qualité jolie jeune""",
    ),
    "de": _wordset(
        """der das und mit ein eine einem einer einen eines ist sind nicht auf dem des zu für vom
        zum sehr trägt tragend""",
        """mädchen frau frauen mann männer junge lächeln lächelnd kleid rotes roten blau blaues blauen
        schwarz schwarzes schwarzen weiß weißes weißen grün gelb hemd bluse jacke schuhe
        stiefel tasche haare lange langen langes hintergrund licht strand straße stadt seide leder
        baumwolle spitze ganzkörper stehend qualität hohe schön schöne schönes junge""",
    ),
    "it": _wordset(
        """il gli la le un una uno dei delle della del di con che sono molto sul sulla nel nella
        indossa indossando""",
        """ragazza ragazze donna donne uomo sorriso sorridente vestito abito rosso rossa blu nero nera
        bianco bianca verde giallo grigio gonna camicia giacca cappotto pantaloni scarpe stivali cappello
        borsa capelli lunghi corti biondi sfondo luce spiaggia strada città seta pelle cotone pizzo corpo
        intero piedi moda qualità alta bella giovane foto""",
    ),
    "pt": _wordset(
        """os um uma uns umas da dos das na nos nas em com sem para por de que muito vestindo usando""",
        """menina moça mulher mulheres homem sorriso sorridente vestido vermelho vermelha azul preto preta
        branco branca verde amarelo cinza saia camisa blusa jaqueta casaco calça calças sapatos botas
        chapéu bolsa cabelo cabelos longo longos loiro loira fundo luz praia rua cidade seda couro
        algodão renda corpo inteiro moda qualidade bonita jovem foto""",
    ),
    "pl": _wordset("""jest są się oraz który która które przy bez dla""",
                   """dziewczyna kobieta mężczyzna sukienka sukience sukienkę czerwona czerwonej czarna biała
                   spódnica koszula kurtka buty kapelusz włosy uśmiech plaża ulica tło jakość"""),
    "tr": _wordset("""bir ve ile bu çok""",
                   """kız kadın elbise kırmızı mavi siyah beyaz etek gömlek ceket ayakkabı şapka saç
                   gülümseme plaj sokak arka kalite"""),
    "vi": _wordset("""và của với một những các""",
                   """cô gái phụ nữ đàn ông váy đỏ xanh đen trắng áo quần giày mũ tóc nụ cười bãi biển
                   đường phố chất lượng"""),
}
# Letters characteristic of a language: weight 1 when (nearly) unique to it, 0.5 when shared.
_MARKS: dict[str, dict[str, float]] = {
    "es": {"ñ": 1.0, "¿": 1.0, "¡": 1.0, "á": 0.5, "í": 0.5, "ó": 0.5, "ú": 0.5, "é": 0.5},
    "fr": {"œ": 1.0, "è": 0.5, "ê": 0.5, "ë": 0.5, "î": 0.5, "ï": 0.5, "û": 0.5, "ù": 0.5, "ç": 0.5,
           "â": 0.5, "ô": 0.5, "à": 0.5, "é": 0.5},
    "de": {"ß": 1.0, "ä": 1.0, "ö": 1.0, "ü": 1.0},
    "it": {"ì": 0.5, "ò": 0.5, "ù": 0.5, "à": 0.5, "è": 0.5, "é": 0.5},
    "pt": {"ã": 1.0, "õ": 1.0, "ç": 0.5, "á": 0.5, "â": 0.5, "ê": 0.5, "ô": 0.5, "à": 0.5, "é": 0.5,
           "í": 0.5, "ó": 0.5, "ú": 0.5},
    "pl": {c: 1.0 for c in "łąęśźżćń"},
    "tr": {c: 1.0 for c in "ığş"},
    "vi": {c: 1.0 for c in "đơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ"},
}
_LATIN_LANGUAGES = ("es", "fr", "de", "it", "pt", "pl", "tr", "vi")  # order breaks ties


def _latin_scores(text: str) -> tuple[float, dict[str, float], dict[str, float], int]:
    """(English score, foreign scores, foreign *strong* evidence, number of distinct words) of Latin text.

    Strong evidence: list words and letters of weight 1, i.e. the score without shared accents."""
    words = set(_words(text.lower()))  # not casefold(): it turns ß into ss
    english = float(sum(1 for w in words if w in _EN))
    foreign: dict[str, float] = {}
    strong: dict[str, float] = {}
    for lang in _LATIN_LANGUAGES:
        marks = _MARKS.get(lang, {})
        score = hard = 0.0
        for w in words:
            if w in _FOREIGN[lang]:
                score += 1.0
                hard += 1.0
            mark = max((marks.get(c, 0.0) for c in w), default=0.0)
            score += mark
            hard += mark if mark >= 1.0 else 0.0
        punct = sum(1.0 for c in "¿¡" if c in text and marks.get(c))  # punctuation is not in words
        foreign[lang] = score + punct
        strong[lang] = hard + punct
    return english, foreign, strong, len(words)


def _latin_language(text: str) -> str:
    english, foreign, strong, n_words = _latin_scores(text)
    best = max(_LATIN_LANGUAGES, key=lambda lang: foreign[lang])  # max() keeps the first of equals
    score = foreign[best]
    if strong[best] >= 1.0 and score > english and (score >= 2.0 or 2 * score >= n_words):
        return best
    return "en"


def _script_weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for ch in text:
        if ch.isalpha():
            script = _script(ch)
            weights[script] = weights.get(script, 0.0) + _HEAVY_SCRIPTS.get(script, 1.0)
    return weights


def _has_non_latin_segment(text: str) -> bool:
    """Some comma-separated segment is mostly (weighted) non-Latin: "女孩, best quality, masterpiece"."""
    for part in _SEPARATOR.split(text):
        weights = _script_weights(part)
        total = sum(weights.values())
        if total and total - weights.get("latin", 0.0) >= 0.5 * total:
            return True
    return False


def detect_language(text: str) -> str:
    """Best guess of the language of a (short) prompt: ``"en"`` or another code.

    Codes: ``zh ja ko ru uk ar fa el he th hi ...`` from the script (see the module docstring),
    ``es fr de it pt pl tr vi`` for Latin-script text with clear evidence, ``"other"`` for a non-Latin
    script without a mapping. Text without letters (``""``, ``"8k, 4:3"``) is ``"en"``. Ambiguous
    Latin-script text is ``"en"`` by design.
    """
    text = unicodedata.normalize("NFC", text or "")
    weights = _script_weights(text)
    total = sum(weights.values())
    if total == 0:
        return "en"
    non_latin = {s: w for s, w in weights.items() if s != "latin"}
    if non_latin and (sum(non_latin.values()) >= _NON_LATIN_SHARE * total or _has_non_latin_segment(text)):
        script = max(non_latin, key=lambda s: non_latin[s])
        if script in ("han", "kana") and "kana" in non_latin:
            return "ja"
        if script == "cyrillic" and any(c in _UKRAINIAN_ONLY for c in text):
            return "uk"
        if script == "arabic" and any(c in _PERSIAN_ONLY for c in text):
            return "fa"
        return _SCRIPT_LANGUAGE.get(script, "other")
    return _latin_language(text)


def is_english(text: str) -> bool:
    """True when :func:`detect_language` says ``"en"`` (including empty text and text without letters)."""
    return detect_language(text) == "en"


def _has_non_latin(text: str) -> bool:
    return any(ch.isalpha() and _script(ch) != "latin" for ch in text)


def _is_positively_english(text: str) -> bool:
    """A segment with English evidence and no stronger foreign evidence (used inside non-English prompts)."""
    if _has_non_latin(text):
        return False
    english, foreign, _, _ = _latin_scores(unicodedata.normalize("NFC", text))
    return english > 0 and english >= max(foreign.values())


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
    project, written by :mod:`workers.demo_translator` and addable to any folder --, else the
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


_FULLWIDTH_SEPARATORS = {"，": ", ", "、": ", ", "；": "; "}
# (opening brackets)(words)(optional :weight)(closing brackets)
_WRAPPED = re.compile(r"^([\s(\[{（【]*)(.*?)((?:\s*:\s*[-+]?\d*\.?\d+)?[\s)\]}）】]*)$", re.DOTALL)
_EXTRA_NETWORK = re.compile(r"^\s*<[^<>]*>\s*$")


def _needs_model(core: str, prompt_language: str) -> bool:
    if _EXTRA_NETWORK.match(core):
        return False
    if not _has_non_latin(core) and not any(len(w) >= 2 for w in _words(core)):
        return False  # no letters, or only units and sizes: "8k", "4:3", "1.5x"
    if prompt_language in _LATIN_LANGUAGES:
        return not _is_positively_english(core)
    return _has_non_latin(core)  # a non-Latin prompt: its Latin segments are English tags or names


def _plan(prompt: str, language: str) -> list[tuple[str, str | None, str]]:
    """The prompt as (prefix, words to translate or None, suffix) pieces whose concatenation is the prompt."""
    pieces: list[tuple[str, str | None, str]] = []
    for part in _SEPARATOR.split(prompt):
        if _SEPARATOR.fullmatch(part):
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
            out.append(prefix.replace(sep, _FULLWIDTH_SEPARATORS[sep]).rstrip() + " "
                       if sep in _FULLWIDTH_SEPARATORS else prefix)
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

