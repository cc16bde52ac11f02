"""The key names of LoRAs saved by diffusers' older training scripts, renamed to today's diffusers/peft names.

diffusers' ``train_text_to_image_lora.py`` and ``train_dreambooth_lora.py`` (and the SDXL variants) saved their
LoRAs in these layouts before today's peft one (``unet.<module>.lora_A.weight`` / ``lora_B.weight``,
``text_encoder.<module>...``), and files in all of them are still shared on model sites:

* **attention processors** (``LoRAAttnProcessor``, saved by ``unet.save_attn_procs``; from the first LoRA
  scripts, diffusers 0.12 in early 2023, to about 0.20):
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_k_lora.down.weight``, with no prefix,
  or with ``unet.`` once the scripts saved through ``save_lora_weights``; ``to_q/k/v/out_lora`` patch ``to_q``,
  ``to_k``, ``to_v`` and ``to_out.0``;
* **LoRA-compatible layers** (``LoRACompatibleLinear`` / ``LoRACompatibleConv``, saved through
  ``training_utils.unet_lora_state_dict``; about 0.21 to 0.24, before the scripts moved to peft):
  ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight``;
* **the text encoder's patched projections** (``PatchedLoraProjection``; about 0.17 to 0.24):
  ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight``;
* **the text encoder's first LoRAs** (attention processors on CLIP's attention; about 0.15, 0.16):
  ``text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight``, where ``to_q/k/v/out_lora``
  patch ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.

(``up`` alike for each ``down``.) A key with no component prefix belongs to the UNet when its first segment is
one of the UNet's top-level modules (:data:`UNET_TOP_LEVEL`), to the (first) text encoder when it starts with
``text_model.``.

:func:`modern_key` renames a key of any of these layouts to the peft name :mod:`workers.submodels.lora` reads
(``down`` -> ``lora_A``, ``up`` -> ``lora_B``, the component prefix added where missing) and returns every other
key unchanged (kohya ``lora_unet_...``, peft keys, LyCORIS parts, ``alpha``, ``dora_scale``...), so an unknown
key is still refused by the reader, named. These files carry no alpha and no ``lora_adapter_metadata``: their
scale is 1 (``ΔW = up @ down``), which is how diffusers applied them when they were written and how its loader
applies them today, and how :mod:`workers.submodels.lora` applies a peft layer without metadata. Pure string
work: no torch here.
"""

from __future__ import annotations

import re

#: The component prefixes of diffusers' LoRA files, and the components they name.
COMPONENT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}

#: The top-level modules of diffusers' ``UNet2DConditionModel`` that hold weights: a key with no prefix that
#: starts with one of them is the UNet's.
UNET_TOP_LEVEL = frozenset({"conv_in", "time_embedding", "class_embedding", "add_embedding", "encoder_hid_proj",
                            "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_out"})

#: An unprefixed key starting with this is the (first) text encoder's (CLIP's module tree).
TEXT_MODEL_ROOT = "text_model."

#: ``to_<x>_lora`` of an attention processor -> the module it patches, in the UNet and in a CLIP text encoder.
_PROCESSOR_TARGETS = {
    "unet": {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"},
    "text_encoder": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"},
}

_ROLES = {"down": "lora_A", "up": "lora_B"}

# <module>[.processor].to_<x>_lora.<down|up>.weight
_PROCESSOR_KEY = re.compile(r"^(?P<module>.+?)(?:\.processor)?\.to_(?P<x>q|k|v|out)_lora\.(?P<role>down|up)\.weight$")
# <module>.lora.<down|up>.weight and <module>.lora_linear_layer.<down|up>.weight
_LAYER_KEY = re.compile(r"^(?P<module>.+)\.(?:lora|lora_linear_layer)\.(?P<role>down|up)\.weight$")


def _component(key: str) -> tuple[str, str, str] | None:
    """``(prefix, component, rest)`` of a key: its own prefix, or the one its first segment implies; None for a
    key that names no component of diffusers' layout (kohya's ``lora_unet_...``, anything else)."""
    for prefix, component in COMPONENT_PREFIXES.items():
        if key.startswith(prefix):
            return prefix, component, key[len(prefix):]
    if key.split(".", 1)[0] in UNET_TOP_LEVEL:
        return "unet.", "unet", key
    if key.startswith(TEXT_MODEL_ROOT):
        return "text_encoder.", "text_encoder", key
    return None


def modern_key(key: str) -> str:
    """Today's diffusers/peft name of a key written by diffusers' older LoRA training scripts (the module
    docstring's layouts), e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.
    up.weight`` -> ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight``.
    A key of diffusers' layout with no prefix gets its component's; every other key is returned unchanged."""
    found = _component(key)
    if found is None:
        return key
    prefix, component, rest = found
    processor = _PROCESSOR_KEY.match(rest)
    if processor is not None:
        targets = _PROCESSOR_TARGETS["unet" if component == "unet" else "text_encoder"]
        rest = f"{processor['module']}.{targets[processor['x']]}.{_ROLES[processor['role']]}.weight"
    else:
        layer = _LAYER_KEY.match(rest)
        if layer is not None:
            rest = f"{layer['module']}.{_ROLES[layer['role']]}.weight"
    return prefix + rest
