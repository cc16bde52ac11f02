"""What the submodel conformance tests read of a pipeline: every weight, copied (:func:`snapshot`, to prove the
base comes back bit for bit), and the UNet's and the text encoders' outputs on fixed random inputs (:func:`probe`,
compared with an oracle's by :func:`relative_error`)."""
from __future__ import annotations

import torch


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of every module of the pipeline, copied."""
    return {f"{name}.{key}": value.detach().clone()
            for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)
            for key, value in module.state_dict().items()}


@torch.no_grad()
def probe(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The UNet's noise prediction and each text encoder's hidden states (and projected embedding) on fixed
    random inputs."""
    g = torch.Generator().manual_seed(1234)
    unet = modules["unet"]
    config = unet.config
    sample = torch.randn(1, config.in_channels, 8, 8, generator=g)
    context = torch.randn(1, 8, config.cross_attention_dim, generator=g)
    extra = {}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                      "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    out = {"unet": unet(sample, torch.tensor([500]), encoder_hidden_states=context, return_dict=False, **extra)[0]}
    for name in ("text_encoder", "text_encoder_2"):
        if name not in modules:
            continue
        te = modules[name]
        ids = torch.randint(0, te.config.vocab_size, (2, 12), generator=g)
        result = te(ids)
        out[name] = result.last_hidden_state
        if getattr(result, "text_embeds", None) is not None:
            out[f"{name}.text_embeds"] = result.text_embeds
    return out


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())
