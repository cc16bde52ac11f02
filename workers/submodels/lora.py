"""LoRA: kohya-ss/A1111 and diffusers/peft files, loaded as peft adapters on a warm pipeline and removed
without a trace.

* **Formats.** kohya/A1111 ``.safetensors`` (``lora_unet_*`` / ``lora_te_*`` with ``lora_down`` /
  ``lora_up`` / ``alpha``) and diffusers/peft files (``unet.*.lora_A.weight`` ...; a folder with
  ``pytorch_lora_weights.safetensors`` or the file itself). diffusers' ``load_lora_weights`` converts the
  kohya names; it accepts an in-memory state dict, which is what the RAM cache serves.
* **Adapter metadata.** diffusers' own files may carry their peft ``LoraConfig`` (``lora_alpha``, rank and
  alpha patterns) in the safetensors header. ``load_lora_weights`` only reads it from a file, never from a
  dict, so a cached dict would silently lose ``lora_alpha`` (a scale of alpha/rank). With metadata the two
  calls ``load_lora_weights`` is made of (``load_lora_into_unet`` / ``load_lora_into_text_encoder``) are
  made directly, with the metadata.
* **Names.** ``lora_<sha1 of the resolved path>_<index>``: fixed width, so no name is a substring of
  another (peft matches some names as substrings, e.g. when hot-swapping).
* **Checks.** Every LoRA layer of the file must land on a layer of the model: peft silently skips layers it
  cannot find when others match, which is what a LoRA made for another base model (SDXL, SD 2) does.
* **Removal.** ``delete_adapters``, then, when no adapter is left, ``unload_lora_weights`` (puts the
  original ``nn.Linear``/``nn.Conv2d`` objects back in place of peft's wrappers), then what the loaders
  leave behind is put back: root attributes (transformers 5 records a ``_weight_conversions`` renaming on
  the text encoder, which a later ``save_pretrained`` would apply), the base parameters' ``requires_grad``
  (peft freezes them) and the modules' train/eval modes. After it the pipeline's modules, parameters and
  outputs are exactly the base's. Loading leaves the global RNG streams untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.submodels.files import FileFormatError, find_weights_file, read_weights
from workers.submodels.spec import SubmodelError

PEFT_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
LORA_METADATA_KEY = "lora_adapter_metadata"
#: Components of a Stable Diffusion pipeline that LoRAs patch.
LORA_COMPONENTS = ("unet", "text_encoder")
_DOWN_SUFFIXES = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight")
_UNSUPPORTED_MARKERS = {
    "hada_w1_a": "LyCORIS LoHa", "lokr_w1": "LyCORIS LoKr", ".oft_blocks": "OFT", "lora_mid.weight": "LoCon (Tucker)",
}


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as read from disk: its tensors and, for diffusers files, their peft adapter metadata."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None
    source: str

    @property
    def layer_count(self) -> int:
        """Number of layers the file patches (one down/A matrix each)."""
        return sum(1 for key in self.state_dict if key.endswith(_DOWN_SUFFIXES))


def adapter_name(path: Path, index: int) -> str:
    """``lora_<40 hex>_<3 digits>``: unique per (file, position in the job) and fixed-width, so no adapter
    name can be a substring of another."""
    if not 0 <= index < 1000:
        raise ValueError(f"LoRA index must be within 0..999, got {index}")
    digest = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()
    return f"lora_{digest}_{index:03d}"


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA file (or a diffusers LoRA folder). Raises :class:`FileFormatError` when the file is not
    a LoRA in a supported format."""
    file = find_weights_file(path, PEFT_WEIGHT_NAMES)
    content, header = read_weights(file)
    if not isinstance(content, dict) or not content:
        raise FileFormatError(f"{file.name} holds {type(content).__name__}, not a LoRA state dict")
    state_dict = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if len(state_dict) != len(content) or not all(isinstance(k, str) for k in state_dict):
        raise FileFormatError(f"{file.name} is not a flat tensor state dict, so not a LoRA "
                              "(an A1111 embedding or hypernetwork?)")
    for marker, kind in _UNSUPPORTED_MARKERS.items():
        if any(marker in key for key in state_dict):
            raise FileFormatError(f"{file.name} is a {kind} network, not a LoRA; not supported")
    if not any(key.endswith(_DOWN_SUFFIXES) for key in state_dict):
        sample = ", ".join(sorted(state_dict)[:3])
        raise FileFormatError(f"{file.name} has no LoRA weights (lora_down/lora_up or lora_A/lora_B keys); "
                              f"keys start: {sample}")
    metadata = None
    if header and header.get(LORA_METADATA_KEY):
        try:
            metadata = json.loads(header[LORA_METADATA_KEY])
        except json.JSONDecodeError as e:
            raise FileFormatError(f"{file.name}: unreadable {LORA_METADATA_KEY} header ({e})") from e
    return LoraFile(state_dict=state_dict, metadata=metadata, source=str(file))


def _layers_with(pipe, name: str) -> int:
    count = 0
    for component in LORA_COMPONENTS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for module in model.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and name in lora_a:
                count += 1
    return count


class _CaptureLoadReport(logging.Filter):
    """transformers 5 logs a "LOAD REPORT" at WARNING for every text-encoder adapter, listing the base
    model's own weights as MISSING ("newly initialized"), which they are not. Keep those reports out of
    the worker's log; remember their lines so that an error can quote the relevant one."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.lines.extend(line.strip() for line in message.splitlines())
            return False
        return True


@contextmanager
def _quiet_load_reports() -> Iterator[_CaptureLoadReport]:
    """Capture transformers' load reports and switch off its "Loading weights" progress bar (one per
    text-encoder adapter, i.e. per job) while adapters load."""
    from transformers.utils import logging as hf_logging

    capture = _CaptureLoadReport()
    loggers = [logging.getLogger(name) for name in ("transformers.integrations.peft",
                                                     "transformers.utils.loading_report")]
    for logger in loggers:
        logger.addFilter(capture)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if bars_were_on:
        hf_logging.disable_progress_bar()
    try:
        yield capture
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
        for logger in loggers:
            logger.removeFilter(capture)


def _load(pipe, lora: LoraFile, name: str) -> None:
    # transformers draws on the global RNG while it loads a text-encoder adapter (weights it then
    # overwrites): keep the process's RNG streams as they were
    device = pipe.unet.device
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with _quiet_load_reports() as capture, warnings.catch_warnings(), torch.random.fork_rng(devices=rng_devices):
        # peft warns on every adapter after the first one that the model already has a peft_config
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        try:
            if lora.metadata is None:
                pipe.load_lora_weights(lora.state_dict, adapter_name=name)  # it copies the dict
            else:
                state_dict, alphas = pipe.lora_state_dict(dict(lora.state_dict))
                pipe.load_lora_into_unet(state_dict, network_alphas=alphas, unet=pipe.unet, adapter_name=name,
                                         metadata=lora.metadata, _pipeline=pipe)
                pipe.load_lora_into_text_encoder(state_dict, network_alphas=alphas, text_encoder=pipe.text_encoder,
                                                 lora_scale=pipe.lora_scale, adapter_name=name,
                                                 metadata=lora.metadata, _pipeline=pipe)
        except torch.OutOfMemoryError:
            raise
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as e:
            detail = " ".join(str(e).split())
            mismatch = next((line for line in capture.lines if "MISMATCH" in line or "size mismatch" in line), None)
            if mismatch:  # "<key> | MISMATCH | Reinit due to size mismatch - ckpt: ... vs model: ..."
                key, _, reason = (part.strip() for part in mismatch.split("|", 2))
                detail = f"{key}: {reason.removeprefix('Reinit due to ')}"
            raise FileFormatError(f"does not fit this base model: {detail[:400]}") from e


@dataclass
class _Saved:
    """What loading adapters changes on a component besides its modules: root attributes, the parameters'
    ``requires_grad`` (peft freezes the base model) and the modules' train/eval modes."""

    attrs: dict[str, Any]
    requires_grad: list[tuple[torch.nn.Parameter, bool]]
    training: list[tuple[torch.nn.Module, bool]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Saved:
        return cls(attrs=_root_attrs(model),
                   requires_grad=[(p, p.requires_grad) for p in model.parameters()],
                   training=[(m, m.training) for m in model.modules()])

    def restore(self, model: torch.nn.Module) -> None:
        _restore_root_attrs(model, self.attrs)
        for param, flag in self.requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        for module, flag in self.training:
            module.training = flag


def _root_attrs(model: torch.nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(model).items() if k not in ("_parameters", "_buffers", "_modules")}


def _restore_root_attrs(model: torch.nn.Module, saved: dict[str, Any]) -> None:
    current = _root_attrs(model)
    for key in current.keys() - saved.keys():
        delattr(model, key)
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            object.__setattr__(model, key, value)


_MISSING = object()


def _remove(pipe, names: list[str], saved: dict[str, _Saved]) -> None:
    present = {adapter for adapters in pipe.get_list_adapters().values() for adapter in adapters}
    ours = [name for name in names if name in present]
    if ours:
        pipe.delete_adapters(ours)
    if not any(pipe.get_list_adapters().values()):
        pipe.unload_lora_weights()  # no adapter left: put the original layers back in place of peft's wrappers
        for component, state in saved.items():
            state.restore(getattr(pipe, component))


@contextmanager
def lora_adapters(pipe, loras: list[tuple[str, LoraFile, str, float]]) -> Iterator[list[str]]:
    """Load ``(model_code, lora, adapter_name, weight)`` LoRAs as peft adapters, activate them with their
    weights, yield their adapter names; on exit (also on error) delete them and restore the base pipeline.

    Raises :class:`SubmodelError` naming the model whose file does not fit this pipeline.
    """
    saved = {component: _Saved.of(getattr(pipe, component))
             for component in LORA_COMPONENTS if getattr(pipe, component, None) is not None}
    loaded: list[str] = []
    try:
        for model_code, lora, name, _ in loras:
            loaded.append(name)  # before loading: a half-loaded adapter is removed too
            try:
                _load(pipe, lora, name)
            except FileFormatError as e:
                raise SubmodelError(model_code, f"LoRA {e}") from e
            landed, expected = _layers_with(pipe, name), lora.layer_count
            if landed != expected:
                raise SubmodelError(model_code, f"LoRA: only {landed} of its {expected} layers match a layer of "
                                                "this base model: a LoRA made for another base model?")
        if loras:
            pipe.set_adapters([name for _, _, name, _ in loras], [float(w) for _, _, _, w in loras])
        yield loaded
    finally:
        if loaded:
            _remove(pipe, loaded, saved)
