"""The submodel kinds a worker knows, one registration line each.

A kind (:class:`~workers.submodels.spec.SubmodelKind`) lives in its own module, which says how its files are
read, cached and checked and how it is applied to a pipeline and undone; :func:`register` makes it known to
:func:`~workers.submodels.apply.apply_submodels` and to the model cache (``WorkerModels.submodel``). Every
type of the contract's ``SUBMODEL_TYPES`` has exactly one registration here
(``tests/worker/submodels/test_submodel_kinds.py`` checks it). Adding a kind: docs/architecture.md "Add a model
kind" (its module, its line below, its ``ModelType`` in ``app/contract/limits.py``, its section in
docs/submodels.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from workers.submodels.embedding import EMBEDDING
from workers.submodels.hypernetwork import HYPERNETWORK
from workers.submodels.lora import LORA
from workers.submodels.spec import SubmodelError, SubmodelKind, SubModelSpec

_KINDS: dict[str, SubmodelKind] = {}


def register(kind: SubmodelKind) -> SubmodelKind:
    """Make ``kind`` known (once per model type; a second registration of a type is refused)."""
    if kind.model_type in _KINDS:
        raise ValueError(f"submodel kind {kind.model_type} is registered already")
    _KINDS[kind.model_type] = kind
    return kind


def unregister(kind: SubmodelKind) -> None:
    """Forget ``kind`` (for tests that register a throwaway kind)."""
    if _KINDS.get(kind.model_type) is kind:
        del _KINDS[kind.model_type]


@contextmanager
def registered(kind: SubmodelKind) -> Iterator[SubmodelKind]:
    """``kind`` registered for the ``with`` block only (tests)."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind)


def kinds() -> list[SubmodelKind]:
    """Every registered kind, in apply order (:attr:`SubmodelKind.order`)."""
    return sorted(_KINDS.values(), key=lambda kind: kind.order)


def kind_of(spec: SubModelSpec) -> SubmodelKind:
    """The kind of ``spec``; :class:`SubmodelError` when no kind of its type is registered."""
    kind = _KINDS.get(spec.model_type)
    if kind is None:
        raise SubmodelError(spec.model_code, f"no submodel kind {spec.model_type} on this worker")
    return kind


register(LORA)
register(EMBEDDING)
register(HYPERNETWORK)
