"""A tiny, real MarianMT translation folder built from code, for demos and tests of ``TranslatePrompts``.

Nothing is downloaded. :func:`ensure_demo_translator` writes a folder laid out like a Helsinki-NLP
``opus-mt-*`` checkpoint::

    config.json  generation_config.json  model.safetensors      # MarianMTModel
    source.spm   target.spm  vocab.json  tokenizer_config.json  # MarianTokenizer
    atelier_demo_translator.json                                # marker: what was built

that ``AutoTokenizer.from_pretrained`` / ``AutoModelForSeq2SeqLM.from_pretrained`` load like any
downloaded MarianMT model, so :class:`workers.translate.Translator` runs its real loading and
``generate()`` code on it.

How it is made:

* one SentencePiece unigram model is trained by code on both sides of a small parallel corpus of
  Spanish, French and Chinese fashion words and phrases with their English translations
  (:data:`DEMO_PAIRS`), and written as both ``source.spm`` and ``target.spm`` (a joint vocabulary, as in
  the multilingual opus-mt models); ``vocab.json`` maps its pieces to the model's ids with Marian's
  conventions (``</s>`` = 0, ``<unk>`` = 1, ``<pad>`` = last id, used as ``decoder_start_token_id``);
* a ``MarianMTModel`` with tiny dims (d_model 32, 2 encoder + 2 decoder layers, 2 heads, FFN 64,
  a 223-piece vocabulary: 54 k parameters) is trained on the corpus with teacher forcing (full batch,
  Adam, at least 300 steps) until greedy ``generate()`` reproduces **every** pair exactly (checked; the
  build fails otherwise). It is a lookup-table translator: it knows
  the demo vocabulary and nothing else (anything outside it comes out as plausible-looking garbage).

Determinism: the corpus, the tokenizer (single-threaded SentencePiece training) and the initial weights
(``torch.manual_seed(seed)``) are deterministic; training runs single-threaded, so two builds with the
same seed on the same machine and torch version write identical weights. Across CPUs or torch versions
the float kernels may round differently, so weights are only near-identical there -- but the build
stops only once every demo pair is translated exactly, so the *translations* are the same everywhere.
The .spm files are trained in memory so no temporary path is recorded in them: same machine, same seed
gives byte-identical folders (checked).

About 0.7 MB on disk (each .spm is 240 KB, mostly SentencePiece's NFKC normalisation table). Built in
about 8 s on 2 CPU cores (300 full-batch Adam steps) plus ~4 s of torch/transformers import.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

from workers.demo.publish import ensure_folder

log = logging.getLogger("atelier.worker.demo.translator")

#: Written into every demo folder; records what was built so a folder is never reused for another build.
MARKER_FILE = "atelier_demo_translator.json"
#: Bumped whenever the corpus or the recipe changes, so an old cached folder is rejected, not reused.
RECIPE_VERSION = 1

#: Source languages the demo model knows; also written to config.json as ``source_languages``, which
#: :class:`workers.translate.Translator` reads.
SOURCE_LANGUAGES = ["es", "fr", "zh"]

_ES = """
chica = girl
mujer = woman
hombre = man
niña = little girl
modelo = model
sonrisa = smile
sonriente = smiling
vestido = dress
vestido rojo = red dress
vestido azul = blue dress
vestido negro = black dress
vestido blanco = white dress
vestido de seda = silk dress
falda = skirt
falda larga = long skirt
camisa = shirt
camisa blanca = white shirt
chaqueta = jacket
chaqueta de cuero = leather jacket
pantalones = trousers
vaqueros = jeans
zapatos = shoes
sombrero = hat
bolso = handbag
pelo largo = long hair
pelo rubio = blonde hair
foto de estudio = studio photo
foto de moda = fashion photo
fondo blanco = white background
luz natural = natural light
playa = beach
calle = street
cuerpo entero = full body
de pie = standing
moda = fashion
alta calidad = high quality
una chica con un vestido rojo = a girl in a red dress
una mujer sonriente = a smiling woman
"""

_FR = """
fille = girl
femme = woman
homme = man
mannequin = model
sourire = smile
souriante = smiling
robe = dress
robe rouge = red dress
robe bleue = blue dress
robe noire = black dress
robe blanche = white dress
robe en soie = silk dress
jupe = skirt
jupe longue = long skirt
chemise = shirt
chemise blanche = white shirt
veste = jacket
veste en cuir = leather jacket
pantalon = trousers
chaussures = shoes
chapeau = hat
sac à main = handbag
cheveux longs = long hair
cheveux blonds = blonde hair
photo de studio = studio photo
photo de mode = fashion photo
fond blanc = white background
lumière naturelle = natural light
plage = beach
rue = street
corps entier = full body
debout = standing
haute qualité = high quality
une fille avec une robe rouge = a girl in a red dress
une femme souriante = a smiling woman
"""

_ZH = """
女孩 = girl
女人 = woman
男人 = man
模特 = model
微笑 = smile
连衣裙 = dress
红色连衣裙 = red dress
蓝色连衣裙 = blue dress
黑色连衣裙 = black dress
白色连衣裙 = white dress
丝绸连衣裙 = silk dress
裙子 = skirt
长裙 = long skirt
衬衫 = shirt
白色衬衫 = white shirt
夹克 = jacket
皮夹克 = leather jacket
裤子 = trousers
牛仔裤 = jeans
鞋子 = shoes
帽子 = hat
手提包 = handbag
长发 = long hair
金发 = blonde hair
影棚照片 = studio photo
时尚照片 = fashion photo
白色背景 = white background
自然光 = natural light
海滩 = beach
街道 = street
全身 = full body
站立 = standing
时尚 = fashion
高质量 = high quality
穿红色连衣裙的女孩 = a girl in a red dress
微笑的女人 = a smiling woman
"""


def _parse(block: str) -> list[tuple[str, str]]:
    pairs = []
    for line in block.strip().splitlines():
        src, tgt = (part.strip() for part in line.split("="))
        pairs.append((src, tgt))
    return pairs


#: The parallel corpus (source, English) the demo model is trained on -- and all it can translate.
DEMO_PAIRS: list[tuple[str, str]] = _parse(_ES) + _parse(_FR) + _parse(_ZH)

UNK, EOS, PAD = "<unk>", "</s>", "<pad>"

# Model dims (see the module docstring). max_position_embeddings bounds source and target length.
_DIMS = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
_MIN_STEPS = 300  # the corpus is usually reproduced after ~100 steps; the rest is margin (loss -> ~1e-3)
_MAX_STEPS = 3000
_CHECK_EVERY = 50
_LR = 1e-2


def _train_spm(workdir: Path) -> Path:
    """A joint SentencePiece unigram model over both sides of the corpus; returns the .model path.

    Trained from an iterator into memory, so that no temporary path ends up in the model's stored
    TrainerSpec: the file is byte-identical from build to build."""
    lines = [s for s, _ in DEMO_PAIRS] + [t for _, t in DEMO_PAIRS]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="unigram",
        vocab_size=400,
        hard_vocab_limit=False,  # "at most": the tiny corpus has fewer possible pieces
        character_coverage=1.0,  # keep every CJK character
        # Marian's specials: </s>, <unk>, <pad>; no <s> (Marian starts decoding with <pad>)
        unk_id=0, unk_piece=UNK, eos_id=1, eos_piece=EOS, pad_id=2, pad_piece=PAD, bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    path = workdir / "joint.model"
    path.write_bytes(buf.getvalue())
    return path


def _marian_vocab(spm_model: Path) -> dict[str, int]:
    """Marian id layout: </s>=0, <unk>=1, the pieces, <pad>=last."""
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {EOS: 0, UNK: 1}
    for piece in pieces:
        if piece not in (EOS, UNK, PAD):
            vocab[piece] = len(vocab)
    vocab[PAD] = len(vocab)
    return vocab


def _build(workdir: Path, folder: Path, seed: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    spm_model = _train_spm(workdir)
    vocab = _marian_vocab(spm_model)
    (workdir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    for name in ("source.spm", "target.spm"):
        shutil.copyfile(spm_model, workdir / name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sacremoses.*")  # optional punctuation normaliser
        tokenizer = MarianTokenizer(
            source_spm=str(workdir / "source.spm"), target_spm=str(workdir / "target.spm"),
            vocab=str(workdir / "vocab.json"), source_lang="mul", target_lang="en",
            model_max_length=_DIMS["max_position_embeddings"],
        )

    pad = vocab[PAD]
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), **_DIMS,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, activation_function="gelu",
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
        bos_token_id=None,
    )
    config.source_languages = list(SOURCE_LANGUAGES)
    config.target_language = "en"

    threads = torch.get_num_threads()
    # Single-threaded kernels: the same reduction order on every run (process-wide while it lasts).
    torch.set_num_threads(1)
    try:
        # fork_rng: the seed drives this build without disturbing the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MarianMTModel(config)
            sources = [s for s, _ in DEMO_PAIRS]
            targets = [t for _, t in DEMO_PAIRS]
            batch = tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
            labels = batch["labels"].masked_fill(batch["labels"] == pad, -100)
            optim = torch.optim.Adam(model.parameters(), lr=_LR)
            exact = False
            for step in range(1, _MAX_STEPS + 1):
                model.train()
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=labels).loss
                optim.zero_grad()
                loss.backward()
                optim.step()
                if step >= _MIN_STEPS and step % _CHECK_EVERY == 0:
                    model.eval()
                    with torch.no_grad():
                        out = model.generate(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"],
                                             num_beams=1, do_sample=False, max_new_tokens=16)
                    got = tokenizer.batch_decode(out, skip_special_tokens=True)
                    if got == targets:
                        exact = True
                        log.info("demo translator: corpus learnt exactly after %d steps (loss %.4f)",
                                 step, loss.item())
                        break
            if not exact:
                wrong = [(s, t, g) for s, t, g in zip(sources, targets, got) if t != g]
                raise RuntimeError(f"demo translator did not learn its corpus in {_MAX_STEPS} steps: "
                                   f"{wrong[:5]}")
    finally:
        torch.set_num_threads(threads)

    model.eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
        bad_words_ids=[[pad]], num_beams=1,
    )
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def ensure_demo_translator(dest: Path, seed: int = 0) -> Path:
    """Build, once, the tiny MarianMT demo translator folder at ``dest`` (see the module docstring).

    Idempotent and safe when several processes call it at once (:func:`workers.demo.publish.ensure_folder`).
    Returns ``dest``. Raises ``ValueError`` when ``dest`` already holds a demo
    translator of another seed or recipe, ``FileExistsError`` when it holds anything else, and
    ``RuntimeError`` if training did not reproduce the whole corpus (never seen; it would be a bug).
    """
    # build 2: published by workers.demo.publish (build 1 folders had no "build" key and are rebuilt)
    marker = {"kind": "atelier-demo-translator", "recipe": RECIPE_VERSION, "seed": seed, "build": 2}
    return ensure_folder(Path(dest), marker, lambda folder, work: _build(work, folder, seed),
                         marker_file=MARKER_FILE, what="demo translator")
