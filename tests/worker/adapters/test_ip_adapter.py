"""IP-Adapters on the tiny demo inpainting model, on the CPU: files in the published layout (one written here by
hand, not by the demo builder), diffusers' own IP-Adapter arithmetic reproduced, the units' scale and step window,
several units with a ControlNet, and the UNet restored bit for bit after a job."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support.models import garment, load_folder
from workers.adapters.encoder import encode_reference, load_image_encoder
from workers.adapters.files import AdapterFileError, read_adapter_file
from workers.adapters.ip_adapter import (
    AdapterFitError,
    AdapterUnit,
    adapters_applied,
    build_adapter,
    cross_attention_layers,
)
from workers.demo.adapters import ensure_demo_clip_vision, ensure_demo_ip_adapter
from workers.demo.control import ensure_demo_controlnet
from workers.demo.model import ensure_demo_model
from workers.inference.control import ControlUnits, control_pipeline, run_control_inpaint
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models.loading import load_controlnet
from workers.patching.attention import set_attention

STEPS = 4
PROMPT, NEGATIVE = "a woman in a dress", "blurry"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ip-models")


@pytest.fixture(scope="module")
def demo_dir(models) -> Path:
    return ensure_demo_model(models / "demo-inpaint")


@pytest.fixture(scope="module")
def base(demo_dir):
    return load_folder(demo_dir)


@pytest.fixture(scope="module")
def encoder(models):
    return load_image_encoder(ensure_demo_clip_vision(models / "clip"), "cpu", torch.float32)


@pytest.fixture(scope="module")
def adapter(models, demo_dir):
    return build_adapter(read_adapter_file(ensure_demo_ip_adapter(models / "ip", base_model=demo_dir)), "cpu",
                         torch.float32)


def reference(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))


def draw(pipe, units=(), seed=5, **kwargs) -> np.ndarray:
    comp = garment(64, 64)
    sampling = Sampling(seed=seed, steps=STEPS, guidance_scale=5.0, output="np")
    with adapters_applied(pipe, list(units), guidance_scale=sampling.guidance_scale) as run:
        return run_inpaint(pipe, comp, PROMPT, NEGATIVE, sampling, pipeline_kwargs=run.kwargs(pipe), **kwargs)[0]


def unit(adapter, encoder, seed=1, **kw) -> AdapterUnit:
    return AdapterUnit(adapter, encode_reference(encoder, reference(seed), adapter.embeds), **{"weight": 1.0, **kw})


def snapshot(unet) -> dict:
    """Everything of a UNet an adapter could leave behind."""
    return {
        "params": {k: v.detach().clone() for k, v in unet.state_dict(keep_vars=False).items()},
        "processors": {name: id(p) for name, p in unet.attn_processors.items()},
        "modules": [name for name, _ in unet.named_modules()],
        "module_slots": list(unet._modules.items()),
        "dict_hid": "encoder_hid_proj" in unet.__dict__, "hid": unet.encoder_hid_proj,
        "config": dict(unet.config), "config_attr": unet.config.encoder_hid_dim_type,
        "hooks": (dict(unet._forward_pre_hooks), dict(unet._forward_hooks)),
        "compiled": getattr(unet, "_compiled_call_impl", None),
    }


def same(a: dict, b: dict) -> bool:
    return (a["params"].keys() == b["params"].keys() and all(torch.equal(a["params"][k], b["params"][k])
                                                             for k in a["params"])
            and all(a[k] == b[k] for k in a if k != "params"))


# --- files -----------------------------------------------------------------------------------------------

def hand_written_plain(unet, embed_dim: int, path: Path, container: str) -> None:
    """An IP-Adapter written here from the published layout (h94/IP-Adapter's ip-adapter_sd15: image_proj.proj,
    image_proj.norm, ip_adapter.<n>.to_k_ip/to_v_ip for the odd-numbered attention processors), not by the demo
    builder: 4 tokens of the UNet's cross-attention width."""
    width, g = unet.config.cross_attention_dim, torch.Generator().manual_seed(7)
    image_proj = {"proj.weight": torch.randn(4 * width, embed_dim, generator=g) * 0.3,
                  "proj.bias": torch.zeros(4 * width), "norm.weight": torch.ones(width),
                  "norm.bias": torch.zeros(width)}
    ip_adapter = {}
    # the demo UNet: one cross-attention down block (1 layer), the mid block (1), one up block (2) of width 64;
    # attn_processors lists down, up, then mid, each layer's attn1 (even) before its attn2 (odd)
    for n in (1, 3, 5, 7):
        ip_adapter[f"{n}.to_k_ip.weight"] = torch.randn(64, width, generator=g) * 0.5
        ip_adapter[f"{n}.to_v_ip.weight"] = torch.randn(64, width, generator=g) * 0.5
    if container == "bin":  # the .bin files are torch pickles of two dicts
        torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    else:
        from safetensors.torch import save_file

        flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v for k, v in ip_adapter.items()})
        save_file(flat, str(path))


def hand_written_plus(width: int, embed_dim: int, path: Path) -> None:
    """A plus IP-Adapter (the Resampler of ip-adapter-plus_sd15 / plus-face) in the published key names: latents
    (1, queries, dim), proj_in, proj_out, norm_out, and 4 layers of [attention (norm1, norm2, to_q, to_kv, to_out),
    feed-forward (LayerNorm, Linear x4 without bias, GELU, Linear back)]."""
    from safetensors.torch import save_file

    g, dim, queries = torch.Generator().manual_seed(9), 64, 8
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    flat = {"image_proj.latents": r(1, queries, dim), "image_proj.proj_in.weight": r(dim, embed_dim),
            "image_proj.proj_in.bias": r(dim), "image_proj.proj_out.weight": r(width, dim),
            "image_proj.proj_out.bias": r(width), "image_proj.norm_out.weight": torch.ones(width),
            "image_proj.norm_out.bias": torch.zeros(width)}
    for i in range(4):
        p = f"image_proj.layers.{i}"
        flat.update({f"{p}.0.norm1.weight": torch.ones(dim), f"{p}.0.norm1.bias": torch.zeros(dim),
                     f"{p}.0.norm2.weight": torch.ones(dim), f"{p}.0.norm2.bias": torch.zeros(dim),
                     f"{p}.0.to_q.weight": r(dim, dim), f"{p}.0.to_kv.weight": r(2 * dim, dim),
                     f"{p}.0.to_out.weight": r(dim, dim), f"{p}.1.0.weight": torch.ones(dim),
                     f"{p}.1.0.bias": torch.zeros(dim), f"{p}.1.1.weight": r(4 * dim, dim),
                     f"{p}.1.3.weight": r(dim, 4 * dim)})
    for n in (1, 3, 5, 7):
        flat[f"ip_adapter.{n}.to_k_ip.weight"] = r(64, width)
        flat[f"ip_adapter.{n}.to_v_ip.weight"] = r(64, width)
    save_file(flat, str(path))


@pytest.mark.parametrize("container", ["bin", "safetensors"])
def test_a_hand_written_file_in_the_published_layout_loads_and_acts(base, encoder, tmp_path, container):
    path = tmp_path / f"ip-adapter_sd15.{container}"
    hand_written_plain(base.unet, encoder.width["image_embeds"], path, container)
    data = read_adapter_file(path)
    assert (data.variant, data.embeds, data.tokens, data.cross_attention_dim) == ("plain", "image_embeds", 4, 32)
    adapter = build_adapter(data, "cpu", torch.float32)
    plain = draw(base)
    assert not np.array_equal(draw(base, [unit(adapter, encoder)]), plain)


def test_a_hand_written_plus_file_reads_hidden_states_and_acts(base, encoder, tmp_path):
    path = tmp_path / "ip-adapter-plus-face_sd15.safetensors"
    hand_written_plus(32, encoder.width["hidden_states"], path)
    data = read_adapter_file(path)
    assert (data.variant, data.embeds, data.tokens) == ("plus", "hidden_states", 8)
    adapter = build_adapter(data, "cpu", torch.float32)
    assert not np.array_equal(draw(base, [unit(adapter, encoder)]), draw(base))


def test_files_that_are_not_ip_adapters_are_refused_saying_why(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(AdapterFileError, match="no image_proj"):
        read_adapter_file(tmp_path / "a.safetensors")
    save_file({"image_proj.perceiver_resampler.proj_in.weight": torch.zeros(2, 2),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)}, str(tmp_path / "faceid.safetensors"))
    with pytest.raises(AdapterFileError, match="proj.0"):  # a FaceID projection without its id MLP
        read_adapter_file(tmp_path / "faceid.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle" * 10)
    with pytest.raises(AdapterFileError, match="cannot read"):
        read_adapter_file(tmp_path / "junk.bin")


def test_an_adapter_for_another_unet_width_is_refused_before_anything_changes(base, encoder, tmp_path):
    from safetensors.torch import save_file

    state = {"image_proj.proj.weight": torch.zeros(4 * 768, 16), "image_proj.proj.bias": torch.zeros(4 * 768),
             "image_proj.norm.weight": torch.ones(768), "image_proj.norm.bias": torch.zeros(768)}
    for n in (1, 3, 5, 7):
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{n}.{part}.weight"] = torch.zeros(64, 768)
    save_file(state, str(tmp_path / "sd15-real-width.safetensors"))
    wide = build_adapter(read_adapter_file(tmp_path / "sd15-real-width.safetensors"), "cpu", torch.float32)
    before = snapshot(base.unet)
    with pytest.raises(AdapterFitError, match="cross-attention width 768"):
        draw(base, [unit(wide, encoder)])
    assert same(before, snapshot(base.unet))


# --- what a unit does -------------------------------------------------------------------------------------

def test_the_arithmetic_is_diffusers_ip_adapter(base, adapter, encoder, models, demo_dir):
    """The UNet with our units gives what diffusers' own IP-Adapter loading of the same file gives."""
    from safetensors.torch import load_file

    unet = base.unet
    u = unit(adapter, encoder, weight=0.7)
    sample = torch.randn(2, 9, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    embeds = [torch.cat([u.embeds.negative, u.embeds.positive]).unsqueeze(1)]
    with torch.no_grad(), adapters_applied(base, [u], guidance_scale=5.0):
        ours = unet(sample, 10, text, added_cond_kwargs={"image_embeds": embeds}).sample
    theirs_unet = copy.deepcopy(unet)
    flat = load_file(str(ensure_demo_ip_adapter(models / "ip", base_model=demo_dir)))
    nested = {"image_proj": {k[11:]: v for k, v in flat.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[11:]: v for k, v in flat.items() if k.startswith("ip_adapter.")}}
    theirs_unet._load_ip_adapter_weights([nested], low_cpu_mem_usage=False)
    for p in theirs_unet.attn_processors.values():
        if hasattr(p, "scale"):
            p.scale = [0.7]
    with torch.no_grad():
        theirs = theirs_unet(sample, 10, text, added_cond_kwargs={"image_embeds": embeds}).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_reference_changes_the_image_the_same_gives_the_same_another_another(base, adapter, encoder):
    plain = draw(base)
    one = draw(base, [unit(adapter, encoder, seed=1)])
    assert not np.array_equal(one, plain)
    assert np.array_equal(draw(base, [unit(adapter, encoder, seed=1)]), one)
    assert not np.array_equal(draw(base, [unit(adapter, encoder, seed=2)]), one)


def test_weight_zero_and_an_empty_window_are_exactly_no_unit(base, adapter, encoder):
    plain = draw(base)
    assert np.array_equal(draw(base, [unit(adapter, encoder, weight=0.0)]), plain)
    assert np.array_equal(draw(base, [unit(adapter, encoder, start=0.5, end=0.5)]), plain)


def test_starting_and_ending_step_bound_where_the_unit_acts(base, adapter, encoder):
    """Latents after each step: before StartingStep they are exactly those without the unit; with EndingStep,
    exactly those with the full unit up to it."""

    def latents(units) -> list[torch.Tensor]:
        seen = []
        comp = garment(64, 64)

        sampling = Sampling(seed=5, steps=STEPS, guidance_scale=5.0, output="np")
        with adapters_applied(base, list(units), guidance_scale=5.0) as run:
            original = base.scheduler.step

            def step(*args, **kwargs):
                out = original(*args, **kwargs)
                seen.append((out[0] if isinstance(out, tuple) else out.prev_sample).clone())
                return out

            base.scheduler.step = step
            try:
                run_inpaint(base, comp, PROMPT, NEGATIVE, sampling, pipeline_kwargs=run.kwargs(base))
            finally:
                del base.scheduler.step
        return seen

    plain, full = latents([]), latents([unit(adapter, encoder)])
    late, early = latents([unit(adapter, encoder, start=0.5)]), latents([unit(adapter, encoder, end=0.5)])
    half = STEPS // 2
    assert all(torch.equal(a, b) for a, b in zip(late[:half], plain[:half]))
    assert not torch.equal(late[half], plain[half])
    assert all(torch.equal(a, b) for a, b in zip(early[:half], full[:half]))
    assert not torch.equal(early[-1], full[-1])


def test_two_adapter_units_and_a_controlnet_in_one_job(base, adapter, encoder, models, demo_dir):
    net = load_controlnet(ensure_demo_controlnet(models / "cn", base_model=demo_dir), "cpu", torch.float32)
    cpipe = control_pipeline(base, [net])
    comp = garment(64, 64)
    sampling = Sampling(seed=5, steps=STEPS, guidance_scale=5.0, output="np")
    control = ControlUnits(control_images=[comp.image])

    def run_with(units):
        with adapters_applied(base, units, guidance_scale=5.0) as run:
            return run_control_inpaint(cpipe, comp, PROMPT, NEGATIVE, sampling, control,
                                       pipeline_kwargs=run.kwargs(cpipe))[0]

    only_net = run_with([])
    one = run_with([unit(adapter, encoder, seed=1)])
    two = run_with([unit(adapter, encoder, seed=1), unit(adapter, encoder, seed=2, weight=0.5)])
    assert not np.array_equal(one, only_net) and not np.array_equal(two, one)
    assert np.array_equal(run_with([unit(adapter, encoder, seed=1), unit(adapter, encoder, seed=2, weight=0.0)]), one)


# --- per job, then gone --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", [False, True])
def test_the_unet_is_restored_bit_for_bit_and_draws_as_before(demo_dir, adapter, encoder, fuse):
    pipe = load_folder(demo_dir)
    set_attention(pipe.unet, sdpa=True, fuse=fuse)
    before, plain = snapshot(pipe.unet), draw(pipe)
    draw(pipe, [unit(adapter, encoder), unit(adapter, encoder, seed=2, start=0.25)])
    with pytest.raises(RuntimeError, match="boom"), adapters_applied(pipe, [unit(adapter, encoder)],
                                                                      guidance_scale=5.0):
        raise RuntimeError("boom")
    assert same(before, snapshot(pipe.unet))
    assert np.array_equal(draw(pipe), plain)
    fresh = load_folder(demo_dir)
    set_attention(fresh.unet, sdpa=True, fuse=fuse)
    assert np.array_equal(draw(fresh), plain)


def test_fused_self_attention_stays_in_use_during_a_job(demo_dir, adapter, encoder):
    pipe = load_folder(demo_dir)
    set_attention(pipe.unet, sdpa=True, fuse=True)
    layers = cross_attention_layers(pipe.unet)
    self_attention = {n: p for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")}
    with adapters_applied(pipe, [unit(adapter, encoder)], guidance_scale=5.0):
        now = pipe.unet.attn_processors
        assert all(now[n] is p for n, p in self_attention.items())
        assert all(type(now[name]).__name__ == "AdapterAttention" for name, _ in layers.values())
        assert all(type(now[name].original).__name__ == "FusedAttnProcessor2_0" for name, _ in layers.values())


def test_a_compiled_unet_runs_eagerly_for_the_job_and_gets_its_compiled_forward_back(demo_dir, adapter, encoder):
    pipe = load_folder(demo_dir)
    unet = pipe.unet
    plain = draw(pipe)
    compiled = unet._call_impl  # a stand-in for torch.compile's wrapper: what unet(...) calls when it is set
    unet._compiled_call_impl = compiled
    try:
        with adapters_applied(pipe, [unit(adapter, encoder)], guidance_scale=5.0) as run:
            assert run.compile_off and unet._compiled_call_impl is None
        assert unet._compiled_call_impl is compiled
        assert np.array_equal(draw(pipe), plain)
        with adapters_applied(pipe, [], guidance_scale=5.0) as run:  # no units: nothing switched off
            assert not run.compile_off and unet._compiled_call_impl is compiled
    finally:
        unet._compiled_call_impl = None


def test_deepcache_keeps_working_with_units_and_the_unet_is_restored(demo_dir, adapter, encoder):
    from workers.patching.deepcache import disable_deep_cache, enable_deep_cache

    pipe = load_folder(demo_dir)
    enable_deep_cache(pipe.unet, interval=2, branch=0)
    try:
        before, plain = snapshot(pipe.unet), draw(pipe)
        with_unit = draw(pipe, [unit(adapter, encoder)])
        assert not np.array_equal(with_unit, plain)
        assert np.array_equal(draw(pipe, [unit(adapter, encoder)]), with_unit)
        assert same(before, snapshot(pipe.unet)) and np.array_equal(draw(pipe), plain)
    finally:
        disable_deep_cache(pipe.unet)


def test_a_really_compiled_unet_is_not_recompiled_by_a_job_with_units(demo_dir, adapter, encoder):
    """Backend aot_eager (dynamo's capture and guards, no code generation), as tests/worker/models/test_speed.py:
    the job with units runs eagerly, and the jobs without units after it run the same compiled graph (a recompile
    raises) and draw what it drew before."""
    from torch._dynamo.utils import counters

    from app.contract.registry import SpeedOptions
    from workers.models.speed import apply_speed

    pipe = load_folder(demo_dir)
    torch._dynamo.reset()
    try:
        apply_speed(pipe, SpeedOptions(compile=True), "cpu", compile_backend="aot_eager")
        graphs = counters["stats"]["unique_graphs"]
        base = draw(pipe)
        assert counters["stats"]["unique_graphs"] > graphs  # the UNet really ran compiled
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            with_unit = draw(pipe, [unit(adapter, encoder)])
            after = draw(pipe)
        assert counters["stats"]["unique_graphs"] == graphs  # no new graph: the unit's job ran eagerly
    finally:
        torch._dynamo.reset()
    assert not np.array_equal(with_unit, base)
    np.testing.assert_array_equal(after, base)


def test_an_sdxl_adapter_acts_on_an_sdxl_inpainting_pipeline(tmp_path, encoder):
    """SDXL's pipeline (text-time conditioning, two text encoders) with a plain adapter of its layout: the
    reference changes the image, weight 0 is exactly none, and the UNet comes back bit for bit."""
    from safetensors.torch import save_file

    from support.tiny import build_sdxl
    from workers.demo.adapters import demo_ip_adapter_state

    pipe = load_folder(build_sdxl(tmp_path / "sdxl"), family="sdxl")
    save_file(demo_ip_adapter_state(pipe.unet, embed_dim=encoder.width["image_embeds"]),
              str(tmp_path / "ip-adapter_sdxl.safetensors"))
    xl = build_adapter(read_adapter_file(tmp_path / "ip-adapter_sdxl.safetensors"), "cpu", torch.float32)
    assert xl.cross_attention_dim == pipe.unet.config.cross_attention_dim == 64
    before, plain = snapshot(pipe.unet), draw(pipe)
    assert not np.array_equal(draw(pipe, [unit(xl, encoder)]), plain)
    assert np.array_equal(draw(pipe, [unit(xl, encoder, weight=0.0)]), plain)
    assert same(before, snapshot(pipe.unet))


def test_a_batch_in_one_call_gives_each_image_the_reference(base, adapter, encoder):
    comp = garment(64, 64)
    sampling = Sampling(seed=5, batch_size=2, steps=STEPS, guidance_scale=5.0, output="np")
    with adapters_applied(base, [unit(adapter, encoder)], guidance_scale=5.0) as run:
        first, second = run_inpaint(base, comp, PROMPT, NEGATIVE, sampling, pipeline_kwargs=run.kwargs(base))
    alone = draw(base, [unit(adapter, encoder)], seed=6)  # image 1 of the batch is seed + 1's image
    assert not np.array_equal(first, second)
    assert np.abs(second.astype(int) - alone.astype(int)).max() <= 2  # a batch rounds, docs/API.md "Seeds"


def test_without_classifier_free_guidance_the_positive_embeddings_alone_are_given(base, adapter, encoder):
    comp = garment(64, 64)
    sampling = Sampling(seed=5, steps=STEPS, guidance_scale=1.0, output="np")

    def run_with(units):
        with adapters_applied(base, units, guidance_scale=1.0) as run:
            embeds = run.kwargs(base).get("ip_adapter_image_embeds", [])
            return [e.shape[0] for e in embeds], run_inpaint(base, comp, PROMPT, NEGATIVE, sampling,
                                                             pipeline_kwargs=run.kwargs(base))[0]

    (rows, with_unit), (_, plain) = run_with([unit(adapter, encoder)]), run_with([])
    assert rows == [1] and not np.array_equal(with_unit, plain)


def test_a_hand_written_full_face_file_reads_every_encoder_token_and_acts(base, encoder, tmp_path):
    """ip-adapter-full-face_sd15's layout: image_proj.proj.0 (Linear embed -> embed), proj.2 (Linear embed -> width),
    proj.3 (LayerNorm of the width), over each of the encoder's hidden-state tokens."""
    from safetensors.torch import save_file

    g, embed, width = torch.Generator().manual_seed(11), encoder.width["hidden_states"], 32
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    flat = {"image_proj.proj.0.weight": r(embed, embed), "image_proj.proj.0.bias": r(embed),
            "image_proj.proj.2.weight": r(width, embed), "image_proj.proj.2.bias": r(width),
            "image_proj.proj.3.weight": torch.ones(width), "image_proj.proj.3.bias": torch.zeros(width)}
    for n in (1, 3, 5, 7):
        flat[f"ip_adapter.{n}.to_k_ip.weight"] = r(64, width)
        flat[f"ip_adapter.{n}.to_v_ip.weight"] = r(64, width)
    save_file(flat, str(tmp_path / "ip-adapter-full-face_sd15.safetensors"))
    data = read_adapter_file(tmp_path / "ip-adapter-full-face_sd15.safetensors")
    assert (data.variant, data.embeds, data.embed_dim) == ("full", "hidden_states", embed)
    adapter = build_adapter(data, "cpu", torch.float32)
    assert not np.array_equal(draw(base, [unit(adapter, encoder)]), draw(base))
