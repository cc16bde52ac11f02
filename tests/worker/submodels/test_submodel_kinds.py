"""The submodel kind registry (workers/submodels/kinds.py): every submodel type of the contract has one kind,
and a new kind is its module plus one registration line. A throwaway kind, written here as its own module
would be and registered by one call, is read through the model cache, applied in its order among the built-in
kinds, undone exactly, and gets the per-request image it asks for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.contract.limits import SUBMODEL_TYPES, ModelType
from workers.demo import submodels as demo
from workers.models.cache import ModelCache
from workers.models.kinds import WorkerModels
from workers.submodels import spec as spec_module
from workers.submodels.apply import apply_submodels, read_submodel
from workers.submodels.files import FileFormatError, read_weights
from workers.submodels.kinds import kinds, register, registered, unregister
from workers.submodels.spec import Loaded, SubmodelError, SubmodelKind, SubModelSpec, WithImage

# ------------------------------------------------------------------ a throwaway kind, as its module would be

TINT = "Throwaway"       # stands for its ModelType member (app/contract/limits.py); no real kind's name
events: list[str] = []   # what the kinds of this test did, in order


def read_tint(path: Path) -> torch.Tensor:
    """A tint file: one tensor of the UNet's output channels, added to the UNet's output."""
    content, _ = read_weights(path)
    if not isinstance(content, torch.Tensor):
        raise FileFormatError(f"{path.name} holds no tensor")
    return content


@contextmanager
def tinted(pipe: Any, items: list[Loaded], **_options: Any) -> Iterator[None]:
    """Adds each item's tint, times its weight, to the UNet's output; the hooks are removed on exit."""
    def hook(item: Loaded):
        def add(module, args, output):
            sample = output[0] if isinstance(output, tuple) else output.sample
            shifted = sample + item.weight * item.data.view(1, -1, 1, 1).to(sample)
            return (shifted, *output[1:]) if isinstance(output, tuple) else type(output)(sample=shifted)
        return add

    events.append(f"tint on: {[item.spec.model_code for item in items]}")
    handles = [pipe.unet.register_forward_hook(hook(item)) for item in items]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        events.append("tint off")


def check_tint(spec: SubModelSpec, weight: float) -> None:
    if weight > 1:
        raise SubmodelError(spec.model_code, f"a tint's weight is at most 1, got {weight:g}")


TINT_KIND = SubmodelKind(TINT, read=read_tint, apply=tinted, order=15, check=check_tint)  # after LoRAs


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def tint_type(monkeypatch):
    """The throwaway kind registered (the one line of workers/submodels/kinds.py) and its type known to the
    contract (its ModelType member)."""
    monkeypatch.setattr(spec_module, "SUBMODEL_TYPES", (*SUBMODEL_TYPES, TINT))
    events.clear()
    with registered(TINT_KIND):
        yield TINT


def tint_file(path: Path, values: list[float]) -> Path:
    torch.save(torch.tensor(values), path)
    return path


def unet_out(pipe) -> torch.Tensor:
    torch.manual_seed(0)
    latents = torch.randn(1, pipe.unet.config.in_channels, 8, 8)
    context = torch.randn(1, 4, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        return pipe.unet(latents, 10, encoder_hidden_states=context).sample


def worker_models() -> WorkerModels:
    cache = ModelCache(device_bytes=0, host_bytes=2 * 1024**3, device="cpu")
    return WorkerModels(cache, device="cpu", dtype=torch.float32, models_dir=Path("/nonexistent"))


# ------------------------------------------------------------------------------------------------ tests

def test_every_submodel_type_of_the_contract_has_one_kind_and_the_built_in_order_holds():
    by_type = {kind.model_type: kind for kind in kinds()}
    assert set(by_type) == set(SUBMODEL_TYPES) and len(kinds()) == len(SUBMODEL_TYPES)
    assert [kind.model_type for kind in kinds()] == [ModelType.LORA, ModelType.EMBEDDING, ModelType.HYPERNETWORK]
    assert [kind.model_type for kind in kinds() if kind.separate_attention] == [ModelType.HYPERNETWORK]
    with pytest.raises(ValueError, match="registered already"):
        register(by_type[ModelType.LORA])
    assert SubModelSpec("m", "LoRA", "x").model_type is ModelType.LORA  # the wire's string becomes the member


def test_a_new_kind_is_read_through_the_cache_applied_and_undone_exactly(pipe, tint_type, tmp_path):
    channels = pipe.unet.config.out_channels
    file = tint_file(tmp_path / "warm.pt", [0.5] * channels)
    base = unet_out(pipe)
    models = worker_models()
    tint = SubModelSpec(model_code="warm", model_type=tint_type, path=file, weight=0.4)
    for _ in range(2):
        with models.cache.lease() as lease, apply_submodels(pipe, [tint], lambda s: models.submodel(lease, s)):
            assert torch.allclose(unet_out(pipe), base + 0.2, atol=1e-5)
        assert torch.equal(unet_out(pipe), base)
    assert (models.cache.stats.loads, models.cache.stats.hits) == (1, 1)  # its kind's cache key, host
    assert [label for label, _ in models.cache.cached("host")] == ["warm"]
    assert events == ["tint on: ['warm']", "tint off"] * 2


def test_a_new_kind_takes_its_place_in_the_order_and_an_error_in_the_job_undoes_every_kind(pipe, tint_type,
                                                                                         tmp_path):
    lora = SubModelSpec(model_code="lora", model_type=ModelType.LORA,
                        path=demo.write_demo_lora_kohya(tmp_path / "l.safetensors", seed=1), weight=1.0)
    tint = SubModelSpec(model_code="t", model_type=tint_type, path=tint_file(tmp_path / "t.pt", [0.0]))
    base = unet_out(pipe)
    lora_merged: list[bool] = []

    @contextmanager
    def watching(pipe, items, **options):
        lora_merged.append(not torch.equal(unet_out(pipe), base))
        with tinted(pipe, items, **options):
            yield

    with swapped(TINT_KIND, SubmodelKind(TINT, read=read_tint, apply=watching, order=15)):
        with pytest.raises(RuntimeError, match="in the job"), apply_submodels(pipe, [tint, lora]):
            raise RuntimeError("in the job")
    assert lora_merged == [True] and events == ["tint on: ['t']", "tint off"]
    assert torch.equal(unet_out(pipe), base)


def test_a_kind_that_fails_to_apply_leaves_the_kinds_before_it_undone(pipe, tint_type, tmp_path):
    lora = SubModelSpec(model_code="lora", model_type=ModelType.LORA,
                        path=demo.write_demo_lora_kohya(tmp_path / "l.safetensors", seed=1), weight=1.0)
    tint = SubModelSpec(model_code="t", model_type=tint_type, path=tint_file(tmp_path / "t.pt", [0.0]))
    base = unet_out(pipe)

    @contextmanager
    def refusing(pipe, items, **_options):
        raise SubmodelError(items[0].spec.model_code, "made for another base model")
        yield

    with swapped(TINT_KIND, SubmodelKind(TINT, read=read_tint, apply=refusing, order=15)):
        with pytest.raises(SubmodelError, match="submodel t: made for another base model"), \
                apply_submodels(pipe, [lora, tint]):
            pass
    assert torch.equal(unet_out(pipe), base)


@contextmanager
def swapped(old: SubmodelKind, new: SubmodelKind) -> Iterator[None]:
    """``new`` registered in the place of ``old`` for the block."""
    unregister(old)
    try:
        with registered(new):
            yield
    finally:
        register(old)


def test_a_kinds_check_runs_before_its_file_is_read_and_before_the_pipeline_is_touched(pipe, tint_type, tmp_path):
    reads: list[str] = []

    def read(spec):
        reads.append(spec.model_code)
        return read_submodel(spec)

    ok = SubModelSpec(model_code="ok", model_type=tint_type, path=tint_file(tmp_path / "ok.pt", [0.0]))
    heavy = SubModelSpec(model_code="heavy", model_type=tint_type, path=tmp_path / "missing.pt", weight=1.5)
    with pytest.raises(SubmodelError, match=r"submodel heavy: a tint's weight is at most 1, got 1\.5"), \
            apply_submodels(pipe, [ok, heavy], read):
        pass
    assert reads == ["ok"] and events == []  # heavy's (missing) file never read, no kind applied


def test_a_kind_that_needs_an_image_gets_the_requests_image(pipe, tint_type, tmp_path):
    got: list[Any] = []

    @contextmanager
    def with_image(pipe, items, **_options):
        got.extend((item.spec.model_code, item.image) for item in items)
        yield

    needy = SubmodelKind(TINT, read=read_tint, apply=with_image, order=15, needs_image=True)
    file = tint_file(tmp_path / "ip.pt", [0.0])
    image = np.zeros((4, 4, 3), np.uint8)
    with swapped(TINT_KIND, needy):
        without = SubModelSpec(model_code="ip", model_type=tint_type, path=file)
        with pytest.raises(SubmodelError, match="submodel ip: a Throwaway needs an image in the request"), \
                apply_submodels(pipe, [without]):
            pass
        unit = SubModelSpec(model_code="ip", model_type=tint_type, path=file, image="a" * 64)
        opened: dict[str, Any] = {"a" * 64: image}  # the job resolves the storage key
        with apply_submodels(pipe, [unit], lambda s: WithImage(read_submodel(s), opened[s.image])):
            pass
    assert got == [("ip", image)]


def test_an_unregistered_type_is_a_submodel_error_naming_the_model(pipe, monkeypatch, tmp_path):
    monkeypatch.setattr(spec_module, "SUBMODEL_TYPES", (*SUBMODEL_TYPES, TINT))
    stray = SubModelSpec(model_code="stray", model_type=TINT, path=tint_file(tmp_path / "s.pt", [0.0]))
    with pytest.raises(SubmodelError, match="submodel stray: no submodel kind Throwaway on this worker"), \
            apply_submodels(pipe, [stray]):
        pass
