"""Fixtures shared by the worker tests: the tiny demo inpainting model, built by code, and a CPU
pipeline loaded from it (once per test module; tests that change it restore it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from support.models import load_folder
from workers.demo.model import ensure_demo_model


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return ensure_demo_model(tmp_path_factory.mktemp("models") / "demo-inpaint")


@pytest.fixture(scope="module")
def pipe(demo_dir):
    return load_folder(demo_dir)
