"""The original (LDM/CompVis, "sgm") module names of a diffusers UNet, computed from its config.

LoRAs extracted from checkpoints, and most SDXL LoRAs, name UNet layers the way the original Stable Diffusion
code does (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``, ``middle_block.0.in_layers.2``,
``output_blocks.2.1.conv``); diffusers' UNet names the same layers ``down_blocks.1.attentions.0...``,
``mid_block.resnets.0.conv1``, ``up_blocks.0.upsamplers.0.conv``. :func:`ldm_module_names` gives, for every
module of a loaded UNet, its original name, from the UNet's own config (levels, layers per block, which
blocks have attention, SDXL's added embedding), so it holds for SD 1.x, SD 2.x and SDXL and for any size,
not for one table.

The original layout, per level ``b`` (of ``L``) with ``n`` layers per block:

* ``input_blocks.0.0`` is ``conv_in``; ``input_blocks.{b*(n+1)+j+1}.0`` is ``down_blocks.b.resnets.j`` and
  ``.1`` its attention ``down_blocks.b.attentions.j``; ``input_blocks.{(b+1)*(n+1)}.0.op`` the level's
  downsampler conv (all levels but the last);
* ``middle_block.0`` / ``.1`` / ``.2``: ``mid_block.resnets.0``, ``mid_block.attentions.0``,
  ``mid_block.resnets.1``;
* ``output_blocks.{b*(n+1)+j}.0`` is ``up_blocks.b.resnets.j`` (``j`` up to ``n``), ``.1`` its attention; the
  last layer of a level (but the last level) carries the upsampler conv in the next slot (``.2`` after an
  attention, ``.1`` without): ``output_blocks.k.2.conv``;
* ``time_embed.0`` / ``.2`` (``time_embedding.linear_1`` / ``_2``), SDXL's ``label_emb.0.0`` / ``.0.2``
  (``add_embedding.linear_1`` / ``_2``), ``out.0`` / ``out.2`` (``conv_norm_out`` / ``conv_out``);
* inside a resnet: ``in_layers.0`` / ``.2`` (``norm1`` / ``conv1``), ``emb_layers.1`` (``time_emb_proj``),
  ``out_layers.0`` / ``.3`` (``norm2`` / ``conv2``), ``skip_connection`` (``conv_shortcut``); inside an
  attention block the names are the same in both layouts.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
          "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
          "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2",
          "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
          "mid_block.resnets.1": "middle_block.2"}


def block_prefixes(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers prefix -> original prefix of every block of a UNet with this config (a diffusers
    ``UNet2DConditionModel`` config: ``block_out_channels``, ``layers_per_block``, ``down_block_types``,
    ``up_block_types``)."""
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"layers_per_block {per_block!r}: only one number for every level is supported")
    prefixes = dict(_FIXED)
    for b in range(levels):
        down_attention = "CrossAttn" in config["down_block_types"][b]
        up_attention = "CrossAttn" in config["up_block_types"][b]
        for j in range(per_block):
            slot = b * (per_block + 1) + j + 1
            prefixes[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{slot}.0"
            if down_attention:
                prefixes[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{slot}.1"
        if b < levels - 1:
            prefixes[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{(b + 1) * (per_block + 1)}.0.op"
        for j in range(per_block + 1):
            slot = b * (per_block + 1) + j
            prefixes[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{slot}.0"
            if up_attention:
                prefixes[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{slot}.1"
        if b < levels - 1:
            last = b * (per_block + 1) + per_block
            prefixes[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if up_attention else 1}.conv"
    return prefixes


def ldm_module_names(module_names: Iterable[str], config: Mapping[str, Any]) -> dict[str, str]:
    """For each diffusers module name of a UNet (e.g. ``down_blocks.1.resnets.0.conv1``), its original name
    (``input_blocks.4.0.in_layers.2``); names outside the mapped blocks are left out."""
    prefixes = block_prefixes(config)
    ordered = sorted(prefixes, key=len, reverse=True)  # the longest (most specific) prefix wins
    out: dict[str, str] = {}
    for name in module_names:
        prefix = next((p for p in ordered if name == p or name.startswith(p + ".")), None)
        if prefix is None:
            continue
        rest = name[len(prefix):].lstrip(".")
        if ".resnets." in prefix or prefix in ("mid_block.resnets.0", "mid_block.resnets.1"):
            first, _, tail = rest.partition(".")
            rest = ".".join(part for part in (_RESNET.get(first, first), tail) if part)
        out[name] = ".".join(part for part in (prefixes[prefix], rest) if part)
    return out
