"""A Main model's ``speed:`` options on the worker (workers/models/speed.py at load, workers/patching/ for what it
patches and what runs before each call), on the CPU with the demo models.

What is checked: the attention processors and fused projections asked for, and that the fast paths change no
image; channels_last (applied for CUDA only: checked on CPU tensors, the layout does not depend on the device);
the per-call chunk size and VAE tiling/slicing; the model's dtype and the cache key; the external VAE's
treatment; LoRAs on a fused model and hypernetworks beside one; a compiled UNet that switches LoRAs without
recompiling; DeepCache's wiring; the warm-up at worker start.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)

from app.contract.registry import ModelEntry, ModelSource, Registry, SpeedOptions
from support.models import garment, load_folder
from workers.demo.submodels import write_demo_hypernetwork, write_demo_lora_kohya
from workers.inference.compose import Composition
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models import warmup
from workers.models.cache import ModelCache
from workers.models.kinds import Loaders, WorkerModels
from workers.models.sizes import measure_bytes
from workers.models.speed import apply_speed, prepare_vae
from workers.patching import deepcache
from workers.patching.attention import separate_projections
from workers.patching.deepcache import deep_cache_stats
from workers.patching.per_call import before_call, images_per_call, speed_of
from workers.submodels import hypernetwork, lora
from workers.submodels.spec import SubmodelError

STEPS = 2
#: every fast path this CPU can run off: the classic attention, nothing fused
PLAIN = SpeedOptions(sdpa=False, fuse_qkv=False, channels_last=False)


def generate(pipe, comp: Composition, seed: int = 7, batch_size: int = 1) -> list[np.ndarray]:
    images = run_inpaint(pipe, comp, "a woman in a dress", "blurry",
                         Sampling(seed=seed, batch_size=batch_size, steps=STEPS, guidance_scale=7.5))
    return [np.asarray(image).astype(np.int16) for image in images]


def unet_output(pipe) -> torch.Tensor:
    """The UNet's noise prediction for fixed inputs (float32: what the images are made of, before rounding)."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(sample, torch.tensor([500, 500]), context).sample


def processors(model) -> set[type]:
    return {type(p) for p in model.attn_processors.values()}


def tiny_vae_kl(sample_size: int = 32) -> AutoencoderKL:
    """A random AutoencoderKL of SD's shape (4 levels, scale factor 8, attention in its mid block), tiny; its
    ``sample_size`` is its tile size, so small images already tile."""
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                         sample_size=sample_size).eval()


@pytest.fixture
def fresh(demo_dir):
    """A demo pipeline of its own (the tests here change it)."""
    return load_folder(demo_dir)


# --- apply_speed ----------------------------------------------------------------------------------------------


def test_apply_speed_sets_the_asked_attention_and_records_the_options(fresh):
    options = SpeedOptions(max_batch=3)
    size = measure_bytes(fresh)
    apply_speed(fresh, options, "cpu")
    layers = [m for m in fresh.unet.modules() if isinstance(m, Attention)]
    assert processors(fresh.unet) == {FusedAttnProcessor2_0}
    assert all(a.fused_projections for a in layers)
    assert all(isinstance(a.to_kv if a.is_cross_attention else a.to_qkv, torch.nn.Linear) for a in layers)
    # the separate q, k, v weights are views into the fused ones: fusing costs no memory
    assert measure_bytes(fresh) == size
    assert speed_of(fresh) is options
    # a ControlNet pipeline built from it shares the UNet, and so the options
    assert speed_of(SimpleNamespace(unet=fresh.unet, vae=fresh.vae)) is options

    fused = [a.to_kv if a.is_cross_attention else a.to_qkv for a in layers]
    before = [a.processor for a in layers]
    apply_speed(fresh, options, "cpu")  # idempotent: nothing rebuilt, the very same processors
    assert [a.to_kv if a.is_cross_attention else a.to_qkv for a in layers] == fused
    assert [a.processor for a in layers] == before

    apply_speed(fresh, SpeedOptions(fuse_qkv=False), "cpu")
    assert processors(fresh.unet) == {AttnProcessor2_0} and not any(a.fused_projections for a in layers)
    apply_speed(fresh, SpeedOptions(sdpa=False), "cpu")  # no classic fused processor: fuse_qkv does not apply
    assert processors(fresh.unet) == {AttnProcessor} and not any(a.fused_projections for a in layers)
    assert speed_of(SimpleNamespace(unet=None)) == SpeedOptions()  # nothing recorded: the defaults


def test_channels_last_is_for_cuda_only(fresh):
    convs = [m.weight for m in fresh.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    apply_speed(fresh, SpeedOptions(), "cpu")
    assert not any(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    plain = generate(fresh, garment(64, 64))
    # the memory format does not depend on the device: what a CUDA worker gets, on CPU tensors
    apply_speed(fresh, SpeedOptions(), "cuda")
    convs = [m.weight for m in fresh.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in fresh.vae.modules() if isinstance(m, torch.nn.Conv2d))
    assert np.abs(generate(fresh, garment(64, 64))[0] - plain[0]).max() <= 1
    apply_speed(fresh, SpeedOptions(channels_last=False), "cuda")  # and back
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in fresh.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)


def test_the_fast_paths_change_no_image(fresh):
    comp = garment(72, 48)
    apply_speed(fresh, PLAIN, "cpu")
    plain_unet, plain_images = unet_output(fresh), generate(fresh, comp, batch_size=2)
    apply_speed(fresh, SpeedOptions(), "cpu")
    fast_unet, fast_images = unet_output(fresh), generate(fresh, comp, batch_size=2)
    assert plain_unet.abs().mean() > 0.01  # a real prediction, not zeros
    torch.testing.assert_close(fast_unet, plain_unet, rtol=1e-4, atol=1e-5)
    for fast, plain in zip(fast_images, plain_images):
        assert np.abs(fast - plain).max() <= 1


def test_an_autoencoder_kl_is_fused_and_decodes_the_same():
    vae = tiny_vae_kl()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = vae.decode(latents).sample
        prepare_vae(vae, SpeedOptions(), "cpu")
        assert processors(vae) == {FusedAttnProcessor2_0}
        fused = vae.decode(latents).sample
        prepare_vae(vae, SpeedOptions(sdpa=False), "cpu")
        assert processors(vae) == {AttnProcessor}
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


# --- per call ---------------------------------------------------------------------------------------------------


def test_images_per_call_reads_the_models_options(fresh):
    assert images_per_call(fresh, 512, 512) == 8  # nothing applied: the defaults
    apply_speed(fresh, SpeedOptions(max_batch=3, max_batch_megapixels=0.01), "cpu")
    assert images_per_call(fresh, 64, 64) == 2  # 10000 / 4096 px
    assert images_per_call(fresh, 32, 32) == 3  # max_batch
    assert images_per_call(fresh, 512, 512) == 1


@pytest.mark.parametrize("vae_kind", ["tiny", "kl"])
def test_before_call_tiles_above_the_threshold_and_slices_batches(fresh, vae_kind):
    if vae_kind == "kl":
        fresh.vae = tiny_vae_kl()
    vae = fresh.vae
    apply_speed(fresh, SpeedOptions(vae_tiling_above_px=64 * 64), "cpu")
    before_call(fresh, 64, 64, 1)
    assert (vae.use_tiling, vae.use_slicing) == (False, False)
    before_call(fresh, 72, 64, 2)
    assert (vae.use_tiling, vae.use_slicing) == (True, True)
    before_call(fresh, 64, 64, 3)
    assert (vae.use_tiling, vae.use_slicing) == (False, True)
    apply_speed(fresh, SpeedOptions(vae_tiling_above_px=0, vae_slicing=False), "cpu")
    before_call(fresh, 64, 64, 2)
    assert (vae.use_tiling, vae.use_slicing) == (True, False)  # 0 = always tile


@pytest.mark.parametrize("vae_kind", ["tiny", "kl"])
def test_a_tiled_generation_keeps_the_clothes_exactly(fresh, vae_kind):
    if vae_kind == "kl":
        fresh.vae = tiny_vae_kl(sample_size=32)  # tiles of 32 px (4 latents): a 96x80 image is 3x3 tiles
    comp = garment(96, 80)
    apply_speed(fresh, SpeedOptions(vae_tiling_above_px=96 * 80 - 1), "cpu")
    images = generate(fresh, comp, batch_size=2)
    assert fresh.vae.use_tiling and fresh.vae.use_slicing  # run_inpaint's before_call: above the threshold
    original = np.asarray(comp.image)
    for image in images:
        assert image.shape == (80, 96, 3)
        np.testing.assert_array_equal(image[comp.keep], original[comp.keep])
    apply_speed(fresh, SpeedOptions(), "cpu")
    untiled = generate(fresh, comp, batch_size=2)
    assert not fresh.vae.use_tiling
    if vae_kind == "tiny":  # TAESD tiles of 512 px: one tile, the very same images
        np.testing.assert_array_equal(images[0], untiled[0])
    else:  # tiles of 32 px, blended: another decode of the same latents, closer to it than another seed's
        redrawn = ~comp.keep
        other_seed = generate(fresh, comp, seed=8)[0]
        assert 0 < np.abs(images[0] - untiled[0])[redrawn].mean() < np.abs(other_seed - untiled[0])[redrawn].mean()


# --- dtype, cache key, external VAE -----------------------------------------------------------------------------


def main(code: str, folder: Path, **speed_options) -> ModelEntry:
    return ModelEntry.model_validate({"ModelCode": code, "Name": code, "ModelType": "Main",
                                      "source": {"path": str(folder)}, "speed": speed_options})


class RecordingLoader:
    """The Main loader for a worker on a "cuda" device this machine has not: records the dtypes asked for and
    hands out a stand-in (nothing is moved to a device)."""

    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def __call__(self, entry, registry, device, dtype, models_dir):
        self.dtypes.append(dtype)
        unet, vae = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        return SimpleNamespace(unet=unet, vae=vae, components={"unet": unet, "vae": vae})


def test_the_models_dtype_decides_on_cuda_and_the_load_options_are_in_the_cache_key(demo_dir, caplog):
    caplog.set_level(logging.INFO, logger="atelier.worker.cache")
    loader = RecordingLoader()
    cache = ModelCache(device_bytes=10**9, host_bytes=10**9, device="cuda")
    models = WorkerModels(cache, device="cuda", dtype=torch.float16, models_dir=demo_dir.parent,
                          loaders=Loaders(main=loader))
    auto, bf16, fp32 = main("auto", demo_dir), main("bf16", demo_dir, dtype="bfloat16"), main("fp32", demo_dir,
                                                                                              dtype="float32")
    compiled = main("compiled", demo_dir, compile=True)
    registry = Registry([auto, bf16, fp32, compiled], demo_dir.parent)
    assert [models.dtype_of(e) for e in (auto, bf16, fp32)] == [torch.float16, torch.bfloat16, torch.float32]
    batchy = main("batchy", demo_dir, max_batch=2, warmup_sizes=[[512, 512]])  # per-call and start-up options
    with cache.lease() as lease:
        pipes = [models.pipeline(lease, e, registry) for e in (auto, bf16, fp32, compiled)]
        assert speed_of(pipes[0]) is auto.speed and speed_of(pipes[3]).compile
        again = models.pipeline(lease, batchy, registry)  # the same pipeline, handed out with batchy's options
        assert again is pipes[0] and speed_of(again) is batchy.speed and images_per_call(again, 64, 64) == 2
        assert speed_of(models.pipeline(lease, auto, registry)) is auto.speed
    assert loader.dtypes == [torch.float16, torch.bfloat16, torch.float32, torch.float16]  # 4 loads, not 6
    estimates = {r.getMessage().split()[2]: r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("loading pipeline")}
    half, full = estimates["bf16"].rpartition("(")[2], estimates["fp32"].rpartition("(")[2]
    assert half != full and half == estimates["auto"].rpartition("(")[2]  # 2 bytes a weight vs 4

    # a ControlNet runs in the dtype of the Main model it goes with
    nets: list[torch.dtype] = []
    models.loaders.controlnet = lambda path, device, dtype, config=None: nets.append(dtype) or torch.nn.Linear(2, 2)
    control = ModelEntry.model_validate({"ModelCode": "cn", "Name": "cn", "ModelType": "ControlModel",
                                         "source": {"path": str(demo_dir)}})
    with cache.lease() as lease:
        models.controlnet(lease, control, registry, models.dtype_of(bf16))
        models.controlnet(lease, control, registry)
    assert nets == [torch.bfloat16, torch.float16]

    cpu = WorkerModels(ModelCache(device_bytes=10**9, host_bytes=10**9), device="cpu", dtype=torch.float32,
                       models_dir=demo_dir.parent)
    assert {cpu.dtype_of(e) for e in (auto, bf16, fp32)} == {torch.float32}  # the CPU stays float32


def test_an_external_vae_gets_the_models_treatment(demo_dir, tmp_path):
    vae_folder = tmp_path / "vae-kl"
    tiny_vae_kl().save_pretrained(vae_folder)
    entry = main("m", demo_dir)
    registry = Registry([entry], demo_dir.parent, vaes={"sd15": ModelSource(path=vae_folder)})
    models = WorkerModels(ModelCache(device_bytes=10**10, host_bytes=10**10), device="cpu", dtype=torch.float32,
                          models_dir=tmp_path)
    with models.cache.lease() as lease:
        with models.vae_for(lease, entry, registry, False) as pipe:
            assert isinstance(pipe.vae, AutoencoderKL) and processors(pipe.vae) == {FusedAttnProcessor2_0}
            [image] = generate(pipe, garment(64, 64))
        assert not isinstance(pipe.vae, AutoencoderKL)  # the checkpoint's own is back
    assert image.shape == (64, 64, 3)


# --- LoRAs and hypernetworks on a fused model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, lora.LoraFile]:
    folder = tmp_path_factory.mktemp("loras")
    return {name: lora.read_lora(write_demo_lora_kohya(folder / f"{name}.safetensors", seed=seed))
            for name, seed in (("a", 1), ("b", 2))}


@pytest.mark.parametrize("fused_by", ["atelier", "diffusers"])
def test_a_lora_takes_effect_on_a_fused_model_as_on_a_plain_one(demo_dir, loras, fused_by):
    """Atelier's fusion makes q, k, v views into the fused weights; diffusers' own keeps copies, which the LoRA
    patcher refreshes."""
    plain, fused = load_folder(demo_dir), load_folder(demo_dir)
    apply_speed(plain, PLAIN, "cpu")
    if fused_by == "atelier":
        apply_speed(fused, SpeedOptions(), "cpu")
    else:
        fused.fuse_qkv_projections(vae=False)  # the demo's AutoencoderTiny has no attention to fuse
    assert processors(fused.unet) == {FusedAttnProcessor2_0}
    qkv = {n: m.weight.clone() for n, m in fused.unet.named_modules() if n.endswith((".to_qkv", ".to_kv"))}
    comp = garment(64, 64)
    base_unet, base_image = unet_output(fused), generate(fused, comp)[0]
    with lora.patched(plain, [("a", loras["a"], 1.0)]), lora.patched(fused, [("a", loras["a"], 1.0)]):
        want, got = unet_output(plain), unet_output(fused)
        with_lora = generate(fused, comp)[0]
        assert np.abs(with_lora - generate(plain, comp)[0]).max() <= 1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - base_unet).abs().mean() > 1e-3  # the LoRA changed the prediction ...
    assert np.abs(with_lora - base_image)[~comp.keep].mean() > 1  # ... and the picture
    # restored bit for bit, fused weights included
    for name, module in fused.unet.named_modules():
        if name in qkv:
            assert torch.equal(module.weight, qkv[name]), name
    np.testing.assert_array_equal(generate(fused, comp)[0], base_image)


def test_a_hypernetwork_runs_on_the_separate_projections_of_a_fused_model(demo_dir, tmp_path):
    hn = hypernetwork.read_hypernetwork(write_demo_hypernetwork(tmp_path / "hn.pt", seed=6))
    plain, fused = load_folder(demo_dir), load_folder(demo_dir)
    apply_speed(plain, SpeedOptions(fuse_qkv=False), "cpu")
    apply_speed(fused, SpeedOptions(), "cpu")
    comp = garment(64, 64)
    with pytest.raises(SubmodelError, match="fused"):  # what separate_projections is for
        with hypernetwork.hypernetwork_hooks(fused, "hn", hn):
            pass
    with hypernetwork.hypernetwork_hooks(plain, "hn", hn):
        want = generate(plain, comp)[0]
    with separate_projections(fused), hypernetwork.hypernetwork_hooks(fused, "hn", hn):
        assert processors(fused.unet) == {AttnProcessor2_0}
        got = generate(fused, comp)[0]
    assert processors(fused.unet) == {FusedAttnProcessor2_0}  # fused again afterwards
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - generate(fused, comp)[0])[~comp.keep].mean() > 1  # the hypernetwork did something


# --- torch.compile: LoRAs switch without recompiling -------------------------------------------------------------


def test_a_compiled_unet_switches_loras_without_recompiling(fresh, loras):
    """Backend aot_eager: dynamo's graph capture and guards as with inductor (minutes on this CPU), without the
    code generation. A recompile raises (``error_on_recompile``)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    try:
        apply_speed(fresh, SpeedOptions(compile=True), "cpu", compile_backend="aot_eager")
        comp = garment(64, 64)
        graphs = counters["stats"]["unique_graphs"]
        base = generate(fresh, comp)[0]
        assert counters["stats"]["unique_graphs"] > graphs  # the UNet really ran compiled
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            with lora.patched(fresh, [("a", loras["a"], 1.0)]):
                with_a = generate(fresh, comp)[0]
            with lora.patched(fresh, [("b", loras["b"], 0.8)]):
                with_b = generate(fresh, comp)[0]
            without = generate(fresh, comp)[0]
        assert counters["stats"]["unique_graphs"] == graphs  # no new graph
    finally:
        torch._dynamo.reset()
    assert np.abs(with_a - base)[~comp.keep].mean() > 1  # the compiled graph read the patched weights
    assert np.abs(with_b - with_a)[~comp.keep].mean() > 1
    np.testing.assert_array_equal(without, base)


# --- DeepCache --------------------------------------------------------------------------------------------------


def test_deep_cache_is_switched_by_the_options_and_reset_before_each_call(fresh):
    apply_speed(fresh, SpeedOptions(deep_cache_interval=2), "cpu")
    assert deep_cache_stats(fresh.unet) | {"full_steps": 0, "cached_steps": 0} == {
        "enabled": True, "interval": 2, "branch": 0, "full_steps": 0, "cached_steps": 0}
    run_inpaint(fresh, garment(64, 64), "a", "", Sampling(seed=1, steps=4, guidance_scale=7.5))
    stats = deep_cache_stats(fresh.unet)
    assert stats["cached_steps"] > 0 and stats["full_steps"] > 0
    # a call that could use the cache (same shapes, a lower timestep) is a full step after before_call
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 9, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        fresh.unet(sample, torch.tensor([900, 900]), context)
        before_call(fresh, 64, 64, 1)
        fresh.unet(sample, torch.tensor([800, 800]), context)
    assert deep_cache_stats(fresh.unet)["full_steps"] == stats["full_steps"] + 2
    apply_speed(fresh, SpeedOptions(), "cpu")
    assert not deep_cache_stats(fresh.unet)["enabled"]


def test_deep_cache_on_a_changed_unet_forward_is_refused_with_a_warning(fresh, monkeypatch, caplog):
    """Another diffusers' forward (here: the recorded fingerprint no longer matches): the model loads and runs
    without DeepCache, its images the stock ones, and the log says why."""
    comp = garment(64, 64)
    stock = generate(fresh, comp)[0]
    monkeypatch.setattr(deepcache, "MIRRORED_FORWARD", "0" * 64)
    caplog.set_level(logging.WARNING, logger="atelier.worker.speed")
    apply_speed(fresh, SpeedOptions(deep_cache_interval=2), "cpu")
    assert not deep_cache_stats(fresh.unet)["enabled"]
    assert "forward" not in vars(fresh.unet)  # the stock forward, unpatched
    assert "DeepCache (speed.deep_cache_interval 2) is off for this model" in caplog.text
    assert "MIRRORED_FORWARD" in caplog.text  # what to re-check is said
    np.testing.assert_array_equal(generate(fresh, comp)[0], stock)
    with pytest.raises(deepcache.ForwardChanged, match="Re-check _shallow_forward"):
        deepcache.enable_deep_cache(fresh.unet, interval=2)


# --- warm-up ----------------------------------------------------------------------------------------------------


def test_warm_up_generates_once_per_size_and_batch_and_survives_a_broken_model(demo_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="atelier.worker.speed")
    shapes: list[tuple[int, ...]] = []

    def load_and_watch(*args):
        pipe = load_folder(demo_dir)
        pipe.unet.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
        return pipe

    good = main("good", demo_dir, warmup_sizes=[[64, 64], [67, 64]], warmup_batch=[1, 2])
    twin = main("twin", demo_dir, warmup_sizes=[[64, 64]])  # the same pipeline: already warm at 64x64
    broken = main("broken", tmp_path / "missing", warmup_sizes=[[64, 64], [128, 128]])
    cold = main("cold", demo_dir, max_batch=2)  # nothing to warm up
    registry = Registry([broken, good, twin, cold], tmp_path)
    models = WorkerModels(ModelCache(device_bytes=10**10, host_bytes=10**10), device="cpu", dtype=torch.float32,
                          models_dir=tmp_path, loaders=Loaders(main=lambda entry, *a: (
                              load_and_watch() if entry.model_code != "broken" else Loaders().main(entry, *a))))
    report = warmup.warm_up(models, registry)
    assert [run[:4] for run in report.runs] == [("good", 64, 64, 1), ("good", 64, 64, 2), ("good", 67, 64, 1),
                                                ("good", 67, 64, 2)]
    assert set(report.failed) == {"broken"} and "does not exist" in report.failed["broken"]
    assert report.skipped == 1  # broken's second size: not tried once its load failed
    assert {shape[-2:] for shape in shapes} == {(8, 8), (8, 9)}  # latents of 64x64 and 67x64 (run at 72x64)
    assert sum(shape[0] for shape in shapes) == (1 + 2 + 1 + 2) * 2 * STEPS  # images x CFG x steps
    assert "warm-up of broken at 64x64 x1 failed" in caplog.text and "the worker goes on" in caplog.text
    assert [label for label, _ in models.cache.cached()] == ["good"]  # cold was not loaded


def test_the_demo_deployment_warms_nothing_up():
    registry = Registry.from_file(Path(__file__).parents[3] / "models_config" / "models.yaml")
    assert not any(warmup.warmup_plan(e) for e in registry.entries())
    models = WorkerModels(ModelCache(device_bytes=10**9, host_bytes=10**9), device="cpu", dtype=torch.float32,
                          models_dir=Path("/nonexistent"))
    report = warmup.warm_up(models, registry)
    assert report.runs == [] and models.cache.stats.loads == 0


def test_warmup_plan_defaults_to_the_request_size_when_compiling_without_sizes(demo_dir):
    assert warmup.warmup_plan(main("c", demo_dir, compile=True, warmup_batch=[1, 4])) == [(1024, 1024, 1),
                                                                                          (1024, 1024, 4)]
    assert warmup.warmup_plan(main("p", demo_dir)) == []


def test_jobs_of_a_prefork_child_wait_for_its_warm_up(monkeypatch):
    from app.contract.settings import get_settings

    # importing the tasks builds the Celery app, which wants a broker URL (it does not connect)
    monkeypatch.setenv("ATELIER_REDIS_URL", "redis://127.0.0.1:6379/15")
    get_settings.cache_clear()
    try:
        from workers import tasks
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    release, started = threading.Event(), threading.Event()

    class Runtime:
        def warm_up(self):
            started.set()
            release.wait()

    old = tasks.RuntimeTask._warmed
    try:
        thread = tasks.warm_up_in_background(Runtime())
        started.wait()
        waiter = threading.Thread(target=tasks._wait_for_warm_up)
        waiter.start()
        assert not tasks.RuntimeTask._warmed.is_set() and waiter.is_alive()
        release.set()
        waiter.join()
        thread.join()
        assert tasks.RuntimeTask._warmed.is_set()
    finally:
        release.set()
        tasks.RuntimeTask._warmed = old


def test_a_models_config_the_warm_up_cannot_read_does_not_stop_the_worker(tmp_path, caplog):
    from app.contract.settings import Settings
    from workers.runtime import WorkerRuntime

    config = tmp_path / "models.yaml"
    config.write_text("models: [{ModelCode: x}]\n")  # invalid: no Name, no ModelType
    cache = ModelCache(device_bytes=10**9, host_bytes=10**9)
    models = WorkerModels(cache, device="cpu", dtype=torch.float32, models_dir=tmp_path)
    runtime = WorkerRuntime(Settings(models_config=config, data_dir=tmp_path), store=None, storage=None,
                            cache=cache, models=models)
    report = runtime.warm_up()
    assert report.runs == [] and "warm-up skipped (ValueError" in caplog.text
