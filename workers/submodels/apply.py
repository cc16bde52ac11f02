"""One context manager applies a job's submodels to a warm pipeline and restores the base in ``finally``.

It knows no kind by name: each kind (:class:`~workers.submodels.spec.SubmodelKind`, registered in
:mod:`workers.submodels.kinds`) says how its file is found and read, what a request must carry for it, and how
it is applied and undone; this module runs them in their order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from workers.patching.attention import separate_projections
from workers.submodels.files import FileFormatError, find_weights_file
from workers.submodels.kinds import kind_of, kinds
from workers.submodels.spec import Loaded, SubmodelError, SubModelSpec, WithImage


def submodel_file(spec: SubModelSpec) -> Path:
    """The weights file of ``spec`` (its ``path``, or the file a folder of that type holds).

    Raises :class:`SubmodelError` when it is missing or the folder holds no such file."""
    kind = kind_of(spec)
    try:
        return find_weights_file(spec.path, kind.preferred_names)
    except FileFormatError as e:
        raise SubmodelError(spec.model_code, f"{spec.model_type} {e}") from e
    except OSError as e:
        raise SubmodelError(spec.model_code, f"cannot read {spec.path}: {e.strerror or e}") from e


def read_submodel(spec: SubModelSpec, file: Path | None = None) -> Any:
    """The parsed content of ``spec``'s file (``file`` when already found), read now: the worker keeps what
    it read in its model cache (``workers/models``). Treat it as read-only: it is shared between jobs.

    Raises :class:`SubmodelError` for a missing, unreadable, corrupt or wrong-format file."""
    file = file or submodel_file(spec)
    try:
        return kind_of(spec).read(file)
    except FileFormatError as e:
        raise SubmodelError(spec.model_code, f"{spec.model_type} {e}") from e
    except OSError as e:
        raise SubmodelError(spec.model_code, f"cannot read {spec.path}: {e.strerror or e}") from e


def _checked_weight(spec: SubModelSpec) -> float:
    """The weight of ``spec`` once it and the request pass every check of its kind (before any file is read)."""
    kind = kind_of(spec)
    weight = float(spec.weight)
    if not math.isfinite(weight):
        raise SubmodelError(spec.model_code, f"weight must be a finite number, got {spec.weight!r}")
    kind.check(spec, weight)
    if kind.needs_image and spec.image is None:
        raise SubmodelError(spec.model_code, f"a {spec.model_type} needs an image in the request")
    return weight


def _loaded(spec: SubModelSpec, weight: float, got: Any) -> Loaded:
    if isinstance(got, WithImage):
        return Loaded(spec, got.data, weight, got.image)
    return Loaded(spec, got, weight)


@contextmanager
def apply_submodels(pipe, specs: list[SubModelSpec], read: Callable[[SubModelSpec], Any] = read_submodel, *,
                    hypernetwork_self_attention: bool = True) -> Iterator[None]:
    """Apply ``specs`` to ``pipe`` for the ``with`` block; afterwards, on success or failure, ``pipe`` is
    exactly the base pipeline again (same modules, parameters, tokenizer; bit-identical outputs).

    All files are read (by ``read``: the worker's cached :func:`read_submodel`; for a spec with an ``image``,
    a :class:`~workers.submodels.spec.WithImage` of the file and the request's image) and checked before the
    pipeline is touched. Then, whatever the order of ``specs``, kind after kind in the kinds' order
    (:func:`workers.submodels.kinds.kinds`), each kind's specs in the job's order: the LoRAs, patched into the
    weights in order with their weights (:func:`workers.submodels.lora.patched`); the embeddings, each under its
    first trigger word (:func:`workers.submodels.embedding.textual_inversion`); the hypernetworks, in order,
    each with its weight as strength (:func:`workers.submodels.hypernetwork.hypernetwork_hooks`), on the
    separate q/k/v projections of a fused model (:func:`workers.patching.attention.separate_projections`,
    entered before the first kind that hooks them). They are undone in the reverse order. Raises
    :class:`SubmodelError` (naming the model) for a file that is missing, corrupt, in the wrong format or made
    for another base model; the pipeline is restored before it propagates. Errors raised inside the ``with``
    block propagate unchanged. Should undoing itself fail (it has not been seen to), that error propagates
    instead and the pipeline must be discarded, not reused.
    """
    loaded: list[Loaded] = []
    for spec in specs:
        weight = _checked_weight(spec)
        loaded.append(_loaded(spec, weight, read(spec)))

    with ExitStack() as stack:
        separated = False
        for kind in kinds():
            items = [item for item in loaded if item.spec.model_type == kind.model_type]
            if not items:
                continue
            if kind.separate_attention and not separated:
                # such a kind hooks to_k/to_v, which a fused attention layer (speed.fuse_qkv) never calls
                stack.enter_context(separate_projections(pipe))
                separated = True
            stack.enter_context(kind.apply(pipe, items, hypernetwork_self_attention=hypernetwork_self_attention))
        yield None
