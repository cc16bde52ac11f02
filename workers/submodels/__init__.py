"""Submodels (SubModelList): LoRAs, textual-inversion embeddings and A1111 hypernetworks applied to a warm
base pipeline for one job and removed without a trace.

Public API::

    from workers.submodels import SubModelSpec, SubmodelCache, SubmodelError, apply_submodels, build_prompt

    cache = SubmodelCache(max_bytes=2 * 1024**3)              # one per worker process
    prompt = build_prompt([user_prompt], main_words + [w for s in specs for w in s.trigger_words])
    with apply_submodels(pipe, specs, cache):
        images = run_inpaint(pipe, comp, prompt, ...)
    # here the pipeline is exactly the base again, also after an exception

``build_prompt``, ``SubModelSpec`` and ``SubmodelError`` import no torch; the rest is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.submodels.spec import SUBMODEL_TYPES, SubModelSpec, SubmodelError, build_prompt

if TYPE_CHECKING:
    from workers.submodels.apply import apply_submodels, read_submodel
    from workers.submodels.cache import SubmodelCache

__all__ = ["SUBMODEL_TYPES", "SubModelSpec", "SubmodelCache", "SubmodelError", "apply_submodels",
           "build_prompt", "read_submodel"]

_LAZY = {"apply_submodels": "workers.submodels.apply", "read_submodel": "workers.submodels.apply",
         "SubmodelCache": "workers.submodels.cache"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
