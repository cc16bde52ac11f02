"""TranslatePrompts: language detection, and translation with a tiny but real MarianMT folder built by code
(workers.demo.translator), loaded with from_pretrained and run with generate()."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.demo.translator import DEMO_PAIRS, MARKER_FILE, RECIPE_VERSION, ensure_demo_translator
from workers.translate.detect import detect_language, is_english
from workers.translate.translator import (
    NOTE_NO_TRANSLATOR,
    TranslationResult,
    Translator,
    TranslatorLoadError,
    translate_prompts,
)

# --- language detection -----------------------------------------------------------------------------------

ENGLISH = [
    "girl, smile, red dress",
    "1girl, solo, long hair, blonde, masterpiece, best quality",
    "a young woman wearing a white silk dress standing on the beach at sunset",
    "portrait of a beautiful woman, studio photo, soft light",
    "lowres, bad anatomy, worst quality, blurry, watermark",
    "sexy model posing, casual chic style, vintage",
    "Comme des Garçons jacket, Paris street",   # a French brand name and a city are not French
    "a woman in Zürich, café",                   # accents and a German place name are not enough
    "white robe, rouge lipstick, red lips",      # words shared with French stay English
    "RAW photo, (masterpiece:1.2), <lora:detail:0.6>, 8k",
    "a girl wearing a T-shirt with a 愛 print on it",  # one ideograph in an English sentence
    "Zara, Gucci, Prada",
    "8k, 4:3",
    "",
]


@pytest.mark.parametrize("text", ENGLISH)
def test_english_prompts_are_english(text):
    assert detect_language(text) == "en"
    assert is_english(text)


@pytest.mark.parametrize("text, code", [
    # Spanish: with stopwords, and plain tag lists of fashion words
    ("una chica con un vestido rojo", "es"),
    ("chica, sonrisa, vestido rojo", "es"),
    ("mujer sonriente en la playa, foto de moda", "es"),
    ("niña", "es"),
    # French
    ("une fille avec une robe rouge", "fr"),
    ("femme souriante, robe noire, fond blanc", "fr"),
    ("robe rouge", "fr"),
    # German
    ("ein Mädchen mit einem roten Kleid", "de"),
    ("Frau, Kleid, Strand", "de"),
    # Italian, Portuguese
    ("una ragazza con un vestito rosso", "it"),
    ("uma menina com um vestido vermelho", "pt"),
    # Chinese, with full-width separators, and with English quality tags
    ("女孩，微笑，红色连衣裙", "zh"),
    ("穿红色连衣裙的女孩", "zh"),
    ("女孩, best quality, masterpiece", "zh"),
    # Japanese: kana (with or without kanji)
    ("赤いドレスを着た女の子", "ja"),
    ("女の子, 笑顔", "ja"),
    # Russian / Cyrillic, Korean, Arabic, Greek, Hebrew, Thai
    ("девушка в красном платье", "ru"),
    ("улыбка, красное платье, best quality", "ru"),
    ("빨간 드레스를 입은 소녀", "ko"),
    ("فتاة ترتدي فستانا أحمر", "ar"),
    ("κορίτσι με κόκκινο φόρεμα", "el"),
    ("ילדה בשמלה אדומה", "he"),
    ("ผู้หญิงสวมชุดสีแดง", "th"),
])
def test_non_english_prompts_are_detected(text, code):
    assert detect_language(text) == code
    assert not is_english(text)


def test_translate_module_is_light_to_import():
    """Detection needs no ML library: torch and transformers come with Translator.load only."""
    code = ("import sys, workers.translate.detect as d, workers.translate.translator; d.detect_language('chica'); "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- the demo MarianMT folder -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_translator_dir() -> Path:
    # built once per machine (the recipe version is in the name, so a new recipe never meets an old folder)
    root = Path(os.environ.get("ATELIER_DEMO_MODELS_DIR", Path.home() / ".cache" / "atelier" / "test-models"))
    return ensure_demo_translator(root / f"demo-translator-r{RECIPE_VERSION}", seed=0)


@pytest.fixture(scope="module")
def translator(demo_translator_dir) -> Translator:
    return Translator.load(demo_translator_dir, device="cpu")


class Spy:
    """Wraps a callable and records the arguments of every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture
def spies(translator, monkeypatch):
    """(spy on Translator.translate, spy on the model's generate) for one test."""
    translate_spy = Spy(translator.translate)
    generate_spy = Spy(translator.model.generate)
    monkeypatch.setattr(translator, "translate", translate_spy)
    monkeypatch.setattr(translator.model, "generate", generate_spy)
    return translate_spy, generate_spy


def sent_texts(translate_spy: Spy) -> list[str]:
    return [text for args, _ in translate_spy.calls for text in args[0]]


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_demo_translator_is_a_small_real_marian_folder(demo_translator_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel, MarianTokenizer

    names = {p.name for p in demo_translator_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "source.spm", "target.spm",
            "vocab.json", "tokenizer_config.json", MARKER_FILE} <= names
    size = sum(p.stat().st_size for p in demo_translator_dir.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    tokenizer = AutoTokenizer.from_pretrained(demo_translator_dir, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(demo_translator_dir, local_files_only=True)
    assert isinstance(tokenizer, MarianTokenizer) and isinstance(model, MarianMTModel)
    assert model.config.d_model == 32 and model.config.encoder_layers <= 2
    # it really translates: every pair of its corpus, through generate()
    sources, targets = zip(*DEMO_PAIRS)
    batch = tokenizer(list(sources), return_tensors="pt", padding=True)
    out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=16)
    assert tokenizer.batch_decode(out, skip_special_tokens=True) == list(targets)


def test_ensure_demo_translator_is_idempotent_and_guards_its_folder(demo_translator_dir, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in demo_translator_dir.iterdir()}
    assert ensure_demo_translator(demo_translator_dir, seed=0) == demo_translator_dir
    assert {p.name: p.stat().st_mtime_ns for p in demo_translator_dir.iterdir()} == before
    with pytest.raises(ValueError):
        ensure_demo_translator(demo_translator_dir, seed=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        ensure_demo_translator(tmp_path / "other")


def test_translator_load_reads_the_declared_source_languages(translator):
    assert translator.source_languages == ["es", "fr", "zh"]
    assert translator.translate(["vestido rojo", "女孩", "", "une fille avec une robe rouge"]) == \
        ["red dress", "girl", "", "a girl in a red dress"]


def test_translator_load_of_a_missing_folder_fails_clearly(tmp_path):
    with pytest.raises(TranslatorLoadError):
        Translator.load(tmp_path / "nope")


# --- translate_prompts ------------------------------------------------------------------------------------

def test_spanish_and_chinese_prompts_are_translated(translator, spies):
    prompts = ["chica, sonrisa, vestido rojo", "女孩，微笑，红色连衣裙", "una chica con un vestido rojo"]
    result = translate_prompts(prompts, translator, enabled=True)
    assert result.prompts == ["girl, smile, red dress", "girl, smile, red dress", "a girl in a red dress"]
    assert result.languages == ["es", "zh", "es"]
    assert len(result.notes) == 1 and result.notes[0].startswith("TranslatePrompts: translated 3 prompts from es, zh")
    translate_spy, _ = spies
    assert len(translate_spy.calls) == 1  # one batched call for every segment of every prompt
    assert sent_texts(translate_spy).count("vestido rojo") == 1  # identical segments translated once


def test_english_prompts_are_never_sent_to_the_model(translator, spies):
    translate_spy, generate_spy = spies
    prompts = ["girl, smile, red dress", "a woman in a white silk dress, best quality", ""]
    result = translate_prompts(prompts, translator, enabled=True)
    assert result == TranslationResult(prompts=prompts, notes=[], languages=["en", "en", "en"])
    assert translate_spy.calls == [] and generate_spy.calls == []


def test_mixed_lists_translate_only_the_non_english_entries(translator, spies):
    prompts = ["girl, smile", "vestido rojo", "", "女孩", "best quality, masterpiece"]
    result = translate_prompts(prompts, translator, enabled=True)
    assert result.prompts == ["girl, smile", "red dress", "", "girl", "best quality, masterpiece"]
    translate_spy, generate_spy = spies
    assert sorted(sent_texts(translate_spy)) == sorted(["vestido rojo", "女孩"])
    assert len(generate_spy.calls) == 1


def test_english_tags_weights_and_sizes_inside_a_foreign_prompt_are_kept(translator, spies):
    result = translate_prompts(["(vestido rojo:1.2), [falda larga], best quality, 8k, <lora:detail:0.5>",
                                "穿红色连衣裙的女孩, masterpiece"], translator, enabled=True)
    assert result.prompts == ["(red dress:1.2), [long skirt], best quality, 8k, <lora:detail:0.5>",
                              "a girl in a red dress, masterpiece"]
    translate_spy, _ = spies
    assert sorted(sent_texts(translate_spy)) == sorted(["vestido rojo", "falda larga", "穿红色连衣裙的女孩"])


def test_disabled_never_translates(translator, spies):
    prompts = ["chica, sonrisa, vestido rojo", "女孩", "girl"]
    result = translate_prompts(prompts, translator, enabled=False)
    assert result == TranslationResult(prompts=prompts, notes=[], languages=[])
    translate_spy, generate_spy = spies
    assert translate_spy.calls == [] and generate_spy.calls == []


def test_no_translator_passes_prompts_through_with_a_note():
    prompts = ["chica, sonrisa, vestido rojo", "girl"]
    result = translate_prompts(prompts, None, enabled=True)
    assert result.prompts == prompts
    assert result.notes == [NOTE_NO_TRANSLATOR]
    assert result.languages == ["es", "en"]
    # all English: no translator needed, nothing to say
    assert translate_prompts(["girl, smile", ""], None, enabled=True).notes == []
    assert translate_prompts(prompts, None, enabled=False).notes == []


def test_a_language_the_translator_does_not_read_passes_through_with_a_note(translator, spies):
    result = translate_prompts(["赤いドレスを着た女の子", "vestido rojo"], translator, enabled=True)
    assert result.prompts == ["赤いドレスを着た女の子", "red dress"]
    assert any("not ja" in note for note in result.notes)
    translate_spy, _ = spies
    assert sent_texts(translate_spy) == ["vestido rojo"]


def test_a_failing_model_does_not_fail_the_prompts():
    class Broken:
        name, source_languages = "broken", None

        def translate(self, texts):
            raise RuntimeError("boom")

    prompts = ["chica, vestido rojo", "girl"]
    result = translate_prompts(prompts, Broken(), enabled=True)
    assert result.prompts == prompts
    assert len(result.notes) == 1 and "translation failed (RuntimeError: boom)" in result.notes[0]
