"""workers/models: one cache for every kind a worker loads, LRU eviction under a byte budget per place (sizes
measured from the loaded tensors), entries held by a running job never evicted, external VAEs swapped in
for one job only.

Most tests use stand-in pipelines of known byte sizes through the models' ``Loaders``, so they count loads
exactly and run in milliseconds; the last ones run the real loaders on the demo models."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from app.contract.registry import ModelEntry, ModelSource, Registry
from support.api import write_random_safetensors
from workers.demo.upscaler import write_demo_upscaler
from workers.models.cache import ModelCache, ModelLoadError
from workers.models.kinds import Loaders, WorkerModels

MB = 1024 * 1024


class Blob(torch.nn.Module):
    """A module of exactly ``nbytes`` bytes (one uint8 buffer)."""

    def __init__(self, nbytes: int):
        super().__init__()
        self.register_buffer("data", torch.zeros(nbytes, dtype=torch.uint8))


def fake_pipe(code: str, nbytes: int) -> SimpleNamespace:
    unet, vae = Blob(nbytes - nbytes // 4), Blob(nbytes // 4)
    return SimpleNamespace(code=code, unet=unet, vae=vae, components={"unet": unet, "vae": vae, "tokenizer": object()})


def entry(code: str, **source) -> ModelEntry:
    return ModelEntry.model_validate({"ModelCode": code, "Name": code, "ModelType": "Main",
                                      "source": source or {"path": f"/models/{code}"}})


class Loader:
    """Counts loads; ``sizes`` gives each ModelCode's size in bytes (default 1 MB)."""

    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = sizes or {}
        self.calls: list[str] = []
        self.before: list[list[str]] = []  # what was cached when each load started
        self.cache: ModelCache | None = None
        self.fail_with: list[BaseException] = []

    def __call__(self, entry, registry, device, dtype, demo_dir):
        self.calls.append(entry.model_code)
        if self.cache is not None:
            self.before.append([label for label, _ in self.cache.cached()])
        if self.fail_with:
            raise self.fail_with.pop(0)
        return fake_pipe(entry.model_code, self.sizes.get(entry.model_code, MB))


class VaeLoader:
    def __init__(self, nbytes: int = MB // 2):
        self.nbytes = nbytes
        self.calls: list[str] = []

    def __call__(self, source, device, dtype, *, family=None, demo_dir=None, label=None):
        self.calls.append(family)
        return Blob(self.nbytes)


class Models(WorkerModels):
    """WorkerModels whose ``get``/``vae_for`` take and release a lease per call, as one job each."""

    def get(self, entry, registry):
        with self.cache.lease() as lease:
            return self.pipeline(lease, entry, registry)

    def vae_for_job(self, entry, registry, use_main_model_vae=False):
        lease = self.cache.lease()
        inner = self.vae_for(lease, entry, registry, use_main_model_vae)

        class Job:
            def __enter__(_):
                return inner.__enter__()

            def __exit__(_, *exc):
                try:
                    return inner.__exit__(*exc)
                finally:
                    lease.close()

        return Job()


def make_cache(tmp_path: Path, budget: int, sizes: dict[str, int] | None = None, vae_bytes: int = MB // 2):
    loader, vae_loader = Loader(sizes), VaeLoader(vae_bytes)
    cache = ModelCache(device_bytes=budget, host_bytes=budget, device="cpu")
    models = Models(cache, device="cpu", dtype=torch.float32, models_dir=tmp_path / "models",
                    loaders=Loaders(main=loader, vae=vae_loader))
    loader.cache = cache
    return models, loader, vae_loader


def labels(models: Models) -> list[str]:
    return [label for label, _ in models.cache.cached()]


REGISTRY = Registry([entry("A"), entry("B"), entry("C")], Path("/models"))


def test_a_second_get_of_the_same_model_does_not_reload(tmp_path):
    cache, loader, _ = make_cache(tmp_path, budget=10 * MB)
    first = cache.get(REGISTRY.get("A"), REGISTRY)
    assert cache.get(REGISTRY.get("A"), REGISTRY) is first
    assert loader.calls == ["A"] and cache.cache.stats.loads == 1 and cache.cache.stats.hits == 1
    assert cache.cache.cached() == [("A", MB)]  # the size is the modules' bytes, not a guess


def test_with_a_budget_for_one_model_loading_b_evicts_a(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="atelier.worker.cache")
    cache, loader, _ = make_cache(tmp_path, budget=MB)
    cache.get(REGISTRY.get("A"), REGISTRY)
    cache.get(REGISTRY.get("B"), REGISTRY)
    assert labels(cache) == ["B"] and cache.cache.stats.evictions == 1
    assert any(r.getMessage().startswith("evicting pipeline A (1.00 MiB)") for r in caplog.records), caplog.text
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded pipeline B in ")]
    assert loaded and ": 1.00 MiB;" in loaded[0], caplog.text


def test_lru_order_with_three_models_and_a_budget_of_two(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="atelier.worker.cache")
    cache, loader, _ = make_cache(tmp_path, budget=2 * MB)
    a, b, c = (REGISTRY.get(code) for code in "ABC")
    cache.get(a, REGISTRY)
    cache.get(b, REGISTRY)
    cache.get(a, REGISTRY)  # A is now the most recently used
    cache.get(c, REGISTRY)  # evicts B, the least recently used
    assert labels(cache) == ["A", "C"]
    cache.get(b, REGISTRY)  # evicts A
    assert labels(cache) == ["C", "B"]
    assert loader.calls == ["A", "B", "C", "B"]
    evicted = [r.getMessage().split(" ")[2] for r in caplog.records if r.getMessage().startswith("evicting")]
    assert evicted == ["B", "A"]


def test_a_model_larger_than_the_whole_budget_still_loads_alone(tmp_path, caplog):
    cache, loader, _ = make_cache(tmp_path, budget=2 * MB, sizes={"C": 5 * MB})
    cache.get(REGISTRY.get("A"), REGISTRY)
    cache.get(REGISTRY.get("B"), REGISTRY)
    pipe = cache.get(REGISTRY.get("C"), REGISTRY)
    assert pipe.code == "C" and labels(cache) == ["C"]
    assert "over its budget" in caplog.text
    assert cache.get(REGISTRY.get("C"), REGISTRY) is pipe and loader.calls == ["A", "B", "C"]


def test_room_is_made_before_loading_from_the_estimated_size(tmp_path):
    """A model whose safetensors say it needs the whole budget evicts the others before it is loaded, so the
    old and the new model are never in memory together."""
    folder = tmp_path / "big"
    (folder / "unet").mkdir(parents=True)
    save_file({"w": torch.zeros(MB // 4)}, folder / "unet" / "diffusion_pytorch_model.safetensors")  # 1 MB float32
    registry = Registry([entry("A"), entry("BIG", path=str(folder))], tmp_path)
    cache, loader, _ = make_cache(tmp_path, budget=MB + MB // 2)
    cache.get(registry.get("A"), registry)
    cache.get(registry.get("BIG"), registry)
    assert loader.before == [[], []]  # A was already gone when BIG started loading


def test_a_changed_models_config_entry_reloads_the_model(tmp_path):
    cache, loader, _ = make_cache(tmp_path, budget=10 * MB)
    cache.get(REGISTRY.get("A"), REGISTRY)
    changed = Registry([entry("A", path="/models/A-v2")], Path("/"))
    cache.get(changed.get("A"), changed)
    assert loader.calls == ["A", "A"] and labels(cache) == ["A"]


def test_out_of_memory_while_loading_evicts_the_others_and_retries_once(tmp_path):
    cache, loader, _ = make_cache(tmp_path, budget=10 * MB)
    cache.get(REGISTRY.get("A"), REGISTRY)
    loader.fail_with = [torch.cuda.OutOfMemoryError("CUDA out of memory")]
    cache.get(REGISTRY.get("B"), REGISTRY)
    assert loader.calls == ["A", "B", "B"] and labels(cache) == ["B"]
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    loader.fail_with = [oom, oom]
    with pytest.raises(ModelLoadError, match="model C could not be loaded: out of GPU memory"):
        cache.get(REGISTRY.get("C"), REGISTRY)  # still too big alone: a clear error, not a retry loop
    assert loader.calls == ["A", "B", "B", "C", "C"] and cache.cache.cached() == []
    loader.fail_with = [oom]
    with pytest.raises(ModelLoadError, match="out of GPU memory"):
        cache.get(REGISTRY.get("C"), REGISTRY)  # nothing to evict: no retry
    assert loader.calls[-2:] == ["C", "C"] and len(loader.calls) == 6


def test_load_errors_propagate_and_leave_nothing_cached(tmp_path):
    cache, loader, _ = make_cache(tmp_path, budget=10 * MB)
    loader.fail_with = [ModelLoadError("A", "checkpoint file /x does not exist")]
    with pytest.raises(ModelLoadError, match="model A could not be loaded: checkpoint file /x does not exist"):
        cache.get(REGISTRY.get("A"), REGISTRY)
    assert cache.cache.cached() == []
    cache.get(REGISTRY.get("A"), REGISTRY)  # a later job tries again
    assert labels(cache) == ["A"]


# --- external VAEs -------------------------------------------------------------------------------------------


def vae_registry(**vaes) -> Registry:
    return Registry([entry("A"), entry("B")], Path("/models"),
                    {family: ModelSource(path=Path(p)) for family, p in vaes.items()})


def test_vae_for_swaps_in_the_family_vae_and_restores_the_checkpoints_own_even_on_error(tmp_path):
    registry = vae_registry(sd15="/vaes/sd15")
    cache, _, vae_loader = make_cache(tmp_path, budget=10 * MB)
    a = registry.get("A")
    pipe = cache.get(a, registry)
    own = pipe.vae
    with cache.vae_for_job(a, registry) as swapped:
        assert swapped is pipe and pipe.vae is not own and isinstance(pipe.vae, Blob)
        external = pipe.vae
    assert pipe.vae is own
    with pytest.raises(RuntimeError, match="boom"):
        with cache.vae_for_job(a, registry):
            assert pipe.vae is external  # cached: the same object, not loaded again
            raise RuntimeError("boom")
    assert pipe.vae is own
    assert vae_loader.calls == ["sd15"]
    assert labels(cache) == ["A", "vae:sd15"]


def test_vae_for_keeps_the_checkpoints_vae_when_asked_or_when_none_is_configured(tmp_path):
    cache, _, vae_loader = make_cache(tmp_path, budget=10 * MB)
    registry = vae_registry(sdxl="/vaes/sdxl")  # nothing for sd15
    a = registry.get("A")
    own = cache.get(a, registry).vae
    with cache.vae_for_job(a, registry) as pipe:
        assert pipe.vae is own
    with cache.vae_for_job(a, vae_registry(sd15="/vaes/sd15"), use_main_model_vae=True) as pipe:
        assert pipe.vae is own
    assert vae_loader.calls == []


def test_loading_the_vae_never_evicts_the_pipeline_it_is_for(tmp_path):
    registry = vae_registry(sd15="/vaes/sd15")
    cache, loader, vae_loader = make_cache(tmp_path, budget=MB)  # room for the pipeline only
    cache.get(registry.get("B"), registry)
    with cache.vae_for_job(registry.get("A"), registry) as pipe:
        assert pipe.code == "A" and isinstance(pipe.vae, Blob)
        assert "A" in labels(cache)
    assert loader.calls == ["B", "A"]
    assert "B" not in labels(cache)


# --- the real loaders -------------------------------------------------------------------------------------------


def test_the_real_cache_with_the_demo_model_and_an_external_vae_folder(tmp_path, caplog):
    from diffusers import AutoencoderKL

    caplog.set_level(logging.INFO, logger="atelier.worker.cache")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=8, layers_per_block=1, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  ).save_pretrained(tmp_path / "vae")
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  - {ModelCode: demo, Name: Demo, ModelType: Main, source: {demo: inpaint},"
        " defaults: {scheduler: EulerDiscreteScheduler}}\n"
        "vaes:\n"
        "  sd15: {path: vae}\n")
    registry = Registry.from_file(tmp_path / "models.yaml")
    cache = Models(ModelCache(device_bytes=2**31, host_bytes=2**31), device="cpu", dtype=torch.float32,
                   models_dir=tmp_path / "demos")
    demo = registry.get("demo")
    pipe = cache.get(demo, registry)
    assert cache.get(demo, registry) is pipe and cache.cache.stats.loads == 1
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    own = pipe.vae
    decoded = []
    with cache.vae_for_job(demo, registry) as swapped:
        assert type(swapped.vae) is AutoencoderKL
        hook = swapped.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))
        image = swapped(prompt="a dress", image=Image.new("RGB", (64, 64)), mask_image=Image.new("L", (64, 64), 255),
                        height=64, width=64, num_inference_steps=2, output_type="np",
                        generator=torch.Generator("cpu").manual_seed(0)).images[0]
        hook.remove()
    assert decoded and image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert pipe.vae is own
    sizes = dict(cache.cache.cached())
    assert set(sizes) == {"demo", "vae:sd15"} and all(s > 0 for s in sizes.values())
    assert "loaded pipeline demo in" in caplog.text and "loaded vae vae:sd15 in" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_weights_are_float16_and_eviction_frees_gpu_memory(tmp_path):
    registry = Registry([entry("a", demo="inpaint"), entry("b", demo="sd15")], tmp_path)
    cache = Models(ModelCache(device_bytes=1, host_bytes=2**31, device="cuda"), device="cuda", dtype=torch.float16,
                   models_dir=tmp_path / "demos")
    pipe = cache.get(registry.get("a"), registry)
    assert pipe.unet.dtype == torch.float16 and pipe.unet.device.type == "cuda"
    with_a = torch.cuda.memory_allocated()
    del pipe
    cache.get(registry.get("b"), registry)
    assert labels(cache) == ["b"]
    assert torch.cuda.memory_allocated() <= with_a  # a's weights were released, not kept next to b's


def test_models_sharing_weights_share_one_pipeline(tmp_path):
    """One checkpoint listed twice (say, with and without default control) is loaded once."""
    cache, loader, _ = make_cache(tmp_path, budget=10 * MB)
    shared = Registry([entry("A", path="/models/A"), entry("A-posed", path="/models/A")], Path("/"))
    first = cache.get(shared.get("A"), shared)
    assert cache.get(shared.get("A-posed"), shared) is first
    assert loader.calls == ["A"]
    # A-posed moving to other weights leaves A's pipeline alone (A still uses it)
    moved = Registry([entry("A", path="/models/A"), entry("A-posed", path="/models/B")], Path("/"))
    cache.get(moved.get("A-posed"), moved)
    assert cache.get(moved.get("A"), moved) is first and loader.calls == ["A", "A-posed"]


# --- holds -------------------------------------------------------------------------------------------------------


def test_a_model_a_running_job_holds_is_never_evicted(tmp_path, caplog):
    """Two jobs at once (a thread pool, a second lease): the one that needs room cannot take it from the
    other; the cache goes over its budget, says so, and comes back under it at the next load."""
    cache, loader, _ = make_cache(tmp_path, budget=MB)
    a, b, c = (REGISTRY.get(code) for code in "ABC")
    with cache.cache.lease() as running:
        held = cache.pipeline(running, a, REGISTRY)
        assert cache.cache.held() == ["A"]
        with cache.cache.lease() as other:
            cache.pipeline(other, b, REGISTRY)
            assert labels(cache) == ["A", "B"] and cache.cache.used_bytes() == 2 * MB
            assert "over its budget" in caplog.text
        assert cache.pipeline(running, a, REGISTRY) is held  # still there, no reload
    assert cache.cache.held() == []
    cache.get(c, REGISTRY)  # nothing is held any more: back under the budget
    assert labels(cache) == ["C"] and cache.cache.used_bytes() == MB
    assert loader.calls == ["A", "B", "C"]


def test_the_two_places_have_their_own_budgets(tmp_path):
    """Host RAM entries (parsed submodel files, the translator) never evict device entries and back."""
    cache = ModelCache(device_bytes=MB, host_bytes=MB)
    with cache.lease() as lease:
        lease.get("gpu-1", lambda: Blob(MB), label="gpu-1", kind="pipeline")
        lease.get("ram-1", lambda: Blob(MB), label="ram-1", kind="submodel", place="host")
    cache.get("ram-2", lambda: Blob(MB), label="ram-2", kind="submodel", place="host", estimate=MB)
    assert cache.cached("device") == [("gpu-1", MB)] and cache.cached("host") == [("ram-2", MB)]
    cache.get("gpu-2", lambda: Blob(MB), label="gpu-2", kind="pipeline", estimate=MB)
    assert cache.cached("device") == [("gpu-2", MB)] and cache.cached("host") == [("ram-2", MB)]
    # with the size known before loading, room is made first: the old and the new never held together
    assert cache.stats.peak_bytes == {"device": MB, "host": MB}
    cache.get("gpu-3", lambda: Blob(MB), label="gpu-3", kind="pipeline")  # size unknown until loaded
    assert cache.cached("device") == [("gpu-3", MB)] and cache.stats.peak_bytes["device"] == 2 * MB


def test_an_estimate_function_is_called_on_a_miss_only():
    """Reading a model's headers for its size costs a job nothing once the model is warm."""
    cache = ModelCache(device_bytes=4 * MB, host_bytes=4 * MB)
    calls = []

    def estimate() -> int:
        calls.append(1)
        return MB

    for _ in range(3):
        cache.get("m", lambda: Blob(MB), label="m", kind="pipeline", estimate=estimate)
    assert calls == [1] and cache.used_bytes() >= MB


def test_annotator_files_that_do_not_load_raise_a_value_error_naming_them(tmp_path):
    """A corrupt annotator (controlnet-aux raises whatever its unpickling meets, e.g. IndexError) must reach the
    job as the pre-processor's model error (Error 240), not as an unexpected crash (Error 500)."""
    def corrupt(kind, folder, device):
        raise IndexError("list index out of range")

    def missing(kind, folder, device):
        raise FileNotFoundError(folder)

    cache = ModelCache(device_bytes=MB, host_bytes=MB, device="cpu")
    for loader, error, match in ((corrupt, ValueError, "the canny annotator could not be loaded: list index"),
                                 (missing, FileNotFoundError, "")):
        models = WorkerModels(cache, device="cpu", dtype=torch.float32, models_dir=tmp_path,
                              loaders=Loaders(detector=loader))
        with cache.lease() as lease, pytest.raises(error, match=match):
            models.detectors(lease)("canny", None)
# --- Upscalers (WorkerModels.upscaler, the real loader) ---------------------------------------------------------

def _upscalers(tmp_path: Path) -> tuple[WorkerModels, Registry]:
    write_demo_upscaler(tmp_path / "4x.safetensors")
    write_random_safetensors(tmp_path / "random.safetensors")
    registry = Registry.from_dict({"models": [
        {"ModelCode": code, "Name": code, "ModelType": "Upscaler", "source": {"file": file}}
        for code, file in (("up", "4x.safetensors"), ("same-file", "4x.safetensors"), ("random", "random.safetensors"),
                           ("missing", "missing.pth"))]}, tmp_path)
    models = WorkerModels(ModelCache(device_bytes=10 * MB, host_bytes=10 * MB, device="cpu"), device="cpu",
                          dtype=torch.float32, models_dir=tmp_path / "demo")
    return models, registry


def test_an_upscaler_is_cached_once_per_file_on_the_device(tmp_path):
    models, registry = _upscalers(tmp_path)
    with models.cache.lease() as lease:
        first = models.upscaler(lease, registry.get("up"), registry)
        assert models.upscaler(lease, registry.get("same-file"), registry) is first   # one copy per file
    assert first.scale == 4 and models.cache.stats.loads == 1 and models.cache.stats.hits == 1
    size = 4 * sum(v.numel() for v in first.descriptor.model.state_dict().values())   # measured, float32
    assert models.cache.cached("device") == [("up", size)] and models.cache.cached("host") == []
    write_demo_upscaler(tmp_path / "4x.safetensors", scale=2, seed=5)     # replaced on disk: read again
    with models.cache.lease() as lease:
        again = models.upscaler(lease, registry.get("up"), registry)
    assert again is not first and again.scale == 2 and models.cache.stats.loads == 2


def test_a_file_that_is_no_upscaler_is_a_model_load_error_naming_the_model(tmp_path):
    models, registry = _upscalers(tmp_path)
    for code, why in (("random", "spandrel recognises no super-resolution architecture"),
                      ("missing", "does not exist")):
        with models.cache.lease() as lease, pytest.raises(ModelLoadError) as info:
            models.upscaler(lease, registry.get(code), registry)
        assert info.value.model_code == code and why in info.value.reason
    assert models.cache.cached() == []


def test_an_upscaler_from_the_hub_is_the_repos_one_weights_file(tmp_path, monkeypatch):
    models, _ = _upscalers(tmp_path)
    registry = Registry.from_dict({"models": [{"ModelCode": "hub", "Name": "hub", "ModelType": "Upscaler",
                                               "source": {"hub": "owner/repo"}}]}, tmp_path)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    asked = []

    def fake_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        asked.append((repo_id, tuple(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with models.cache.lease() as lease, pytest.raises(ModelLoadError, match="holds 0 weights files at its root"):
        models.upscaler(lease, registry.get("hub"), registry)
    write_demo_upscaler(snapshot / "4x.pth")          # Real-ESRGAN's release layout: a pickled {"params": ...}
    with models.cache.lease() as lease:
        assert models.upscaler(lease, registry.get("hub"), registry).scale == 4
    assert asked[0] == ("owner/repo", ("*.pth", "*.safetensors", "*.pt", "*.ckpt"))
    write_demo_upscaler(snapshot / "2x.safetensors", scale=2)
    with models.cache.lease() as lease, pytest.raises(ModelLoadError, match=r"holds 2 weights files .*2x.safetensors"
                                                                            r", 4x.pth"):
        models.upscaler(lease, registry.get("hub"), registry)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with models.cache.lease() as lease, pytest.raises(ModelLoadError, match="hub repo owner/repo: OSError"):
        models.upscaler(lease, registry.get("hub"), registry)
