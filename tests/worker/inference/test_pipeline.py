"""The inpainting pipeline on the tiny demo checkpoints, on the CPU: sizes, exact clothes, seeds, batches,
progress, and the demo model builder itself."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from support.models import garment, load_folder
from workers.demo import publish
from workers.demo.model import DEMO_BUILD, MARKER_FILE, ensure_demo_model, ensure_demo_model_sd15
from workers.inference.inpaint import Sampling, run_inpaint
from workers.models.cache import ModelLoadError
from workers.models.device import pick_device

STEPS = 2


def generate(pipe, comp, seed=7, batch_size=1, on_step=None, prompt="a woman in a dress"):
    images = run_inpaint(pipe, comp, prompt, "blurry",
                         Sampling(seed=seed, batch_size=batch_size, steps=STEPS, guidance_scale=7.5, on_step=on_step))
    return [np.asarray(image) for image in images]


@contextmanager
def unet_input_shapes(pipe) -> Iterator[list[tuple[int, ...]]]:
    """Record the shape of every UNet input inside the ``with`` block."""
    shapes: list[tuple[int, ...]] = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        yield shapes
    finally:
        handle.remove()


@pytest.mark.parametrize("size", [(64, 64), (72, 40), (67, 45)])
def test_output_has_the_exact_size_and_the_clothes_of_the_input(pipe, size):
    comp = garment(*size)
    [image] = generate(pipe, comp)
    assert image.shape == (size[1], size[0], 3)
    original = np.asarray(comp.image)
    np.testing.assert_array_equal(image[comp.keep], original[comp.keep])
    assert (image[~comp.keep] != original[~comp.keep]).any()  # the rest was redrawn


@pytest.mark.parametrize(("size", "latent"), [((72, 40), (5, 9)), ((67, 45), (6, 9))])
def test_the_model_runs_at_the_requested_size_rounded_up_to_8(pipe, size, latent):
    """Without explicit height/width the pipeline would work at the UNet's default 256x256 (latent 32x32)."""
    with unet_input_shapes(pipe) as shapes:
        generate(pipe, garment(*size))
    # classifier-free guidance doubles the batch; 9 channels = latents + mask + masked-image latents
    assert shapes == [(2, 9, *latent)] * STEPS


def test_same_seed_gives_identical_images_and_another_seed_different_ones(pipe):
    comp = garment(72, 40)
    first, again, other = generate(pipe, comp, seed=11), generate(pipe, comp, seed=11), generate(pipe, comp, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    assert np.abs(first[0].astype(int) - other[0])[~comp.keep].mean() > 5


def test_batch_image_i_matches_a_single_run_with_seed_plus_i(pipe):
    comp = garment(67, 45)
    batch = generate(pipe, comp, seed=100, batch_size=3)
    for i, image in enumerate(batch):
        [single] = generate(pipe, comp, seed=100 + i)
        # one batched call: within a grey level (tests/worker/inference/test_batching.py); this tiny model's CPU
        # kernels happen to round alike
        assert np.abs(image.astype(int) - single).max() <= 1
    assert not np.array_equal(batch[0], batch[1])


def test_progress_counts_every_step_of_the_whole_batch(pipe):
    calls = []
    generate(pipe, garment(64, 64), batch_size=2, on_step=lambda step, total: calls.append((step, total)))
    # both images in one call: each denoising step advances the batch's progress by two image-steps
    assert calls == [(2 * step, 2 * STEPS) for step in range(1, STEPS + 1)]


def test_prompt_changes_the_image(pipe):
    comp = garment(64, 64)
    [a] = generate(pipe, comp, prompt="a woman in a dress")
    [b] = generate(pipe, comp, prompt="a man on a beach at sunset")
    assert not np.array_equal(a, b)


def test_a_four_channel_checkpoint_loads_as_inpainting_and_keeps_the_clothes(tmp_path):
    source = ensure_demo_model_sd15(tmp_path / "demo-sd15")
    pipe4 = load_folder(source)
    assert type(pipe4).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe4.unet.config.in_channels == 4
    comp = garment(67, 45)
    first, second = generate(pipe4, comp, batch_size=2)
    for image in (first, second):
        assert image.shape == (45, 67, 3)
        np.testing.assert_array_equal(image[comp.keep], np.asarray(comp.image)[comp.keep])
    assert not np.array_equal(first, second)


def test_demo_tokenizer_is_a_real_bpe_tokenizer(pipe):
    tokenizer = pipe.tokenizer
    assert len(tokenizer) == pipe.text_encoder.config.vocab_size == 1000
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a photo of a woman wearing a red dress").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert "photo</w>" in tokens and "dress</w>" in tokens  # learnt merges, not single bytes
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a woman wearing a red dress"


# --- the demo model builder ---------------------------------------------------------------------------

def weight_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_demo_model_is_deterministic_from_the_seed(tmp_path, demo_dir):
    again = weight_files(ensure_demo_model(tmp_path / "again", seed=0))
    assert set(again) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                          "vae/diffusion_pytorch_model.safetensors"}
    assert again == weight_files(demo_dir)
    other = weight_files(ensure_demo_model(tmp_path / "other", seed=1))
    assert all(other[name] != again[name] for name in again)


def test_demo_model_is_small_and_readable_by_everyone(demo_dir):
    files = [p for p in demo_dir.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in files)  # diffusers writes weights 0600


def test_ensure_demo_model_is_idempotent_and_checks_what_is_there(demo_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*")}
    assert ensure_demo_model(demo_dir) == demo_dir
    assert {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*")} == before  # nothing rebuilt
    with pytest.raises(ValueError, match="different demo model"):
        ensure_demo_model(demo_dir, seed=5)
    with pytest.raises(ValueError, match="different demo model"):
        ensure_demo_model_sd15(demo_dir)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        ensure_demo_model(foreign)


def test_concurrent_builders_publish_one_complete_folder(tmp_path):
    dest = tmp_path / "shared" / "demo"
    results, errors = [], []

    def build():
        try:
            results.append(ensure_demo_model(dest, seed=3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [dest, dest]
    assert (dest / "model_index.json").is_file() and (dest / MARKER_FILE).is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["demo"]  # no temporary build left behind
    assert load_folder(dest) is not None


def make_outdated(folder: Path) -> None:
    """Turn a demo folder into what build 1 left: a marker without ``build`` and a random AutoencoderKL."""
    marker = json.loads((folder / MARKER_FILE).read_text())
    del marker["build"]
    (folder / MARKER_FILE).write_text(json.dumps(marker))
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (folder / "vae" / "stale.bin").write_bytes(b"old")


def assert_current_build(dest: Path, reference: Path) -> None:
    assert json.loads((dest / MARKER_FILE).read_text())["build"] == DEMO_BUILD
    assert json.loads((dest / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert not (dest / "vae" / "stale.bin").exists()
    assert weight_files(dest) == weight_files(reference)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no build or old folder left behind
    assert load_folder(dest) is not None


def test_an_outdated_demo_build_is_replaced_by_an_atomic_exchange(tmp_path, demo_dir, monkeypatch):
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    (probe_a / "x").touch()
    try:
        publish.exchange(probe_a, probe_b)
    except OSError as exc:
        pytest.skip(f"renameat2(RENAME_EXCHANGE) is not available here: {exc}")
    assert (probe_b / "x").exists() and not (probe_a / "x").exists()
    probe_a.rmdir(), (probe_b / "x").unlink(), probe_b.rmdir()

    dest = ensure_demo_model(tmp_path / "demo")
    make_outdated(dest)
    exchanges = []
    real_exchange = publish.exchange
    monkeypatch.setattr(publish, "exchange", lambda a, b: (real_exchange(a, b), exchanges.append(b)))
    assert ensure_demo_model(dest) == dest
    assert exchanges == [dest]
    assert_current_build(dest, demo_dir)


def test_an_outdated_demo_build_is_replaced_without_renameat2(tmp_path, demo_dir, monkeypatch):
    dest = ensure_demo_model(tmp_path / "demo")
    make_outdated(dest)

    def unsupported(a, b):
        raise OSError(errno.ENOSYS, "not here")

    monkeypatch.setattr(publish, "exchange", unsupported)
    assert ensure_demo_model(dest) == dest
    assert_current_build(dest, demo_dir)


def test_only_an_older_build_of_the_same_demo_model_is_replaced(tmp_path):
    dest = ensure_demo_model(tmp_path / "demo")
    marker = json.loads((dest / MARKER_FILE).read_text())
    for changed in ({"build": DEMO_BUILD + 1}, {"seed": 9}, {"unet_in_channels": 4}, {"kind": "other"}):
        (dest / MARKER_FILE).write_text(json.dumps({**marker, **changed, "build": changed.get("build", 1)}))
        with pytest.raises(ValueError, match="different demo model"):
            ensure_demo_model(dest)
    assert json.loads((dest / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"  # untouched


# --- device and loading -------------------------------------------------------------------------------

def test_pick_device():
    assert pick_device("cpu") == ("cpu", torch.float32)
    assert pick_device(" CPU ") == ("cpu", torch.float32)
    expected_auto = ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert pick_device("auto") == expected_auto
    with pytest.raises(ValueError, match="cuda:N"):
        pick_device("cuda:first")
    with pytest.raises(ValueError, match="invalid device"):
        pick_device("tpu")
    with pytest.raises(RuntimeError, match="CUDA device"):
        pick_device(f"cuda:{torch.cuda.device_count()}")


def test_loading_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_folder(tmp_path)


def test_inference_prints_no_progress_bar(pipe, capfd):
    capfd.readouterr()
    generate(pipe, garment(64, 64))
    out, err = capfd.readouterr()
    assert "it/s" not in out + err and "%|" not in out + err
