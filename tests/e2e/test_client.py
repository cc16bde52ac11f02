"""The `atelier` command against a live stack, as a user runs it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from support.api import KEYS, PUB, ROOT, example_inputs, generate_body, signed

pytestmark = pytest.mark.slow


def atelier(live_stack, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli.client", "--url", live_stack.url, "--public-key", PUB["pk-alice"],
           "--private-key", KEYS["pk-alice"], *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generate_saves_images_with_clothes_kept(live_stack, tmp_path):
    man, mask = example_inputs()
    man.save(tmp_path / "m.png")
    mask.save(tmp_path / "k.png")
    out = atelier(live_stack, "generate", "--mannequin", str(tmp_path / "m.png"), "--clothes-mask",
                  str(tmp_path / "k.png"), "--prompt", "a woman", "--width", "64", "--height", "80",
                  "--resize-mode", "JustResize", "--batch-size", "2", "--sub-model", "demo-lora:0.5",
                  "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    paths = out.stdout.split()
    assert len(paths) == 2
    keep = np.array(mask) > 127
    for p in paths:
        img = np.array(Image.open(p).convert("RGB"))
        assert np.array_equal(img[keep], np.array(man)[keep])


def test_errors_name_the_field_and_model(live_stack, tmp_path):
    man, mask = example_inputs()
    man.save(tmp_path / "m.png")
    mask.save(tmp_path / "k.png")
    base = ["generate", "--mannequin", str(tmp_path / "m.png"), "--clothes-mask", str(tmp_path / "k.png"),
            "--prompt", "x", "-o", str(tmp_path / "out")]
    out = atelier(live_stack, *base, "--model", "nope")
    assert out.returncode == 1 and "Model [nope] not exists" in out.stderr.replace("\n", "")
    out = atelier(live_stack, *base, "--width", "10")
    assert out.returncode == 1 and "Params [Width]" in out.stderr


def test_models_lists_every_type(live_stack):
    out = atelier(live_stack, "models")
    assert out.returncode == 0
    for kind in ("Main", "LoRA", "Embedding", "HyperNetwork", "PreProcessor", "ControlModel"):
        assert kind in out.stdout
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert " Eraser " in lines["demo-eraser"] and " Describer (en, fr) " in lines["demo-describer"]


def test_cancel_names_each_task_and_its_status(live_stack, tmp_path):
    out = live_stack.post(signed(generate_body(Seed=31)))
    uid = out["TaskUID"]
    live_stack.wait(uid)
    done = atelier(live_stack, "cancel", uid, "nosuchtask")
    assert done.returncode == 1  # one of the two is not the caller's task
    assert done.stdout.splitlines() == [f"{uid} Finished", "nosuchtask not found (or not yours)"]


def test_priority_is_sent_with_the_task(live_stack, tmp_path):
    Image.new("RGB", (32, 24), (10, 200, 30)).save(tmp_path / "p.png")
    base = ["resize", str(tmp_path / "p.png"), "--width", "128", "-o", str(tmp_path / "out")]
    out = atelier(live_stack, *base, "--priority", "8")
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "out" / "p_128x96.png").size == (128, 96)
    out = atelier(live_stack, *base, "--priority", "12")  # the server's rule, reached: the field is sent
    message = " ".join(out.stderr.split())
    assert out.returncode == 1 and "Params [Priority] not available: must be between 0 and 9" in message
