"""Where a ``models_config/`` source's files are on this machine, by source kind.

``path`` and ``file`` sources are local already (the registry made them absolute); a ``hub`` source is
read by the loaders themselves; a ``demo`` source is a tiny model that :mod:`workers.demo` builds by code
on first use. :func:`demo_path` is the one place production code reaches :mod:`workers.demo`, and only
when the models config names a ``demo:`` source: a deployment of real models never imports it.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from app.contract.registry import ModelEntry, ModelSource, Registry

DEMO_PACKAGE = "workers.demo"


def demo_path(kind: str, models_dir: Path) -> Path:
    """The folder or file of demo source ``kind`` under ``models_dir``, built there if missing."""
    demo = importlib.import_module(DEMO_PACKAGE)
    return demo.demo_path(kind, Path(models_dir))


def local_path(item: ModelEntry | ModelSource | None, registry: Registry, models_dir: Path) -> Path | None:
    """The local file or folder of an entry's (or a source's) weights: the demo build for ``demo:``, the
    resolved ``path:``/``file:`` otherwise; None for no source (a weight-free PreProcessor) or ``hub:``."""
    source = item.source if isinstance(item, ModelEntry) else item
    if source is None:
        return None
    if source.demo is not None:
        return demo_path(source.demo, models_dir)
    return registry.resolve_path(source)
