"""Submodels (LoRA, embeddings, hypernetworks) on the tiny demo pipeline, on the CPU: every kind changes the
image, the files of each real format load, the base pipeline comes back exactly (modules, parameters,
tokenizer, outputs) after every job, errors name the model, and files are read once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from support.models import load_folder
from workers.demo import submodels as demo
from workers.inference.compose import prepare
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models.cache import ModelCache
from workers.models.kinds import Loaders, WorkerModels
from workers.submodels import embedding, hypernetwork
from workers.submodels.apply import apply_submodels, read_submodel
from workers.submodels.lora import read_lora
from workers.submodels.spec import SubmodelError, SubModelSpec, build_prompt

STEPS = 2
TRIGGER = "MyBrand"
PROMPT = build_prompt(["a woman in a dress"], [TRIGGER])


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("submodels")
    return {
        "kohya_a": demo.write_demo_lora_kohya(d / "brand_a.safetensors", seed=1),
        "kohya_b": demo.write_demo_lora_kohya(d / "brand_b.safetensors", seed=2),
        "peft": demo.write_demo_lora_peft(d / "peft_lora", seed=3).parent,  # the folder
        "emb_pt": demo.write_demo_embedding_a1111(d / "brand.pt", seed=4, n_vectors=3),
        "emb_st": demo.write_demo_embedding_safetensors(d / "brand_emb.safetensors", seed=4, n_vectors=3),
        "emb_diffusers": demo.write_demo_embedding_diffusers(d / "ti", seed=4, n_vectors=3),
        "emb_other": demo.write_demo_embedding_a1111(d / "other.pt", seed=5, n_vectors=3),
        "hn": demo.write_demo_hypernetwork(d / "hn.pt", seed=6),
        "hn_ln": demo.write_demo_hypernetwork(d / "hn_ln.pt", seed=7, layer_norm=True),
    }


def worker_models(host_bytes: int = 2 * 1024**3, **loaders) -> WorkerModels:
    """A worker's models with a fresh model cache (host RAM budget ``host_bytes``)."""
    cache = ModelCache(device_bytes=0, host_bytes=host_bytes, device="cpu")
    return WorkerModels(cache, device="cpu", dtype=torch.float32, models_dir=Path("/nonexistent"),
                        loaders=Loaders(**loaders))


@pytest.fixture
def read():
    """How a job reads its submodel files: through the worker's model cache, held for the job."""
    models = worker_models()
    with models.cache.lease() as lease:
        yield lambda s: models.submodel(lease, s)


@pytest.fixture(scope="module")
def comp():
    rng = np.random.default_rng(64)
    mannequin = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return prepare(mannequin, mask, 64, 64)


def generate(pipe, comp, prompt: str = PROMPT) -> np.ndarray:
    [image] = run_inpaint(pipe, comp, prompt, "blurry", Sampling(seed=5, batch_size=1, steps=STEPS, guidance_scale=7.5))
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def base_image(pipe, comp) -> np.ndarray:
    return generate(pipe, comp)


def changed(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(image - reference).mean())


def spec(code, kind, path, weight=1.0, words=()):
    return SubModelSpec(model_code=code, model_type=kind, path=path, weight=weight, trigger_words=list(words))


def fingerprint(pipe) -> dict:
    """Everything a submodel could leave behind: module tree (objects, types, attributes, hooks), parameters
    (objects, storage, shape, dtype), configs, attention processors, tokenizer, pipeline attributes."""
    fp: dict = {}
    for name in ("unet", "text_encoder", "vae"):
        model = getattr(pipe, name)
        fp[f"{name}.modules"] = [
            (n, type(m), id(m), sorted(vars(m)), m.training, len(m._forward_pre_hooks), len(m._forward_hooks))
            for n, m in model.named_modules()
        ]
        fp[f"{name}.params"] = [(n, id(p), p.data_ptr(), tuple(p.shape), p.dtype, p.requires_grad)
                                for n, p in model.named_parameters()]
        config = model.config
        fp[f"{name}.config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        fp[f"{name}.root"] = {k: id(v) for k, v in vars(model).items()
                              if k not in ("_parameters", "_buffers", "_modules")}
    fp["processors"] = {k: (type(v), id(v)) for k, v in pipe.unet.attn_processors.items()}
    tok = pipe.tokenizer
    fp["tokenizer"] = (len(tok), id(tok._tokenizer), tok.get_vocab(), str(tok.added_tokens_decoder))
    fp["pipe"] = sorted(vars(pipe))
    fp["components"] = {k: id(v) for k, v in pipe.components.items()}
    return fp


def weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.detach().clone() for c in ("unet", "text_encoder")
            for k, v in getattr(pipe, c).state_dict().items()}


@pytest.fixture(scope="module")
def base_state(pipe):
    return fingerprint(pipe), weights(pipe)


def assert_is_base(pipe, base_state) -> None:
    fp, state = base_state
    now = fingerprint(pipe)
    for key in fp:
        assert now[key] == fp[key], f"{key} differs from the base pipeline"
    current = weights(pipe)
    assert current.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(current[key], value), key


# --------------------------------------------------------------------------------- each kind's effect

@pytest.mark.parametrize("kind", ["kohya_a", "peft"])
def test_a_lora_in_either_format_changes_the_image_and_leaves_no_trace(pipe, comp, files, read, base_image,
                                                                       base_state, kind):
    before = weights(pipe)
    with apply_submodels(pipe, [spec("brand", "LoRA", files[kind])], read):
        touched = {name for name, w in weights(pipe).items() if not torch.equal(w, before[name])}
        image = generate(pipe, comp)
    assert {name.split(".")[0] for name in touched} == {"unet", "text_encoder"}  # both parts patched
    assert len(touched) == 60  # 48 UNet + 12 text-encoder layers
    assert changed(image, base_image) > 5
    assert_is_base(pipe, base_state)  # the images of a base job after it: see the test with all three kinds


def test_lora_weight_zero_gives_the_base_image_exactly_and_negative_weights_work(pipe, comp, files, read,
                                                                                 base_image):
    with apply_submodels(pipe, [spec("brand", "LoRA", files["kohya_a"], weight=0.0)], read):
        zero = generate(pipe, comp)  # applied with weight 0 (the worker leaves such a submodel out altogether)
    np.testing.assert_array_equal(zero, base_image)
    with apply_submodels(pipe, [spec("brand", "LoRA", files["kohya_a"], weight=-1.0)], read):
        negative = generate(pipe, comp)
    assert changed(negative, base_image) > 5


def test_the_layers_of_both_lora_formats_all_land_with_their_alpha(pipe, files, read):
    """kohya: alpha 2 / rank 4 per layer; peft: lora_alpha 8 / r 4 from the header metadata. Every weight of
    the 60 layers is the base plus each file's up @ down times its alpha/rank times its job weight."""
    kohya, peft = read_lora(files["kohya_a"]), read_lora(files["peft"])
    before = weights(pipe)
    specs = [spec("k", "LoRA", files["kohya_a"], weight=0.5), spec("p", "LoRA", files["peft"], weight=-1.0)]
    with apply_submodels(pipe, specs, read):
        after = weights(pipe)
    checked = 0
    def plain(name: str) -> str:  # transformers 5 drops the text_model level of CLIP's module tree
        return name.replace("text_model.", "").replace("text_model_", "")

    peft_layers = {plain(name): layer for name, layer in peft.layers.items()}
    for name, k_layer in kohya.layers.items():
        component = "unet" if name.startswith("lora_unet_") else "text_encoder"
        module = plain(name.split("_", 2)[2])
        target = next(key for key in before if key.startswith(component + ".") and key.endswith(".weight")
                      and plain(key[len(component) + 1:-len(".weight")]).replace(".", "_") == module)
        p_layer = peft_layers[plain(target[: -len(".weight")])]
        expected = before[target].clone()
        for layer, scale in ((k_layer, 0.5 * 2 / 4), (p_layer, -1.0 * 8 / 4)):
            update = layer.parts["up"].flatten(1) @ layer.parts["down"].flatten(1)
            expected += scale * update.reshape(expected.shape)
        torch.testing.assert_close(after[target], expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 60


def test_an_embedding_changes_the_image_by_its_vectors(pipe, comp, files, read, base_image, base_state):
    images = {}
    for name in ("emb_pt", "emb_other"):
        with apply_submodels(pipe, [spec("brand-emb", "Embedding", files[name], words=[TRIGGER])], read):
            images[name] = generate(pipe, comp)
        assert_is_base(pipe, base_state)
    assert changed(images["emb_pt"], base_image) > 2
    assert changed(images["emb_pt"], images["emb_other"]) > 2


@pytest.mark.parametrize("kind", ["hn", "hn_ln"])
def test_a_hypernetwork_changes_the_image_with_its_strength(pipe, comp, files, read, base_image, base_state,
                                                            kind):
    with apply_submodels(pipe, [spec("hn", "HyperNetwork", files[kind])], read):
        image = generate(pipe, comp)
    assert changed(image, base_image) > 2
    assert_is_base(pipe, base_state)
    if kind == "hn_ln":
        with apply_submodels(pipe, [spec("hn", "HyperNetwork", files[kind], weight=0.0)], read):
            zero = generate(pipe, comp)
        np.testing.assert_array_equal(zero, base_image)


def test_hypernetwork_hooks_reach_the_cross_attention_context_only_where_the_width_matches(pipe, files, read):
    hn = hypernetwork.read_hypernetwork(files["hn"])
    with hypernetwork.hypernetwork_hooks(pipe, "hn", hn) as patched:
        hooked = [name for name, m in pipe.unet.named_modules() if m._forward_pre_hooks]
    # 4 transformer blocks; the file has width 32 only: the cross-attention context, not the 64-wide attn1
    assert patched == 4
    assert sorted(hooked) == sorted(f"{block}.transformer_blocks.0.attn2.{p}"
                                    for block in demo.UNET_ATTENTION_BLOCKS for p in ("to_k", "to_v"))
    assert not [name for name, m in pipe.unet.named_modules() if m._forward_pre_hooks]


# ------------------------------------------------------------------------------ restoring the base

def test_a_base_job_after_a_job_with_all_three_kinds_is_exactly_the_base(pipe, comp, files, read, base_image,
                                                                         base_state):
    specs = [
        spec("hn", "HyperNetwork", files["hn_ln"], weight=0.7),
        spec("brand-emb", "Embedding", files["emb_pt"], words=[TRIGGER]),
        spec("brand-a", "LoRA", files["kohya_a"], weight=0.8),
        spec("brand-p", "LoRA", files["peft"], weight=-0.5),
    ]
    rng = torch.get_rng_state()
    with apply_submodels(pipe, specs, read):
        assert torch.equal(torch.get_rng_state(), rng)  # loading draws on no global random stream
        image = generate(pipe, comp)
    assert changed(image, base_image) > 5
    assert_is_base(pipe, base_state)
    np.testing.assert_array_equal(generate(pipe, comp), base_image)


def test_alternating_loras_on_one_pipeline_give_the_images_of_fresh_pipelines(pipe, comp, files, read,
                                                                              demo_dir):
    def job(p, name):
        with apply_submodels(p, [spec(name, "LoRA", files[name], weight=0.9)], read):
            return generate(p, comp)

    sequence = [job(pipe, name) for name in ("kohya_a", "kohya_b", "kohya_a")]
    fresh = {name: job(load_folder(demo_dir), name) for name in ("kohya_a", "kohya_b")}
    np.testing.assert_array_equal(sequence[0], fresh["kohya_a"])
    np.testing.assert_array_equal(sequence[1], fresh["kohya_b"])
    np.testing.assert_array_equal(sequence[2], fresh["kohya_a"])
    assert changed(fresh["kohya_a"], fresh["kohya_b"]) > 5


def test_an_error_inside_the_job_propagates_and_the_pipeline_is_restored(pipe, files, read, base_state):
    specs = [spec("brand-a", "LoRA", files["kohya_a"]), spec("e", "Embedding", files["emb_pt"], words=[TRIGGER]),
             spec("hn", "HyperNetwork", files["hn"])]
    with pytest.raises(ZeroDivisionError):
        with apply_submodels(pipe, specs, read):
            raise ZeroDivisionError  # whatever the job raises
    assert_is_base(pipe, base_state)


# ------------------------------------------------------------------------------------- bad files

def _truncated(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes()[:300])
    return dest


def _lora_with(src: Path, dest: Path, extra: dict[str, torch.Tensor]) -> Path:
    tensors = load_file(str(src))
    tensors.update(extra)
    save_file(tensors, str(dest))
    return dest


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "embedding-as-lora", "lora-as-embedding",
                                  "lora-as-hypernetwork", "other-base-lora", "unmatched-layer", "other-base-embedding",
                                  "other-base-hypernetwork", "trigger-in-vocabulary"])
def test_a_bad_file_raises_a_submodel_error_naming_it_and_the_pipeline_stays_the_base(pipe, files, read,
                                                                                      base_state, tmp_path, case):
    rank = demo.DEMO_LORA_RANK
    bad = {
        "missing": lambda: spec("bad-model", "LoRA", tmp_path / "nope.safetensors"),
        "truncated": lambda: spec("bad-model", "LoRA", _truncated(files["kohya_a"], tmp_path / "t.safetensors")),
        "garbage": lambda: spec("bad-model", "HyperNetwork", _garbage(tmp_path / "g.pt")),
        "embedding-as-lora": lambda: spec("bad-model", "LoRA", files["emb_pt"]),
        "lora-as-embedding": lambda: spec("bad-model", "Embedding", files["kohya_a"], words=["x"]),
        "lora-as-hypernetwork": lambda: spec("bad-model", "HyperNetwork", files["kohya_a"]),
        # the UNet part loads, then the text encoder's does not fit: the half-loaded adapter must go too
        "other-base-lora": lambda: spec("bad-model", "LoRA", _lora_with(files["kohya_a"], tmp_path / "o.safetensors", {
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(rank, 768)})),
        "unmatched-layer": lambda: spec("bad-model", "LoRA", _lora_with(files["kohya_a"], tmp_path / "x.safetensors", {
            "lora_unet_down_blocks_2_attentions_0_proj_in.lora_down.weight": torch.zeros(rank, 64, 1, 1),
            "lora_unet_down_blocks_2_attentions_0_proj_in.lora_up.weight": torch.zeros(64, rank, 1, 1),
            "lora_unet_down_blocks_2_attentions_0_proj_in.alpha": torch.tensor(2.0)})),
        "other-base-embedding": lambda: spec("bad-model", "Embedding", _embedding_768(tmp_path / "e768.pt"),
                                             words=["brandx"]),
        "other-base-hypernetwork": lambda: spec("bad-model", "HyperNetwork",
                                                demo.write_demo_hypernetwork(tmp_path / "h.pt", 1, widths=(768,))),
        # "a" is a token of the vocabulary: fails after the LoRA before it was loaded
        "trigger-in-vocabulary": lambda: spec("bad-model", "Embedding", files["emb_pt"], words=["a"]),
    }[case]()
    good = [spec("good-lora", "LoRA", files["kohya_b"]), spec("good-hn", "HyperNetwork", files["hn"])]
    with pytest.raises(SubmodelError) as info:
        with apply_submodels(pipe, [good[0], bad, good[1]], read):
            pytest.fail("the job must not run")
    assert info.value.model_code == "bad-model"
    assert str(info.value).startswith("submodel bad-model: ")
    assert "\n" not in str(info.value)
    assert_is_base(pipe, base_state)


def _garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)
    return path


def _embedding_768(path: Path) -> Path:
    torch.save({"string_to_param": {"*": torch.ones(2, 768)}, "name": "x"}, path)
    return path


def test_bad_file_messages_say_what_is_wrong(pipe, files, read, tmp_path):
    def message(s):
        with pytest.raises(SubmodelError) as info:
            with apply_submodels(pipe, [s], read):
                pass
        return str(info.value)

    assert "file not found" in message(spec("m", "LoRA", tmp_path / "nope.safetensors"))
    truncated = _truncated(files["kohya_a"], tmp_path / "t.safetensors")
    assert "corrupt or truncated" in message(spec("m", "LoRA", truncated))
    assert "not a textual-inversion embedding" in message(spec("m", "Embedding", files["kohya_a"], words=["x"]))
    assert "another base model" in message(spec("m", "Embedding", _embedding_768(tmp_path / "e.pt"), words=["x"]))
    assert "LoraWeight must be within -1..2" in message(spec("m", "LoRA", files["kohya_a"], weight=2.5))
    assert "needs a trigger word" in message(spec("m", "Embedding", files["emb_pt"]))


# ------------------------------------------------------------------------------------------ embeddings

def test_embedding_removal_restores_tokenizer_and_embedding_matrix_exactly(pipe, files, read):
    tok, te = pipe.tokenizer, pipe.text_encoder
    before_len, before_matrix = len(tok), te.get_input_embeddings().weight.detach().clone()
    before_vocab_size = te.config.vocab_size
    with apply_submodels(pipe, [spec("e", "Embedding", files["emb_pt"], words=[TRIGGER]),
                                spec("e2", "Embedding", files["emb_other"], words=["otherstyle"])], read):
        assert len(tok) == before_len + 6  # two 3-vector embeddings: token, token_1, token_2 each
        assert te.get_input_embeddings().weight.shape[0] == before_len + 6
        assert "mybrand_2" in tok.get_vocab()
    assert len(tok) == before_len
    assert not any(t.startswith(("mybrand", "otherstyle")) for t in tok.get_vocab())
    matrix = te.get_input_embeddings().weight
    assert matrix.shape == before_matrix.shape
    assert torch.equal(matrix, before_matrix)
    assert te.config.vocab_size == before_vocab_size


def test_all_embedding_formats_load_the_same_vectors_and_match_the_trigger_in_any_case(pipe, comp, files, read):
    images = {}
    for name in ("emb_pt", "emb_st", "emb_diffusers"):
        with apply_submodels(pipe, [spec("e", "Embedding", files[name], words=[TRIGGER])], read):
            images[name] = generate(pipe, comp)
            if name == "emb_pt":
                images["upper"] = generate(pipe, comp, PROMPT.replace(TRIGGER, TRIGGER.upper()))
    np.testing.assert_array_equal(images["emb_st"], images["emb_pt"])
    np.testing.assert_array_equal(images["emb_diffusers"], images["emb_pt"])
    np.testing.assert_array_equal(images["upper"], images["emb_pt"])


def test_every_vector_of_a_multi_vector_embedding_reaches_the_text_encoder(pipe, files, read):
    """The tokenizer lowercases; diffusers expands ``token`` into ``token token_1 ...`` case-sensitively."""
    seen: list[list[int]] = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].tolist()))
    try:
        with apply_submodels(pipe, [spec("e", "Embedding", files["emb_pt"], words=[TRIGGER])], read):
            ids = [pipe.tokenizer.convert_tokens_to_ids(t) for t in ("mybrand", "mybrand_1", "mybrand_2")]
            pipe.encode_prompt(PROMPT, "cpu", 1, False)
    finally:
        handle.remove()
    assert len(seen) == 1
    position = seen[0].index(ids[0])
    assert seen[0][position:position + 3] == ids
    assert "maybe_convert_prompt" not in vars(pipe)


def test_read_embedding_formats(files, tmp_path):
    a1111 = embedding.read_embedding(files["emb_pt"])
    assert a1111.shape == (3, demo.TEXT_WIDTH) and a1111.dtype == torch.float32
    assert torch.equal(embedding.read_embedding(files["emb_st"]), a1111)
    assert torch.equal(embedding.read_embedding(files["emb_diffusers"].parent), a1111)  # the folder
    single = demo.write_demo_embedding_diffusers(tmp_path / "one.bin", seed=9)
    assert embedding.read_embedding(single).shape == (1, demo.TEXT_WIDTH)


# -------------------------------------------------------------------------------------- the cache

def test_each_file_is_read_once_and_served_from_the_model_cache(pipe, files, monkeypatch):
    reads: list[Path] = []

    def counting(spec, file):
        reads.append(file)
        return read_submodel(spec, file)

    models = worker_models(submodel=counting)
    for name in ("kohya_a", "kohya_b", "kohya_a", "kohya_b", "kohya_a"):
        with models.cache.lease() as lease, \
                apply_submodels(pipe, [spec(name, "LoRA", files[name])], lambda s: models.submodel(lease, s)):
            pass
    assert [p.name for p in reads] == ["brand_a.safetensors", "brand_b.safetensors"]
    assert (models.cache.stats.loads, models.cache.stats.hits) == (2, 3)
    assert [label for label, _ in models.cache.cached("host")] == ["kohya_b", "kohya_a"]
    # the cached tensors are shared with the adapters while a job runs: they must come out unchanged
    with models.cache.lease() as lease:
        cached = models.submodel(lease, spec("kohya_a", "LoRA", files["kohya_a"]))
    on_disk = load_file(str(files["kohya_a"]))
    roles = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
    for key, value in on_disk.items():
        layer, part = key.split(".", 1)
        assert torch.equal(cached.layers[layer].parts[roles[part]], value), key


def test_submodel_files_are_lru_by_bytes_in_host_ram_and_a_changed_file_is_read_again(tmp_path):
    def tensor_file(name, n_floats):
        path = tmp_path / name
        torch.save(torch.ones(n_floats), path)
        return path

    a, b, c = tensor_file("a.pt", 100), tensor_file("b.pt", 100), tensor_file("c.pt", 100)
    reads: list[str] = []

    def reader(spec, file):
        reads.append(file.name)
        return torch.load(file, weights_only=True)

    models = worker_models(host_bytes=900, submodel=reader)  # room for two 400-byte tensors

    def get(path):
        with models.cache.lease() as lease:
            return models.submodel(lease, spec(path.stem, "HyperNetwork", path))

    for path in (a, b, a, c, a, b):
        get(path)
    assert reads == ["a.pt", "b.pt", "c.pt", "b.pt"]  # c evicted b (least recently used), not a
    assert models.cache.used_bytes("host") == 800 and len(models.cache.cached("host")) == 2
    torch.save(torch.zeros(100), a)  # a new version of a file is read again, the old one dropped
    assert torch.equal(get(a), torch.zeros(100))
    assert reads[-1] == "a.pt" and models.cache.used_bytes("host") == 800
    huge = tensor_file("huge.pt", 1000)
    get(huge)
    get(huge)
    assert reads[-1] == "huge.pt" and reads.count("huge.pt") == 1  # larger than the budget: kept, alone
    assert [label for label, _ in models.cache.cached("host")] == ["huge"]
    get(b)
    assert reads[-1] == "b.pt" and [label for label, _ in models.cache.cached("host")] == ["b"]


# --------------------------------------------------------------------------- names, prompts, formats

def test_build_prompt_adds_trigger_words_first_without_duplicates():
    assert build_prompt(["a woman in a dress"], ["fashion photo", "MyBrand", "Fashion  Photo", "dress", "mybrand"]) \
        == "fashion photo, MyBrand, a woman in a dress"
    assert build_prompt(["two dresses"], ["dress"]) == "dress, two dresses"  # whole words only
    assert build_prompt(["", "  red  coat ", "studio"], ["", " ", "brand style", "brand"]) == \
        "brand style, red coat, studio"
    assert build_prompt([], ["x"]) == "x"
    assert build_prompt(["a cat"], []) == "a cat"


def test_the_light_part_of_the_package_imports_no_torch():
    code = ("import sys, workers.submodels.spec as s; s.build_prompt(['a'], ['b']); s.SubModelSpec('m', 'LoRA', 'x'); "
            "print([m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_kohya_file_layout(files):
    with safe_open(str(files["kohya_a"]), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        block = "lora_unet_down_blocks_1_attentions_0"
        assert tuple(f.get_slice(f"{block}_transformer_blocks_0_attn2_to_k.lora_down.weight").get_shape()) == (4, 32)
        assert tuple(f.get_slice(f"{block}_transformer_blocks_0_attn2_to_k.lora_up.weight").get_shape()) == (64, 4)
        assert tuple(f.get_slice(f"{block}_proj_in.lora_down.weight").get_shape()) == (4, 64, 1, 1)
        assert tuple(f.get_slice("lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight").get_shape()) \
            == (4, 64)
        assert f.get_tensor(f"{block}_proj_in.alpha").item() == 2.0
    assert len(keys) == 60 * 3
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_module"] == "networks.lora"


def test_peft_file_layout(files):
    with safe_open(str(files["peft"] / demo.PEFT_LORA_WEIGHT_NAME), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert len(keys) == 60 * 2
    assert "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
    config = json.loads(metadata["lora_adapter_metadata"])
    assert (config["unet.r"], config["unet.lora_alpha"], config["text_encoder.lora_alpha"]) == (4, 8.0, 8.0)


def test_a1111_embedding_and_hypernetwork_layouts(files, tmp_path):
    emb = torch.load(files["emb_pt"], weights_only=True)
    assert set(emb) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert emb["string_to_param"]["*"].shape == (3, 32) and emb["name"] == "brand"

    def layout(path):
        data = torch.load(path, weights_only=True)
        k, v = data[32]
        assert list(k) == list(v)
        return data, {name: tuple(t.shape) for name, t in k.items()}

    data, plain = layout(files["hn"])
    assert plain == {"linear.0.weight": (64, 32), "linear.0.bias": (64,),  # linear.1 = ReLU
                     "linear.2.weight": (32, 64), "linear.2.bias": (32,)}
    assert data["layer_structure"] == [1, 2, 1] and data["activation_func"] == "relu"
    assert data["activate_output"] is False and data["is_layer_norm"] is False
    _, with_norm = layout(files["hn_ln"])
    assert with_norm == {"linear.0.weight": (64, 32), "linear.0.bias": (64,),  # linear.1 = ReLU
                         "linear.2.weight": (64,), "linear.2.bias": (64,),  # LayerNorm(64)
                         "linear.3.weight": (32, 64), "linear.3.bias": (32,),
                         "linear.4.weight": (32,), "linear.4.bias": (32,)}  # LayerNorm(32)
    dropout_path = demo.write_demo_hypernetwork(tmp_path / "d.pt", 1, use_dropout=True, last_layer_dropout=True)
    data, with_dropout = layout(dropout_path)
    assert data["dropout_structure"] == [0, 0.3, 0]
    assert set(with_dropout) == {"linear.0.weight", "linear.0.bias", "linear.3.weight", "linear.3.bias"}
    # each layout loads strictly into the modules A1111 would build
    for path in (files["hn"], files["hn_ln"], dropout_path):
        hypernetwork.build_modules(hypernetwork.read_hypernetwork(path), "cpu", torch.float32)


def test_hypernetwork_reader_follows_a1111_defaults(tmp_path):
    """A file without ``activate_output`` activates the output (A1111's default), old NAI keys load."""
    w = 32
    old = {w: ({"linear1.weight": torch.ones(2 * w, w), "linear1.bias": torch.zeros(2 * w),
                "linear2.weight": torch.ones(w, 2 * w), "linear2.bias": torch.zeros(w)},) * 2}
    torch.save(old, tmp_path / "nai.pt")
    [(k, _)] = hypernetwork.build_modules(hypernetwork.read_hypernetwork(tmp_path / "nai.pt"), "cpu",
                                          torch.float32).values()
    assert [type(m).__name__ for m in k.linear] == ["Linear", "Linear"]
    relu = {"activation_func": "relu"}
    relu[w] = tuple({"linear.0.weight": torch.ones(2 * w, w), "linear.0.bias": torch.zeros(2 * w),
                     "linear.2.weight": torch.ones(w, 2 * w), "linear.2.bias": torch.zeros(w)} for _ in "kv")
    torch.save(relu, tmp_path / "relu.pt")
    [(k, _)] = hypernetwork.build_modules(hypernetwork.read_hypernetwork(tmp_path / "relu.pt"), "cpu",
                                          torch.float32).values()
    assert [type(m).__name__ for m in k.linear] == ["Linear", "ReLU", "Linear", "ReLU"]


def test_the_demo_deployment_set_is_written_once_and_applies(pipe, read, base_state, tmp_path):
    paths = demo.ensure_demo_submodels(tmp_path / "sub")
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {name for name, _ in demo.DEMO_SUBMODELS.values()}
    stamps = {name: p.stat().st_mtime_ns for name, p in paths.items()}
    assert demo.ensure_demo_submodels(tmp_path / "sub") == paths
    assert {name: p.stat().st_mtime_ns for name, p in paths.items()} == stamps
    specs = [spec(name, kind, paths[name], words=["demostyle"]) for name, (_, kind) in demo.DEMO_SUBMODELS.items()]
    before = weights(pipe)
    with apply_submodels(pipe, specs, read):
        changed_weights = {k for k, w in weights(pipe).items() if k not in before or not torch.equal(w, before[k])}
        assert len({k for k in changed_weights if "token_embedding" not in k}) == 60  # the two LoRAs. layers
    assert_is_base(pipe, base_state)


def test_demo_files_are_deterministic_from_the_seed(tmp_path):
    """Same seed, same tensors and header (safetensors writes the header's entries in hash order, so the
    bytes may differ); another seed, other tensors."""
    def content(path):
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    def same(a, b):
        return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])

    kohya = content(demo.write_demo_lora_kohya(tmp_path / "1" / "brand.safetensors", seed=3))
    assert same(content(demo.write_demo_lora_kohya(tmp_path / "2" / "brand.safetensors", seed=3)), kohya)
    assert not same(content(demo.write_demo_lora_kohya(tmp_path / "3" / "brand.safetensors", seed=4)), kohya)
    peft = content(demo.write_demo_lora_peft(tmp_path / "p1", seed=3))
    assert same(content(demo.write_demo_lora_peft(tmp_path / "p2", seed=3)), peft)
    h1 = torch.load(demo.write_demo_hypernetwork(tmp_path / "h1.pt", seed=3), weights_only=True)
    h2 = torch.load(demo.write_demo_hypernetwork(tmp_path / "h2.pt", seed=3), weights_only=True)
    assert all(torch.equal(h1[32][i][k], h2[32][i][k]) for i in (0, 1) for k in h1[32][i])
    e1 = demo.write_demo_embedding_diffusers(tmp_path / "e1.safetensors", seed=3).read_bytes()
    assert demo.write_demo_embedding_diffusers(tmp_path / "e2.safetensors", seed=3).read_bytes() == e1
