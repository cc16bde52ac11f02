"""Which language a prompt is in: a dependency-free guess, tuned for prompts (no model, no download).

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
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["LATIN_LANGUAGES", "SEPARATOR", "detect_language", "has_non_latin", "is_english", "is_positively_english",
           "split_words"]

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
SEPARATOR = re.compile(r"(\s*(?:[,，、;；]|\n)\s*)")
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


def split_words(text: str) -> list[str]:
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
LATIN_LANGUAGES = ("es", "fr", "de", "it", "pt", "pl", "tr", "vi")  # order breaks ties


def _latin_scores(text: str) -> tuple[float, dict[str, float], dict[str, float], int]:
    """(English score, foreign scores, foreign *strong* evidence, number of distinct words) of Latin text.

    Strong evidence: list words and letters of weight 1, i.e. the score without shared accents."""
    words = set(split_words(text.lower()))  # not casefold(): it turns ß into ss
    english = float(sum(1 for w in words if w in _EN))
    foreign: dict[str, float] = {}
    strong: dict[str, float] = {}
    for lang in LATIN_LANGUAGES:
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
    best = max(LATIN_LANGUAGES, key=lambda lang: foreign[lang])  # max() keeps the first of equals
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
    for part in SEPARATOR.split(text):
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


def has_non_latin(text: str) -> bool:
    return any(ch.isalpha() and _script(ch) != "latin" for ch in text)


def is_positively_english(text: str) -> bool:
    """A segment with English evidence and no stronger foreign evidence (used inside non-English prompts)."""
    if has_non_latin(text):
        return False
    english, foreign, _, _ = _latin_scores(unicodedata.normalize("NFC", text))
    return english > 0 and english >= max(foreign.values())


