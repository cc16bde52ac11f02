"""One context manager applies a job's submodels to a warm pipeline and restores the base in ``finally``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from app.contract.limits import LORA_WEIGHT_RANGE
from workers.models.speed import separate_projections
from workers.submodels import embedding, hypernetwork, lora
from workers.submodels.files import FileFormatError, find_weights_file
from workers.submodels.spec import SubmodelError, SubModelSpec

_PREFERRED_NAMES = {
    "LoRA": lora.PEFT_WEIGHT_NAMES,
    "Embedding": embedding.DIFFUSERS_EMBEDDING_NAMES,
    "HyperNetwork": (),
}


def _reader(model_type: str):
    # looked up at call time, so that tests can count reads by patching the module function
    return {"LoRA": lora.read_lora, "Embedding": embedding.read_embedding,
            "HyperNetwork": hypernetwork.read_hypernetwork}[model_type]


def submodel_file(spec: SubModelSpec) -> Path:
    """The weights file of ``spec`` (its ``path``, or the file a folder of that type holds).

    Raises :class:`SubmodelError` when it is missing or the folder holds no such file."""
    try:
        return find_weights_file(spec.path, _PREFERRED_NAMES[spec.model_type])
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
        return _reader(spec.model_type)(file)
    except FileFormatError as e:
        raise SubmodelError(spec.model_code, f"{spec.model_type} {e}") from e
    except OSError as e:
        raise SubmodelError(spec.model_code, f"cannot read {spec.path}: {e.strerror or e}") from e


def _check_weight(spec: SubModelSpec) -> float:
    weight = float(spec.weight)
    if not math.isfinite(weight):
        raise SubmodelError(spec.model_code, f"weight must be a finite number, got {spec.weight!r}")
    low, high = LORA_WEIGHT_RANGE
    if spec.model_type == "LoRA" and not low <= weight <= high:
        raise SubmodelError(spec.model_code, f"LoraWeight must be within {low:g}..{high:g}, got {weight:g}")
    return weight


@contextmanager
def apply_submodels(pipe, specs: list[SubModelSpec], read: Callable[[SubModelSpec], Any] = read_submodel, *,
                    hypernetwork_self_attention: bool = True) -> Iterator[None]:
    """Apply ``specs`` to ``pipe`` for the ``with`` block; afterwards, on success or failure, ``pipe`` is
    exactly the base pipeline again (same modules, parameters, tokenizer; bit-identical outputs).

    All files are read (by ``read``: the worker's cached :func:`read_submodel`) and checked before the
    pipeline is touched. Then, whatever the order of ``specs``: the LoRAs, patched into the weights in order
    with their weights (:func:`workers.submodels.lora.patched`); the embeddings, each under its first trigger
    word (:func:`workers.submodels.embedding.textual_inversion`); the hypernetworks, in order, each with its
    weight as strength (:func:`workers.submodels.hypernetwork.hypernetwork_hooks`), on the separate q/k/v
    projections of a fused model (:func:`workers.models.speed.separate_projections`). They are undone in the
    reverse order. Raises :class:`SubmodelError` (naming the model) for a file that is missing, corrupt, in
    the wrong format or made for another base model; the pipeline is restored before it propagates.
    Errors raised inside the ``with`` block propagate unchanged. Should undoing itself fail (it has not
    been seen to), that error propagates instead and the pipeline must be discarded, not reused.
    """
    loaded: list[tuple[SubModelSpec, Any, float]] = []
    for spec in specs:
        weight = _check_weight(spec)
        if spec.model_type == "Embedding" and not any(w.strip() for w in spec.trigger_words):
            raise SubmodelError(spec.model_code, "an embedding needs a trigger word (its TriggerWordList is empty)")
        loaded.append((spec, read(spec), weight))

    with ExitStack() as stack:
        loras = [(spec.model_code, data, weight) for spec, data, weight in loaded if spec.model_type == "LoRA"]
        if loras:
            stack.enter_context(lora.patched(pipe, loras))
        for spec, vectors, _ in loaded:
            if spec.model_type == "Embedding":
                trigger = next(w for w in spec.trigger_words if w.strip())
                stack.enter_context(embedding.textual_inversion(pipe, spec.model_code, trigger, vectors))
        if any(spec.model_type == "HyperNetwork" for spec, _, _ in loaded):
            # hypernetworks hook to_k/to_v, which a fused attention layer (speed.fuse_qkv) never calls
            stack.enter_context(separate_projections(pipe))
        for spec, hn, weight in loaded:
            if spec.model_type == "HyperNetwork":
                stack.enter_context(hypernetwork.hypernetwork_hooks(
                    pipe, spec.model_code, hn, weight, self_attention=hypernetwork_self_attention))
        yield None
