"""DeepCache (workers/patching/deepcache.py) on real, tiny diffusers UNets and pipelines, on the CPU.

The central check is exactness against diffusers' own forward: a cached step must compute what the stock
forward computes when the feature entering the shallow up blocks is replaced by the cached one (done here with
a forward pre-hook on the stock UNet). That pins the shallow path (embeddings, skips, ControlNet residuals,
upsampling sizes of odd latents, SDXL's added conditions) to diffusers' behaviour, whatever the weights.
Everything else (step counts, skipped blocks, fall-backs to full steps, restoring the stock forward, compile)
is checked through the public API.
"""
from __future__ import annotations

import inspect
from collections import Counter

import diffusers
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image

from workers.demo.model import ensure_demo_model
from workers.patching.deepcache import (
    MIRRORED_FORWARD,
    MIRRORED_ON,
    ForwardChanged,
    deep_cache_stats,
    disable_deep_cache,
    enable_deep_cache,
    forward_fingerprint,
    reset_deep_cache,
)

TEXT_DIM = 32


# --- builders ----------------------------------------------------------------------------------------------

def sd_unet(in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """SD 1.5's layout in 3 levels (cross-attention blocks outside, a plain block inside): branches 0-2."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8).eval()


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL's layout in miniature: a plain outer block, cross-attention inside (2 transformer layers deepest),
    linear projections and the "text_time" added embedding (pooled text + 6 size/crop numbers)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=8, use_linear_projection=True,
        cross_attention_dim=TEXT_DIM, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8).eval()


def random_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """``ControlNetModel.from_unet`` with its zero convolutions made non-zero, so that residuals matter."""
    torch.manual_seed(7)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 32, 32))
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.05)
    return controlnet.eval()


def unet_inputs(unet: UNet2DConditionModel, timestep: int, latent_hw: tuple[int, int], seed: int,
                batch: int = 2, controlnet: ControlNetModel | None = None) -> dict:
    """Keyword arguments of one UNet call as a pipeline makes them (batch 2 = classifier-free guidance)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn((batch, unet.config.in_channels, *latent_hw), generator=g)
    kwargs = {"sample": sample, "timestep": torch.tensor(timestep),
              "encoder_hidden_states": torch.randn((batch, 7, TEXT_DIM), generator=g)}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn((batch, TEXT_DIM), generator=g),
                                       "time_ids": torch.tensor([[88.0, 72.0, 0.0, 0.0, 88.0, 72.0]] * batch)}
    if controlnet is not None:
        control_image = torch.rand((batch, 3, latent_hw[0] * 8, latent_hw[1] * 8), generator=g)
        with torch.no_grad():
            down, mid = controlnet(sample[:, :4], kwargs["timestep"], kwargs["encoder_hidden_states"],
                                   controlnet_cond=control_image, return_dict=False)
        kwargs |= {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return kwargs


def call(unet, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**kwargs).sample


def entry_block(unet: UNet2DConditionModel, branch: int) -> torch.nn.Module:
    """The up block a DeepCache cut at ``branch`` feeds with the cached feature."""
    return unet.up_blocks[len(unet.up_blocks) - branch - 1]


class CallCounter:
    """Counts forward calls of named submodules (forward hooks, removed on exit)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.counts: Counter[str] = Counter()
        self.handles = [module.register_forward_hook(lambda *_, name=name: self.counts.update([name]))
                        for name, module in modules.items()]

    def __enter__(self) -> Counter[str]:
        return self.counts

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


# --- exactness against the stock forward -----------------------------------------------------------------------

VARIANTS = {
    # name: (build the UNet, branch, latent size, with a ControlNet)
    "sd15-inpaint-9ch-branch0": (lambda: sd_unet(9), 0, (16, 16), False),
    "sd15-inpaint-9ch-branch1-odd": (lambda: sd_unet(9), 1, (11, 9), False),  # 72x88 px
    "sd15-base-4ch-branch2-mid-only": (lambda: sd_unet(4), 2, (16, 16), False),
    "sdxl-text-time-branch0-odd": (sdxl_unet, 0, (11, 9), False),
    "sdxl-text-time-branch1": (sdxl_unet, 1, (16, 16), False),
    "controlnet-branch0-odd": (lambda: sd_unet(4), 0, (11, 9), True),
    "controlnet-branch1": (lambda: sd_unet(4), 1, (16, 16), True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_step_is_the_stock_forward_with_the_cached_feature(variant):
    """Two calls, t=801 then t=761 (new latents): the first is full and returns the stock output; the second
    is cached and equals the stock forward at t=761 whose shallow-entry feature is replaced by t=801's."""
    build, branch, latent_hw, with_control = VARIANTS[variant]
    unet = build()
    controlnet = random_controlnet(unet) if with_control else None
    first = unet_inputs(unet, 801, latent_hw, seed=1, controlnet=controlnet)
    second = unet_inputs(unet, 761, latent_hw, seed=2, controlnet=controlnet)

    seen: dict[str, torch.Tensor] = {}

    def record(module, args, kwargs) -> None:
        seen["feature"] = kwargs["hidden_states"]

    def substitute(module, args, kwargs) -> tuple[tuple, dict]:
        return args, {**kwargs, "hidden_states": seen["feature"]}

    handle = entry_block(unet, branch).register_forward_pre_hook(record, with_kwargs=True)
    stock_first = call(unet, first)
    handle.remove()
    handle = entry_block(unet, branch).register_forward_pre_hook(substitute, with_kwargs=True)
    reference_second = call(unet, second)
    handle.remove()
    stock_second = call(unet, second)

    enable_deep_cache(unet, interval=2, branch=branch)
    assert torch.equal(call(unet, first), stock_first)
    cached_second = call(unet, second)
    assert deep_cache_stats(unet) == {"enabled": True, "interval": 2, "branch": branch, "full_steps": 1,
                                      "cached_steps": 1}
    assert cached_second.shape == stock_second.shape == (2, 4, *latent_hw)
    torch.testing.assert_close(cached_second, reference_second, rtol=0, atol=1e-6)
    assert not torch.allclose(cached_second, stock_second, atol=1e-4)  # the stale feature did change the step


def test_cached_steps_take_only_the_shallow_controlnet_residuals():
    """A deep ControlNet residual acts through the full step (its effect is in the cached feature) and is
    ignored on cached steps; the outermost residual still acts on cached steps (control keeps steering the
    detail)."""
    unet = sd_unet(4)
    controlnet = random_controlnet(unet)
    first = unet_inputs(unet, 801, (16, 16), seed=1, controlnet=controlnet)
    second = unet_inputs(unet, 761, (16, 16), seed=2, controlnet=controlnet)

    def nudged(kwargs: dict, index: int) -> dict:
        down = list(kwargs["down_block_additional_residuals"])
        down[index] = down[index] + 1.0
        return kwargs | {"down_block_additional_residuals": tuple(down)}

    enable_deep_cache(unet, interval=2, branch=0)

    def generation(first_step: dict, second_step: dict) -> tuple[torch.Tensor, torch.Tensor]:
        reset_deep_cache(unet)
        return call(unet, first_step), call(unet, second_step)

    full, cached = generation(first, second)
    full_nudged, cached_after = generation(nudged(first, -1), second)
    assert not torch.allclose(full_nudged, full)
    assert not torch.allclose(cached_after, cached)  # the deep residual reached the cached feature...
    assert torch.equal(generation(first, nudged(second, -1))[1], cached)  # ...but is ignored on cached steps
    assert not torch.allclose(generation(first, nudged(second, 0))[1], cached)  # the outermost one is not
    assert deep_cache_stats(unet)["cached_steps"] == 4


# --- scheduling: which calls are full ------------------------------------------------------------------------

def test_interval_one_is_always_full_and_bit_exact():
    unet = sd_unet(9)
    calls = [unet_inputs(unet, t, (16, 16), seed=t) for t in (901, 801, 701)]
    stock = [call(unet, kwargs) for kwargs in calls]
    enable_deep_cache(unet, interval=1, branch=0)
    # Same parameters as the stock forward, so that pipelines may pass any of them by position.
    assert [(p.name, p.default) for p in inspect.signature(unet.forward).parameters.values()] == [
        (p.name, p.default) for p in inspect.signature(UNet2DConditionModel.forward.__get__(unet)).parameters.values()]
    assert all(torch.equal(call(unet, kwargs), out) for kwargs, out in zip(calls, stock))
    assert deep_cache_stats(unet)["full_steps"] == 3 and deep_cache_stats(unet)["cached_steps"] == 0


def test_full_steps_come_back_on_reset_new_shape_batch_or_timestep():
    """Each step's kind, through a sequence that exercises every rule that forces a full step."""
    unet = sd_unet(4)
    enable_deep_cache(unet, interval=10, branch=0)
    kinds = []

    def step(timestep: int, latent_hw=(16, 16), batch: int = 2) -> None:
        before = deep_cache_stats(unet)["full_steps"]
        call(unet, unet_inputs(unet, timestep, latent_hw, seed=timestep, batch=batch))
        kinds.append("full" if deep_cache_stats(unet)["full_steps"] > before else "cached")

    step(901)
    step(801)
    reset_deep_cache(unet)
    step(701)                    # after a reset
    step(601)
    step(501, latent_hw=(16, 8))  # another size
    step(401, latent_hw=(16, 8))
    step(301, batch=4)           # another batch (and size)
    step(201, batch=4)
    step(201, batch=4)           # same timestep: a repeated evaluation or a new generation
    step(901, batch=4)           # a higher timestep: a new generation without a reset
    step(801, batch=4)
    assert kinds == ["full", "cached", "full", "cached", "full", "cached", "full", "cached", "full", "full",
                     "cached"]


def test_reenabling_updates_the_settings_and_validates_them():
    unet = sd_unet(4)
    enable_deep_cache(unet, interval=3, branch=0)
    enable_deep_cache(unet, interval=3, branch=0)  # idempotent
    enable_deep_cache(unet, interval=4, branch=2)
    assert deep_cache_stats(unet) == {"enabled": True, "interval": 4, "branch": 2, "full_steps": 0,
                                      "cached_steps": 0}
    assert len(entry_block(unet, 0)._forward_pre_hooks) == 0  # the hook moved with the branch
    assert len(entry_block(unet, 2)._forward_pre_hooks) == 1
    for interval, branch in [(0, 0), (-1, 0), (2.0, 0), (2, 3), (2, -1)]:
        with pytest.raises(ValueError):
            enable_deep_cache(unet, interval=interval, branch=branch)
    assert deep_cache_stats(unet)["interval"] == 4  # a refused update leaves the settings alone
    with pytest.raises(TypeError):
        enable_deep_cache(torch.nn.Linear(2, 2), interval=2)



# --- the mirrored forward ------------------------------------------------------------------------------------

def test_the_installed_diffusers_has_the_forward_deepcache_mirrors():
    """The cached step (_shallow_forward) copies the steps of one diffusers' UNet2DConditionModel.forward, while
    pyproject accepts any diffusers from 0.42 on: a new one must be checked before DeepCache runs on it."""
    found = forward_fingerprint(UNet2DConditionModel.forward)
    assert found == MIRRORED_FORWARD, (
        f"diffusers {diffusers.__version__}'s UNet2DConditionModel.forward (fingerprint {found}) is not the one"
        f" workers/patching/deepcache.py mirrors (diffusers {', '.join(MIRRORED_ON)}: {MIRRORED_FORWARD}); the"
        " worker runs such models without DeepCache. Diff the two forwards, carry every change into"
        " _shallow_forward (embeddings, masks, down/up block calls, residuals, the output), make this file's"
        " other tests pass, then record the new fingerprint and version in MIRRORED_FORWARD and MIRRORED_ON.")


def test_the_fingerprint_ignores_docstrings_comments_and_layout_but_not_code():
    def one(x, y=2):
        """Documented."""
        return x + y  # a comment

    def two(x, y=2):
        return (x +
                y)

    def three(x, y=2):
        return x - y

    assert forward_fingerprint(one) == forward_fingerprint(two) != forward_fingerprint(three)
    assert forward_fingerprint(len) is None  # no Python source: cannot be checked


def test_a_unet_whose_forward_differs_is_refused():
    class Overridden(UNet2DConditionModel):
        def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)

    class Inherited(UNet2DConditionModel):
        pass

    unet = sd_unet(4)
    unet.__class__ = Overridden
    with pytest.raises(ForwardChanged, match="Overridden.forward .* is not the forward DeepCache's cached step"):
        enable_deep_cache(unet, interval=2)
    assert "forward" not in vars(unet) and not deep_cache_stats(unet)["enabled"]
    unet.__class__ = Inherited  # the stock forward, inherited: accepted
    enable_deep_cache(unet, interval=2)
    assert deep_cache_stats(unet)["enabled"]

def test_disable_restores_the_stock_forward():
    unet = sd_unet(9)
    calls = [unet_inputs(unet, t, (16, 16), seed=t) for t in (901, 801)]
    stock = [call(unet, kwargs) for kwargs in calls]
    enable_deep_cache(unet, interval=2, branch=1)
    call(unet, calls[0])
    assert not torch.equal(call(unet, calls[1]), stock[1])
    disable_deep_cache(unet)
    disable_deep_cache(unet)  # no-op when off
    assert "forward" not in vars(unet) and unet.forward.__func__ is UNet2DConditionModel.forward
    assert not any(block._forward_pre_hooks for block in unet.up_blocks)
    assert all(torch.equal(call(unet, kwargs), out) for kwargs, out in zip(calls, stock))
    assert deep_cache_stats(unet)["enabled"] is False
    reset_deep_cache(unet)  # no-op when off


def test_compiled_unet_matches_eager_and_compiles_each_path_once():
    """torch.compile after enabling, with dynamo's "eager" backend (tracing, guards and graph breaks, but no
    code generation, which the CPU test need not pay): same outputs as eager DeepCache; the full and the cached
    path are one graph each (the bookkeeping stays outside, no graph break); a second generation compiles
    nothing new (no guard on step counters or timesteps). A UNet without attention keeps the tracing short;
    the attention blocks are plain modules to dynamo and the exactness tests above cover them."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM).eval()
    generation = [unet_inputs(unet, t, (16, 16), seed=t) for t in (901, 801, 701, 601)]
    enable_deep_cache(unet, interval=2, branch=0)
    eager = [call(unet, kwargs) for kwargs in generation]
    counter = CompileCounter()
    compiled = torch.compile(unet, backend=counter)
    try:
        reset_deep_cache(compiled)  # the wrapper is accepted too
        for kwargs, expected in zip(generation, eager):
            torch.testing.assert_close(call(compiled, kwargs), expected, rtol=0, atol=1e-5)
        assert counter.frame_count == 2
        reset_deep_cache(unet)
        for kwargs in generation:
            call(compiled, kwargs)
        assert counter.frame_count == 2
        assert deep_cache_stats(unet)["full_steps"] == 6 and deep_cache_stats(unet)["cached_steps"] == 6
    finally:
        torch._dynamo.reset()


# --- a whole inpainting pipeline ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inpaint_pipe(tmp_path_factory) -> StableDiffusionInpaintPipeline:
    """The demo inpainting checkpoint (9-channel UNet, 2 levels), loaded as diffusers loads any checkpoint."""
    folder = ensure_demo_model(tmp_path_factory.mktemp("deepcache") / "demo-inpaint")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed: int, output_type: str = "latent", images: int = 1):
    """9 steps at 72x88 px (11x9 latents, odd: the UNet's upsampling needs explicit sizes)."""
    rng = np.random.RandomState(0)
    image = Image.fromarray(rng.randint(0, 256, (88, 72, 3), dtype=np.uint8))
    mask = Image.new("L", (72, 88), 0)
    mask.paste(255, (16, 16, 56, 72))
    return pipe("a woman in a dress", image=image, mask_image=mask, width=72, height=88, num_inference_steps=9,
                num_images_per_prompt=images, generator=torch.Generator().manual_seed(seed),
                output_type=output_type).images


def test_pipeline_with_interval_one_is_bit_exact(inpaint_pipe):
    stock = generate(inpaint_pipe, seed=0)
    enable_deep_cache(inpaint_pipe.unet, interval=1)
    try:
        assert torch.equal(generate(inpaint_pipe, seed=0), stock)
    finally:
        disable_deep_cache(inpaint_pipe.unet)
    assert torch.equal(generate(inpaint_pipe, seed=0), stock)


def test_pipeline_interval_three_skips_the_deep_blocks_and_stays_close(inpaint_pipe):
    """9 steps at interval 3: 3 full and 6 cached steps; the deepest down block and the mid block run on the
    full steps only, the outer blocks on all 9. Random weights make image quality meaningless, so closeness is
    a sanity bound: the final latents move from the stock ones by under 10% of what changing the seed moves
    them (measured: about 3%)."""
    unet = inpaint_pipe.unet
    stock, other_seed = generate(inpaint_pipe, seed=0), generate(inpaint_pipe, seed=1)
    enable_deep_cache(unet, interval=3, branch=0)
    try:
        watched = {"down_first": unet.down_blocks[0], "down_last": unet.down_blocks[-1], "mid": unet.mid_block,
                   "up_last": unet.up_blocks[-1]}
        with CallCounter(watched) as counts:
            reset_deep_cache(unet)
            cached = generate(inpaint_pipe, seed=0)
        assert deep_cache_stats(unet)["full_steps"] == 3 and deep_cache_stats(unet)["cached_steps"] == 6
        assert counts == {"down_first": 9, "down_last": 3, "mid": 3, "up_last": 9}
        drift = (cached - stock).abs().mean()
        assert 0 < drift < 0.1 * (other_seed - stock).abs().mean()

        reset_deep_cache(unet)
        pictures = generate(inpaint_pipe, seed=0, output_type="pil", images=2)
        assert [picture.size for picture in pictures] == [(72, 88), (72, 88)]
        assert deep_cache_stats(unet)["full_steps"] == 6 and deep_cache_stats(unet)["cached_steps"] == 12
    finally:
        disable_deep_cache(unet)
