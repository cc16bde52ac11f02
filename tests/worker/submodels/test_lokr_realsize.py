"""A LyCORIS LoKr file as sd-scripts writes it (``lycoris.kohya``: text encoder and UNet, every attention, feed-
forward, projection, resnet, shortcut, time-embedding, down- and upsampling layer; the 3x3 convolutions factored
in the flattened layout, ``w1`` (a, b) and ``w2 = w2_a @ w2_b`` (c, e) with ``b * e = in * 3 * 3`` and ``b`` not
dividing ``in``) applies whole on the real-size SD 1.5 inpainting architecture (``workers/demo/realsize.py``,
random weights): every layer changes, each 3x3 convolution by exactly the delta of the independent oracle
(``tests/support/lora_files.py``, index arithmetic, no ``torch.kron``), and the base comes back bit for bit.

Slow: about a billion parameters are made on the CPU."""
from __future__ import annotations

import pytest
import torch

from support.lora_files import TE_KINDS, UNET_KINDS, Layer, delta, lokr_tensors, targets, write_kohya
from workers.demo.realsize import build_sd15_inpaint
from workers.submodels.apply import apply_submodels
from workers.submodels.spec import SubModelSpec

pytestmark = pytest.mark.slow

#: sd-scripts' LyCORIS targets on SD 1.x beyond the LoRA kinds: resnet shortcuts and the down/upsampling convs.
EXTRA_KINDS = ("conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")


def test_a_kohya_lokr_file_with_flattened_3x3_convolutions_applies_whole_on_real_size_sd15(tmp_path):
    torch.manual_seed(0)
    pipe = build_sd15_inpaint("cpu", torch.float32)
    found = targets(pipe, (*UNET_KINDS, *EXTRA_KINDS), TE_KINDS)
    layers = [Layer(c, m, lokr_tensors(w, m, w1="full", w2="decomposed", rank=8, alpha=4.0, layout="flattened"))
              for c, m, w in found]
    convs = [layer for layer, (_, _, w) in zip(layers, found, strict=True) if w.dim() == 4 and w.shape[2:] == (3, 3)]
    in_channels = {(c, m): w.shape[1] for c, m, w in found}
    # w1's columns do not divide the input channels: only the flattened reading of the factors exists
    flattened = [layer for layer in convs
                 if in_channels[layer.component, layer.module] % layer.tensors["lokr_w1"].shape[1]]
    assert len(layers) > 300 and len(convs) >= 40 and len(flattened) == len(convs), (len(layers), len(convs),
                                                                                     len(flattened))
    file = write_kohya(tmp_path / "lokr.safetensors", layers, "sd15")

    modules = {(c, m): dict(getattr(pipe, c).named_modules())[m] for c, m, _ in found}
    sums = {key: module.weight.detach().double().sum().item() for key, module in modules.items()}
    bases = {(layer.component, layer.module): modules[layer.component, layer.module].weight.detach().clone()
             for layer in convs}

    with torch.no_grad(), apply_submodels(pipe, [SubModelSpec("lokr", "LoRA", file.path, weight=1.0)]):
        unchanged = [key for key, module in modules.items() if module.weight.double().sum().item() == sums[key]]
        assert not unchanged, f"{len(unchanged)} of {len(modules)} layers not patched, e.g. {unchanged[0]}"
        for layer in convs:
            key = (layer.component, layer.module)
            want = bases[key] + delta(layer.tensors, bases[key].shape)
            got = modules[key].weight
            err = (got - want).abs().max() / want.abs().max()
            assert err < 1e-5, (layer.module, float(err))
    for key, module in modules.items():
        assert module.weight.detach().double().sum().item() == sums[key], key
    for key, base in bases.items():
        assert torch.equal(modules[key].weight, base), key
