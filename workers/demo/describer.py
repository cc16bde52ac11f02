"""The demo Describer (``demo: describer``) and the demo translator out of English (``demo: translator-en``): tiny
random-weight transformers folders written from code (nothing is downloaded), which load like published ones.

* The Describer is a ``VisionEncoderDecoderModel`` (the architecture of ``nlpconnect/vit-gpt2-image-captioning``):
  a ViT encoder (32 x 32 input, patches of 8, width 32, one layer) and a GPT-2 decoder (width 32, one layer) with
  cross-attention, with a ``ViTImageProcessor`` and a word-level tokenizer (``tokenizer.json``, loaded as
  ``PreTrainedTokenizerFast``) over :data:`CAPTION_WORDS`. Its ``generation_config.json`` suppresses the special
  tokens but the end and asks for 4 to 12 new tokens, no word twice, so that each image gets a few words of the
  vocabulary: the words depend on the image (weights drawn wide: initializer range 1), but describe nothing.
* The translator is a ``MarianMTModel`` (the architecture of ``Helsinki-NLP/opus-mt-en-*``; width 32, one encoder
  and one decoder layer) over a word-level tokenizer of :data:`CAPTION_WORDS` and their French :data:`FRENCH_WORDS`;
  its ``generation_config.json`` asks for as many words as the input has at least, so that it turns any demo caption
  into a few French words: a translation in form only.

Both are deterministic from ``torch.manual_seed(seed)`` on one torch version; each is about 100 KB and built in about
a second.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    MarianConfig,
    MarianMTModel,
    PreTrainedTokenizerFast,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

from workers.demo.publish import ensure_folder

DESCRIBER_MARKER = "atelier_demo_describer.json"
TRANSLATOR_MARKER = "atelier_demo_translator_en.json"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
#: The demo Describer's words (after the special tokens).
CAPTION_WORDS = ("a", "photo", "of", "the", "red", "blue", "black", "white", "dress", "shirt", "skirt", "coat",
                 "woman", "man", "model", "mannequin", "studio", "background", "wearing", "standing", "with", "in")
#: The demo translator's French words.
FRENCH_WORDS = ("une", "photo", "de", "la", "rouge", "bleu", "noir", "blanc", "robe", "chemise", "jupe", "manteau",
                "femme", "homme", "mannequin", "studio", "fond", "portant", "debout", "avec", "dans")
#: The language the demo translator writes (a Describer's ``translators: {fr: {demo: translator-en}}``).
DEMO_TRANSLATOR_LANGUAGE = "fr"


def _tokenizer(words: tuple[str, ...]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(dict.fromkeys((*SPECIALS, *words)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[UNK]))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=SPECIALS[PAD], bos_token=SPECIALS[BOS],
                                   eos_token=SPECIALS[EOS], unk_token=SPECIALS[UNK],
                                   model_input_names=["input_ids", "attention_mask"])


def write_demo_describer(folder: Path, seed: int = 0) -> Path:
    """Save the demo VisionEncoderDecoder captioner, its processor and tokenizer into ``folder``."""
    tokenizer = _tokenizer(CAPTION_WORDS)
    encoder = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, initializer_range=1.0)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=PAD, add_cross_attention=True, is_decoder=True,
                         initializer_range=1.0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id = BOS, PAD, EOS
    gen.min_new_tokens, gen.max_new_tokens, gen.suppress_tokens = 4, 12, [PAD, BOS, UNK]
    gen.no_repeat_ngram_size = 1
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_demo_translator_en(folder: Path, seed: int = 0) -> Path:
    """Save the demo English -> French MarianMT model and its tokenizer into ``folder``; its config.json says
    ``source_languages: [en]``, ``target_language: fr``."""
    tokenizer = _tokenizer((*CAPTION_WORDS, *FRENCH_WORDS))
    config = MarianConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS,
                          decoder_start_token_id=PAD, bos_token_id=BOS, forced_eos_token_id=EOS, init_std=1.0)
    config.source_languages, config.target_language = ["en"], DEMO_TRANSLATOR_LANGUAGE
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    french = {tokenizer.convert_tokens_to_ids(w) for w in FRENCH_WORDS}
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.decoder_start_token_id = PAD, EOS, PAD
    gen.min_new_tokens, gen.max_new_tokens, gen.no_repeat_ngram_size = 3, 12, 1
    gen.suppress_tokens = [i for i in range(len(tokenizer)) if i not in french and i != EOS]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ensure_demo_describer(dest: Path) -> Path:
    """Build, once, the demo Describer folder ``dest``; returns it."""
    marker = {"kind": "atelier-demo-describer", "architecture": "VisionEncoderDecoder", "build": 1}
    return ensure_folder(Path(dest), marker, lambda folder, work: write_demo_describer(folder),
                         marker_file=DESCRIBER_MARKER, what="demo describer")


def ensure_demo_translator_en(dest: Path) -> Path:
    """Build, once, the demo English -> French translator folder ``dest``; returns it."""
    marker = {"kind": "atelier-demo-translator-en", "architecture": "MarianMT", "target": DEMO_TRANSLATOR_LANGUAGE,
              "build": 1}
    return ensure_folder(Path(dest), marker, lambda folder, work: write_demo_translator_en(folder),
                         marker_file=TRANSLATOR_MARKER, what="demo translator")
