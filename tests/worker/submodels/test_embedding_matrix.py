"""Textual-inversion embeddings in every format A1111, ComfyUI, kohya and diffusers write, on the tiny SD 1.5-
and SDXL-layout models, through the production path (``apply_submodels`` with the worker's cached reader).

The oracle does not use ``workers.submodels.embedding``: the prompt is tokenized by the base tokenizer with each
trigger word replaced by the embedding's ``n`` placeholder ids, which index rows appended to a deep copy of the
text encoder's token-embedding matrix holding the file's vectors (CLIPTextModel takes no ``inputs_embeds``);
that copy's output must equal what the pipeline's ``encode_prompt`` gives while the embedding is applied (SDXL:
both encoders' penultimate hidden states, concatenated, and the second encoder's pooled output). After each
``with`` block the tokenizer(s) and text encoder(s) must be exactly the base again.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from support.embedding_files import SD15_FORMATS, SDXL_FORMATS, vectors, write_sd15, write_sdxl
from support.models import load_folder
from support.tiny import build_sd15, build_sdxl
from workers.models.cache import ModelCache
from workers.models.kinds import Loaders, WorkerModels
from workers.submodels.apply import apply_submodels
from workers.submodels.embedding import SDXLEmbedding, read_embedding
from workers.submodels.spec import SubmodelError, SubModelSpec

WIDTH = 32  # both text encoders of the tiny models


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"sd15": build_sd15(root / "sd15", in_channels=9), "sdxl": build_sdxl(root / "sdxl")}


@pytest.fixture(scope="module")
def pipes(folders) -> dict:
    """SD 1.5; SDXL as loaded (two tokenizer objects); SDXL with one tokenizer object for both encoders, as
    the tiny model is built."""
    shared = load_folder(folders["sdxl"], family="sdxl")
    shared.tokenizer_2 = shared.tokenizer
    assert shared.tokenizer_2 is shared.tokenizer
    separate = load_folder(folders["sdxl"], family="sdxl")
    assert separate.tokenizer_2 is not separate.tokenizer
    pipes = {"sd15": load_folder(folders["sd15"]), "sdxl": separate, "sdxl-shared-tokenizer": shared}
    for pipe in pipes.values():  # transformers sets up its output-capturing hooks on the first call
        encode(pipe, "warm up", "warm up")
    return pipes


@pytest.fixture
def read():
    """How a job reads its submodel files: through the worker's model cache, held for the job."""
    models = WorkerModels(ModelCache(device_bytes=0, host_bytes=256 * 1024**2, device="cpu"), device="cpu",
                          dtype=torch.float32, models_dir=Path("/nonexistent"), loaders=Loaders())
    with models.cache.lease() as lease:
        yield lambda s: models.submodel(lease, s)


@dataclass
class Emb:
    """An embedding file under test and the vectors written into it (``clip_g`` for SDXL files)."""
    trigger: str
    path: Path
    clip_l: torch.Tensor
    clip_g: torch.Tensor | None = None

    def spec(self, code: str = "emb") -> SubModelSpec:
        return SubModelSpec(model_code=code, model_type="Embedding", path=self.path, trigger_words=[self.trigger])

    @property
    def n(self) -> int:
        return self.clip_l.shape[0]


def sd15_emb(fmt: str, folder: Path, n: int, seed: int, trigger: str = "MyBrand") -> Emb:
    vecs = vectors(seed, n, WIDTH)
    return Emb(trigger, write_sd15(fmt, folder, vecs), vecs)


def sdxl_emb(fmt: str, folder: Path, n: int, seed: int, trigger: str = "MyBrand") -> Emb:
    clip_l, clip_g = vectors(seed, n, WIDTH), vectors(seed + 1000, n, WIDTH)
    return Emb(trigger, write_sdxl(fmt, folder, clip_l, clip_g), clip_l, clip_g)


# ------------------------------------------------------------------------------------------ the oracle

def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def encoder_with_rows(text_encoder, rows: torch.Tensor):
    """A deep copy of ``text_encoder`` with ``rows`` appended to its token-embedding matrix; the first new id."""
    te = copy.deepcopy(text_encoder)
    old = te.get_input_embeddings()
    new = torch.nn.Embedding(old.num_embeddings + rows.shape[0], old.embedding_dim)
    new.weight.data = torch.cat([old.weight.data, rows.to(old.weight.dtype)])
    te.set_input_embeddings(new)
    return te, old.num_embeddings


def reference_ids(tokenizer, parts: list, placeholders: list[list[int]]) -> torch.Tensor:
    """``parts``: text, or ``(i, spelling)`` for embedding ``i``'s trigger word, which becomes
    ``placeholders[i]``; with BOS, EOS and padding to the tokenizer's length, as the pipeline asks for."""
    ids = [tokenizer.bos_token_id]
    for part in parts:
        ids += placeholders[part[0]] if isinstance(part, tuple) else tokenizer(part, add_special_tokens=False).input_ids
    length = tokenizer.model_max_length
    ids = ids[: length - 1] + [tokenizer.eos_token_id]
    return torch.tensor([ids + [tokenizer.pad_token_id] * (length - len(ids))])


def reference(pipe, embs: list[Emb], parts: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text encoders' output for ``parts`` computed by hand: ``(prompt_embeds, pooled or None)``. Call it
    on the base pipeline (outside the ``with`` block)."""
    encoders = [(pipe.tokenizer, pipe.text_encoder, "clip_l")]
    if is_sdxl(pipe):
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"))
    hidden, pooled = [], None
    for tokenizer, text_encoder, key in encoders:
        te, first = encoder_with_rows(text_encoder, torch.cat([getattr(e, key) for e in embs]))
        starts = [first + sum(e.n for e in embs[:i]) for i in range(len(embs))]
        placeholders = [list(range(start, start + e.n)) for start, e in zip(starts, embs)]
        with torch.no_grad():
            out = te(reference_ids(tokenizer, parts, placeholders), output_hidden_states=True)
        if is_sdxl(pipe):
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's (text_embeds of CLIPTextModelWithProjection)
        else:
            hidden.append(out[0])
    return torch.cat(hidden, dim=-1), pooled


def text(parts: list) -> str:
    return "".join(p[1] if isinstance(p, tuple) else p for p in parts)


def encode(pipe, prompt: str, negative: str | None = None) -> dict[str, torch.Tensor]:
    """What the pipeline itself feeds its UNet, from ``encode_prompt``."""
    guidance = negative is not None
    with torch.no_grad():
        if is_sdxl(pipe):
            pe, npe, pooled, npooled = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                          do_classifier_free_guidance=guidance,
                                                          negative_prompt=negative)
            out = {"embeds": pe, "pooled": pooled, "negative": npe, "negative_pooled": npooled}
        else:
            pe, npe = pipe.encode_prompt(prompt, "cpu", 1, guidance, negative_prompt=negative)
            out = {"embeds": pe, "negative": npe}
    return {k: v for k, v in out.items() if v is not None}


def assert_matches(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- leaving no trace

def snapshot(pipe) -> dict:
    """Everything an embedding could leave behind in the tokenizer(s), the text encoder(s) and the pipeline."""
    state: dict = {"pipe": sorted(vars(pipe)), "components": {k: id(v) for k, v in pipe.components.items()}}
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            backend = json.loads(tok.backend_tokenizer.to_str())
            for per_call in ("padding", "truncation"):  # set by each call of the tokenizer, not by an embedding
                backend.pop(per_call)
            state[name] = (len(tok), id(tok._tokenizer), tok.get_vocab(), str(tok.added_tokens_decoder), backend)
    for name in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, name, None)
        if te is None:
            continue
        emb = te.get_input_embeddings()
        state[name] = {
            "embedding": (id(emb), tuple(emb.weight.shape), emb.weight.detach().clone()),
            "params": {n: (id(p), p.data_ptr(), p.detach().clone()) for n, p in te.named_parameters()},
            "buffers": {n: b.clone() for n, b in te.named_buffers()},
            "modules": [(n, type(m), id(m), sorted(vars(m))) for n, m in te.named_modules()],
            "config": te.config.to_dict(),
            "attrs": {k: id(v) for k, v in vars(te).items()},
        }
    return state


def assert_same(before, after, where: str = "pipeline") -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and before.shape == after.shape and torch.equal(before, after), where
    elif isinstance(before, dict):
        assert isinstance(after, dict) and before.keys() == after.keys(), where
        for key in before:
            assert_same(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, (list, tuple)):
        assert type(after) is type(before) and len(before) == len(after), where
        for i, (b, a) in enumerate(zip(before, after)):
            assert_same(b, a, f"{where}[{i}]")
    else:
        assert before == after, where


def check_against_oracle(pipe, read, embs: list[Emb], parts: list, negative_parts: list | None = None) -> None:
    """The whole row: the oracle before, the pipeline's encoding while applied, the base exactly after."""
    prompt, negative = text(parts), (text(negative_parts) if negative_parts else None)
    before, base = snapshot(pipe), encode(pipe, prompt, negative)
    expected, pooled = reference(pipe, embs, parts)
    with apply_submodels(pipe, [e.spec(f"emb{i}") for i, e in enumerate(embs)], read):
        got = encode(pipe, prompt, negative)
    assert_matches(got["embeds"], expected)
    assert (got["embeds"] - base["embeds"]).abs().max() > 0.05  # the vectors reached the encoder
    if pooled is not None:
        assert_matches(got["pooled"], pooled)
    if negative_parts:
        expected_negative, negative_pooled = reference(pipe, embs, negative_parts)
        assert_matches(got["negative"], expected_negative)
        if negative_pooled is not None:
            assert_matches(got["negative_pooled"], negative_pooled)
    assert_same(before, snapshot(pipe))
    after = encode(pipe, prompt, negative)
    for key, value in base.items():
        assert torch.equal(after[key], value), key


# ------------------------------------------------------------------------------------------------ rows

@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("fmt", SD15_FORMATS)
def test_sd15_embedding_formats_match_the_hand_computed_encoding(pipes, read, tmp_path, fmt, n):
    emb = sd15_emb(fmt, tmp_path, n, seed=10 + n)
    read_back = read_embedding(emb.path)
    assert isinstance(read_back, torch.Tensor) and torch.equal(read_back, emb.clip_l)
    # the trigger word in another case than the models config writes it
    check_against_oracle(pipes["sd15"], read, [emb], ["a photo of ", (0, "mYbRaNd"), ", red dress"])


@pytest.mark.parametrize("tokenizers", ["sdxl", "sdxl-shared-tokenizer"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("fmt", SDXL_FORMATS)
def test_sdxl_embedding_formats_match_the_hand_computed_encoding(pipes, read, tmp_path, fmt, n, tokenizers):
    emb = sdxl_emb(fmt, tmp_path, n, seed=20 + n)
    read_back = read_embedding(emb.path)
    assert isinstance(read_back, SDXLEmbedding)
    assert torch.equal(read_back.clip_l, emb.clip_l) and torch.equal(read_back.clip_g, emb.clip_g)
    check_against_oracle(pipes[tokenizers], read, [emb], ["a photo of ", (0, "MYBRAND"), ", red dress"])


@pytest.mark.parametrize("model", ["sd15", "sdxl", "sdxl-shared-tokenizer"])
def test_the_trigger_word_matches_in_any_case_and_spacing_every_time_and_in_the_negative_prompt(
        pipes, read, tmp_path, model):
    pipe = pipes[model]
    make = sdxl_emb if is_sdxl(pipe) else sd15_emb
    emb = make("sdxl_safetensors" if is_sdxl(pipe) else "a1111_pt", tmp_path, 3, seed=31, trigger="Brand  Style")
    parts = [(0, "brand style"), " and ", (0, "BRAND   STYLE"), ", (", (0, "Brand Style"), ":1.2)"]
    check_against_oracle(pipe, read, [emb], parts, negative_parts=["blurry, ", (0, "bRaNd StYlE")])


@pytest.mark.parametrize("model", ["sd15", "sdxl", "sdxl-shared-tokenizer"])
def test_a_trigger_word_inside_a_longer_word_is_left_alone(pipes, read, tmp_path, model):
    """As in A1111, which matches the trigger's token sequence: "mybrands" and "xmybrand" are other words."""
    pipe = pipes[model]
    emb = (sdxl_emb("sdxl_pt", tmp_path, 3, 41) if is_sdxl(pipe) else sd15_emb("a1111_safetensors", tmp_path, 3, 41))
    prompt = "mybrands, xmybrand, my_brand"
    base = encode(pipe, prompt)
    with apply_submodels(pipe, [emb.spec()], read):
        assert torch.equal(encode(pipe, prompt)["embeds"], base["embeds"])
        assert not torch.equal(encode(pipe, prompt + ", mybrand")["embeds"], encode(pipe, prompt + ", x")["embeds"])


@pytest.mark.parametrize("model", ["sd15", "sdxl", "sdxl-shared-tokenizer"])
def test_two_embeddings_at_once_each_with_its_vectors(pipes, read, tmp_path, model):
    pipe = pipes[model]
    if is_sdxl(pipe):
        embs = [sdxl_emb("sdxl_safetensors", tmp_path / "a", 3, 51, trigger="MyBrand"),
                sdxl_emb("sdxl_pt", tmp_path / "b", 2, 52, trigger="OtherStyle")]
    else:
        embs = [sd15_emb("a1111_pt", tmp_path / "a", 3, 51, trigger="MyBrand"),
                sd15_emb("diffusers_bin", tmp_path / "b", 1, 52, trigger="OtherStyle")]
    parts = [(1, "otherstyle"), ", ", (0, "MyBrand"), " dress, ", (1, "OTHERSTYLE")]
    check_against_oracle(pipe, read, embs, parts, negative_parts=[(0, "mybrand"), ", lowres"])


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_one_trigger_word_inside_another_multi_word_one(pipes, read, tmp_path, model):
    """Triggers "style" and "brand style": each phrase gets its own embedding's vectors, whatever the order of
    the SubModelList, and "style" inside the expansion of "brand style" is not expanded again."""
    pipe = pipes[model]
    make, fmt = (sdxl_emb, "sdxl_safetensors") if is_sdxl(pipe) else (sd15_emb, "a1111_pt")
    embs = [make(fmt, tmp_path / "a", 3, 61, trigger="style"), make(fmt, tmp_path / "b", 2, 62, trigger="Brand Style")]
    parts = [(1, "brand style"), ", ", (0, "Style"), ", brand, ", (1, "BRAND STYLE")]
    check_against_oracle(pipe, read, embs, parts)
    check_against_oracle(pipe, read, embs[::-1], [(1 - p[0], p[1]) if isinstance(p, tuple) else p for p in parts])


# ---------------------------------------------------------------------------------------------- refusals

def _width_48(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.ones(2, 48)}, "name": "wide"}, folder / "wide.pt")
    return folder / "wide.pt"


def _clip_g_only(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"clip_g": torch.ones(1, WIDTH)}, str(folder / "g.safetensors"))
    return folder / "g.safetensors"


REFUSALS = {  # case: (model, writer of the bad file, what the message must say)
    "sd1x-on-sdxl": ("sdxl", lambda d: sd15_emb("a1111_pt", d, 2, 71).path,
                     ["an SD 1.x embedding; this model is SDXL"]),
    "sd1x-on-sdxl-shared-tokenizer": ("sdxl-shared-tokenizer",
                                      lambda d: sd15_emb("diffusers_safetensors", d, 1, 72).path,
                                      ["an SD 1.x embedding; this model is SDXL"]),
    "sdxl-on-sd15": ("sd15", lambda d: sdxl_emb("sdxl_safetensors", d, 2, 73).path,
                     ["an SDXL embedding", "this model is SD 1.x"]),
    "width-on-sd15": ("sd15", _width_48, ["width 48 fits no text encoder", "another base model"]),
    "width-on-sdxl": ("sdxl", _width_48, ["width 48 fits no text encoder", "another base model"]),
    "sdxl-widths": ("sdxl", lambda d: write_sdxl("sdxl_safetensors", d, torch.ones(2, WIDTH), torch.ones(2, 48)),
                    ["clip_g 48", "fit no text encoder", "another base model"]),
    "sdxl-uneven": ("sdxl", lambda d: write_sdxl("sdxl_pt", d, torch.ones(2, WIDTH), torch.ones(3, WIDTH)),
                    ["2 clip_l and 3 clip_g vectors"]),
    "clip-g-only": ("sdxl", _clip_g_only, ["clip_g vectors without clip_l"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_an_embedding_for_another_kind_of_model_is_refused_and_the_pipeline_stays_the_base(pipes, read, tmp_path,
                                                                                        case):
    model, write, words = REFUSALS[case]
    pipe = pipes[model]
    make, fmt = (sdxl_emb, "sdxl_pt") if is_sdxl(pipe) else (sd15_emb, "a1111_safetensors")
    good = make(fmt, tmp_path / "good", 2, 79, trigger="goodstyle")  # applied first, then undone
    bad = SubModelSpec(model_code="bad-emb", model_type="Embedding", path=write(tmp_path / "bad"),
                       trigger_words=["badstyle"])
    before = snapshot(pipe)
    with pytest.raises(SubmodelError) as info:
        with apply_submodels(pipe, [good.spec("good-emb"), bad], read):
            pytest.fail("the job must not run")
    assert info.value.model_code == "bad-emb"
    message = str(info.value)
    assert message.startswith("submodel bad-emb: ") and "\n" not in message
    for word in words:
        assert word in message
    assert_same(before, snapshot(pipe))
