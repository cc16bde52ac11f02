"""The real-size random-weight SD 1.5 / SDXL inpainting pipelines (workers/demo/realsize.py) and
``make bench-gpu`` (scripts/bench_gpu.py).

What is checked: the pipelines built on the meta device (no weight allocated) have the published checkpoints'
parameter counts, architectures and schedulers; the UNet FLOP count (meta device) is SD's known figure and
linear in the batch; materialising fills weights deterministically from the seed with the documented
distribution and moves buffers; the GPU peak table picks the right card. The slow test runs the benchmark
script end to end on the CPU at its smallest settings and checks its JSON.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from support.api import ROOT
from workers.demo.realsize import (
    SD15_SCHEDULER,
    WEIGHT_STD,
    build_sd15_inpaint,
    build_sdxl_inpaint,
    materialize,
    unet_forward_flops,
)

# Parameter counts of the published checkpoints (as diffusers/transformers build them).
SD15_INPAINT_UNET = 859_535_364  # SD 1.5's 859,520,964 + 5 extra input channels x 320 x 3 x 3
SDXL_INPAINT_UNET = 2_567_478_084  # SDXL base's 2,567,463,684 + the same 14,400
SD_VAE = 83_653_863
CLIP_L_TEXT = 123_060_480
OPENCLIP_BIGG_TEXT = 694_659_840


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def all_meta(module: torch.nn.Module) -> bool:
    return all(t.is_meta for t in (*module.parameters(), *module.buffers()))


@pytest.fixture(scope="module")
def sd15() -> StableDiffusionInpaintPipeline:
    return build_sd15_inpaint("meta", torch.float16)


@pytest.fixture(scope="module")
def sdxl() -> StableDiffusionXLInpaintPipeline:
    return build_sdxl_inpaint("meta", torch.float16)


def test_sd15_inpaint_has_the_real_sizes_and_config(sd15):
    assert isinstance(sd15, StableDiffusionInpaintPipeline)
    assert count(sd15.unet) == SD15_INPAINT_UNET
    assert count(sd15.vae) == SD_VAE
    assert count(sd15.text_encoder) == CLIP_L_TEXT
    for module in (sd15.unet, sd15.vae, sd15.text_encoder):
        assert all_meta(module), "a meta build must allocate nothing"
        assert {p.dtype for p in module.parameters()} == {torch.float16}
    unet = sd15.unet.config
    assert unet.in_channels == 9 and unet.out_channels == 4 and unet.sample_size == 64
    assert list(unet.block_out_channels) == [320, 640, 1280, 1280]
    assert unet.cross_attention_dim == 768 and unet.attention_head_dim == 8 and unet.layers_per_block == 2
    assert sd15.vae.config.scaling_factor == 0.18215
    assert list(sd15.vae.config.block_out_channels) == [128, 256, 512, 512]
    assert sd15.vae_scale_factor == 8
    text = sd15.text_encoder.config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (3072, 49408, 77)
    assert text.hidden_act == "quick_gelu"
    assert sd15.tokenizer.model_max_length == 77
    assert text.eos_token_id == sd15.tokenizer.eos_token_id  # the pooled output picks this tokenizer's EOS
    scheduler = sd15.scheduler
    assert isinstance(scheduler, PNDMScheduler)
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    assert sd15.safety_checker is None


def test_sdxl_inpaint_has_the_real_sizes_and_config(sdxl):
    assert isinstance(sdxl, StableDiffusionXLInpaintPipeline)
    assert count(sdxl.unet) == SDXL_INPAINT_UNET
    assert count(sdxl.vae) == SD_VAE
    assert count(sdxl.text_encoder) == CLIP_L_TEXT
    assert count(sdxl.text_encoder_2) == OPENCLIP_BIGG_TEXT
    for module in (sdxl.unet, sdxl.vae, sdxl.text_encoder, sdxl.text_encoder_2):
        assert all_meta(module)
    unet = sdxl.unet.config
    assert unet.in_channels == 9 and unet.sample_size == 128 and unet.cross_attention_dim == 2048
    assert list(unet.block_out_channels) == [320, 640, 1280]
    assert list(unet.transformer_layers_per_block) == [1, 2, 10]
    assert list(unet.attention_head_dim) == [5, 10, 20]
    assert unet.addition_embed_type == "text_time" and unet.addition_time_embed_dim == 256
    assert unet.projection_class_embeddings_input_dim == 2816 and unet.use_linear_projection
    assert sdxl.vae.config.scaling_factor == 0.13025 and sdxl.vae.config.force_upcast
    big_g = sdxl.text_encoder_2.config
    assert (big_g.hidden_size, big_g.num_hidden_layers, big_g.num_attention_heads) == (1280, 32, 20)
    assert (big_g.intermediate_size, big_g.projection_dim) == (5120, 1280)
    assert sdxl.text_encoder.config.hidden_size == 768
    assert isinstance(sdxl.scheduler, EulerDiscreteScheduler)
    assert not sdxl.config.requires_aesthetics_score  # 2816 = 6 x 256 + 1280: no aesthetic score


def test_unet_flops_on_meta_are_sds_figure_and_linear_in_batch(sd15, sdxl):
    one = unet_forward_flops(sd15.unet, 512, 512, 1)
    # SD 1.5's UNet at 512x512: about 0.80 TFLOP per image per step (counted: convs 0.44, linear 0.23, attention)
    assert one == pytest.approx(0.8034e12, rel=0.005)
    assert unet_forward_flops(sd15.unet, 512, 512, 2) == 2 * one
    # 4x the pixels: the convolutions and linear layers 4x, the self-attention more (quadratic in tokens)
    assert 4 * one < unet_forward_flops(sd15.unet, 1024, 1024, 1) < 6 * one
    # SDXL at its native 1024x1024: about 6.76 TFLOP per image per step
    assert unet_forward_flops(sdxl.unet, 1024, 1024, 1) == pytest.approx(6.7617e12, rel=0.005)


def tiny_unet() -> UNet2DConditionModel:
    with init_empty_weights(include_buffers=False):
        return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8)


def test_materialize_is_seeded_and_fills_as_documented():
    first = materialize(tiny_unet(), "cpu", torch.float32, seed=3, component="unet")
    again = materialize(tiny_unet(), "cpu", torch.float32, seed=3, component="unet")
    other = materialize(tiny_unet(), "cpu", torch.float32, seed=4, component="unet")
    names = [name for name, _ in first.named_parameters()]
    assert all(not p.is_meta and not p.requires_grad for p in first.parameters())
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    weight = dict(first.named_parameters())["conv_in.weight"]
    assert not torch.equal(weight, dict(other.named_parameters())["conv_in.weight"])
    # two parameters of the same shape get different draws (seeded by name, not by shape or order)
    q = dict(first.named_parameters())
    attn = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert not torch.equal(q[f"{attn}.to_q.weight"], q[f"{attn}.to_k.weight"])
    big = torch.cat([p.flatten() for p in first.parameters() if p.dim() >= 2])
    assert big.std().item() == pytest.approx(WEIGHT_STD, rel=0.05) and big.abs().max() <= WEIGHT_STD * 3**0.5
    assert torch.equal(q["conv_norm_out.weight"], torch.ones(32)) and torch.equal(q["conv_norm_out.bias"],
                                                                                     torch.zeros(32))
    assert all(torch.count_nonzero(q[n]) == 0 for n in names if n.endswith(".bias"))
    out = first(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 5, 32)).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_materialize_moves_buffers_and_keeps_their_dtype():
    with init_empty_weights(include_buffers=False):
        text = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=77, vocab_size=50))
    materialize(text, "cpu", torch.bfloat16, seed=0, component="text_encoder")
    (name, position_ids), = text.named_buffers()
    assert name.endswith("position_ids") and position_ids.dtype == torch.int64
    assert torch.equal(position_ids, torch.arange(77)[None])
    assert {p.dtype for p in text.parameters()} == {torch.bfloat16}


def load_bench_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "float16", 989.4e12),
    ("NVIDIA H100 PCIe", "float16", 756e12),
    ("NVIDIA H200", "bfloat16", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "float16", 312e12),
    ("NVIDIA L40S", "float16", 362.05e12),
    ("NVIDIA L40", "float16", 181.05e12),
    ("NVIDIA L4", "float16", 121e12),
    ("NVIDIA GeForce RTX 4090", "float16", 165.2e12),
    ("NVIDIA H100 80GB HBM3", "float32", None),
    ("Some Future GPU", "float16", None),
])
def test_peak_table_picks_the_most_specific_card(name, dtype, peak):
    assert load_bench_script().peak_flops(name, dtype) == peak


@pytest.mark.slow
def test_bench_gpu_runs_end_to_end_on_the_cpu(sd15: StableDiffusionInpaintPipeline):
    """``make bench-gpu``'s script on the real SD 1.5 architecture, at its smallest settings: one BatchSize of
    2 exercises every variant (stock, stock sequential, atelier batched, atelier with DeepCache)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--device", "cpu", "--archs", "sd15", "--size", "64",
         "--steps", "1", "--batches", "2", "--repeats", "1", "--warmup", "0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "only show that the script works" in out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["peak_tflops"] is None
    assert report["size"] == 64 and report["steps"] == 1 and report["goal_met"] == {"sd15": None}
    result = report["results"]["sd15"]
    scheduler = PNDMScheduler(**SD15_SCHEDULER)
    scheduler.set_timesteps(1)  # PNDM makes steps + 1 UNet calls from 2 steps on, 1 for 1 step
    assert result["unet_params"] == SD15_INPAINT_UNET
    assert result["unet_calls_per_image"] == len(scheduler.timesteps)
    assert result["size"] == 64 and result["build_s"] > 0 and "b1" not in result
    row = result["b2"]
    for key in ("stock_images_per_s", "stock_sequential_images_per_s", "atelier_images_per_s",
                "atelier_deepcache_images_per_s", "ratio", "ratio_sequential", "ratio_deepcache"):
        assert row[key] > 0, key
    assert row["ratio"] == pytest.approx(row["atelier_images_per_s"] / row["stock_images_per_s"], rel=0.01)
    assert row["peak_fraction"] is None and row["stock_peak_fraction"] is None and row["compile_warmup_s"] is None
    assert row["images_per_call"] == 2
    # every UNet call at batch 2 (classifier-free guidance)
    flops = result["unet_calls_per_image"] * unet_forward_flops(sd15.unet, 64, 64, 2)
    assert row["unet_tflop_per_image"] == pytest.approx(flops / 1e12, abs=1e-4)
