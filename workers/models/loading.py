"""Loading what ``models_config`` names: Main inpainting pipelines and external VAEs, local files only.

* :func:`load_main_pipeline`: a registry entry -> an inpainting pipeline on a device, in a dtype, with the
  configured scheduler and no progress bar. The pipeline class is chosen by the entry's ``family``
  (``sd15`` -> ``StableDiffusionInpaintPipeline``, ``sdxl`` -> ``StableDiffusionXLInpaintPipeline``) and
  checked against what the files hold, so a mislabelled model fails at load time with a message instead of
  deep inside the first job. Both inpainting checkpoints (9-channel UNet) and base checkpoints (4-channel,
  inpainted by latent blending) load.
* :func:`load_vae`: an external VAE (``AutoencoderKL`` or ``AutoencoderTiny``) from a folder, a single file or
  the hub.
* :func:`estimate_bytes`: what the model cache makes room for before a load.

``local_files_only`` is True for every source kind except ``hub``: nothing is downloaded unless the YAML
says ``hub:`` (and even then ``HF_HUB_OFFLINE=1`` keeps huggingface_hub on its local cache). In particular a
single-file checkpoint is loaded with its ``config`` folder, or, without one, with the config files of the
base model diffusers infers from its keys *only if they are already in the local Hugging Face cache*
(diffusers itself would silently go online for them).

A checkpoint's own safety checker (``safety_checker/`` and ``feature_extractor/`` in an SD 1.x/2.x folder or
config folder) is never loaded (:func:`without_safety_checker`): a Main model is screened only when its
``safety:`` policy names a checker, which the worker loads apart (:mod:`workers.inference.safety`).

Every failure is a :class:`ModelLoadError` naming the model and the cause (missing file, corrupt or
truncated checkpoint, wrong family, missing weights), except CUDA out-of-memory, which is re-raised as is
so that the cache can make room and retry.

Imports torch and diffusers lazily (inside the functions), so that importing this module, or
``workers.models.cache``, stays cheap.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.contract.limits import ModelType
from app.contract.registry import ModelEntry, ModelSource, Registry
from workers.models.cache import ModelLoadError, is_oom
from workers.models.sources import demo_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger("atelier.worker.loading")

#: safetensors dtype names of floating point tensors (cast to the target dtype on load) and their sizes.
_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
#: Components of a pipeline folder that :func:`load_main_pipeline` never loads (:func:`without_safety_checker`).
_NEVER_LOADED = ("safety_checker",)

#: The standard Stable Diffusion VAE configs, used for a single-file VAE given without ``config``
#: (the shape every SD 1.x/2.x and SDXL VAE checkpoint has; SDXL differs in its scaling factor).
_STANDARD_VAE_CONFIGS: dict[str, dict[str, Any]] = {
    family: {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": size,
        "scaling_factor": scaling,
        "force_upcast": family == "sdxl",
    }
    for family, size, scaling in (("sd15", 512, 0.18215), ("sdxl", 1024, 0.13025))
}


class CorruptCheckpoint(ValueError):
    """A safetensors file whose header is unreadable or whose data is cut short."""


# --- sizes -----------------------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a safetensors file (name -> dtype, shape, data_offsets), without reading the data.

    Raises :class:`CorruptCheckpoint` when the file is too short, the header is not JSON, or the data the
    header promises runs past the end of the file (a truncated download).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpoint(f"{path.name} is not a safetensors file ({size} bytes)")
        length = int.from_bytes(head, "little")
        if length <= 1 or length > min(size - 8, _MAX_HEADER_BYTES):
            raise CorruptCheckpoint(f"{path.name} is not a safetensors file (bad header length {length})")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{path.name} is not a safetensors file (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{path.name} is not a safetensors file (header is not a table)")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    end = 0
    for name, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
            list(info["shape"]), str(info["dtype"])
        except (TypeError, KeyError, IndexError, ValueError):
            raise CorruptCheckpoint(f"{path.name}: malformed header entry {name!r}") from None
    if end > data_bytes:
        raise CorruptCheckpoint(f"{path.name} is truncated: its header describes {end} bytes of tensors,"
                                f" the file holds {data_bytes}")
    return header


def _header_bytes(header: dict[str, dict[str, Any]], target_itemsize: int, skip_prefixes: tuple[str, ...] = ()) -> int:
    total = 0
    for name, info in header.items():
        if name.startswith(skip_prefixes):
            continue
        numel = math.prod(info["shape"])
        dtype = info["dtype"]
        itemsize = target_itemsize if dtype in _FLOAT_DTYPES else _OTHER_DTYPES.get(dtype, 4)
        total += numel * itemsize
    return total


def _weight_files(folder: Path) -> list[Path]:
    """The weight files from_pretrained would read in a diffusers folder: per component, the non-variant
    files when there are any (``x.safetensors`` over ``x.fp16.safetensors``), safetensors over .bin; not a
    checkpoint's own safety checker (never loaded with it)."""
    chosen: list[Path] = []
    dirs = [folder, *(p for p in folder.iterdir() if p.is_dir() and p.name not in _NEVER_LOADED)]
    for d in dirs:
        files = [p for p in d.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")]
        if d == folder:
            files = [p for p in files if p.suffix == ".safetensors"]  # a VAE folder's weights sit at its root
        safetensors = [p for p in files if p.suffix == ".safetensors"] or files
        plain = [p for p in safetensors if "." not in p.name.removesuffix(p.suffix)]
        chosen += plain or safetensors
    return chosen


def estimate_bytes(source: ModelSource, dtype: torch.dtype) -> int | None:
    """Roughly how many bytes ``source`` will take once loaded in ``dtype`` (from safetensors headers; file
    sizes for pickled files), or None when it cannot be told before loading (demo, hub, missing files)."""
    import torch

    itemsize = torch.tensor([], dtype=dtype).element_size()
    try:
        if source.file is not None and source.file.is_file():
            if source.file.suffix.lower() == ".safetensors":
                return _header_bytes(read_safetensors_header(source.file), itemsize, ("model_ema.",))
            return source.file.stat().st_size
        if source.path is not None and source.path.is_dir():
            total = 0
            for f in _weight_files(source.path):
                total += (_header_bytes(read_safetensors_header(f), itemsize) if f.suffix == ".safetensors"
                          else f.stat().st_size)
            return total
    except (OSError, CorruptCheckpoint):
        return None
    return None


# --- main pipelines --------------------------------------------------------------------------------


def pipeline_class_for(family: str):
    """The inpainting pipeline class of a model family."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    classes = {"sd15": StableDiffusionInpaintPipeline, "sdxl": StableDiffusionXLInpaintPipeline}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(classes)}")
    return classes[family]


def without_safety_checker(cls) -> dict[str, Any]:
    """The keyword arguments that keep a checkpoint's own safety checker out of ``cls.from_pretrained`` and
    ``from_single_file``: for a pipeline class that has one (SD 1.x/2.x), no checker, no feature extractor (it only
    feeds the checker) and no "you have disabled the safety checker" warning; nothing for one that has none (SDXL,
    whose ``feature_extractor`` belongs to IP-Adapters)."""
    if "safety_checker" not in inspect.signature(cls.__init__).parameters:
        return {}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def family_of_pipeline_class(class_name: str) -> str | None:
    """``sdxl`` / ``sd15`` for a diffusers Stable Diffusion pipeline class name, None for anything else."""
    if class_name.startswith("StableDiffusionXL") or class_name == "LatentConsistencyModelPipelineXL":
        return "sdxl"
    if class_name.startswith("StableDiffusion3"):
        return None
    if class_name.startswith("StableDiffusion") or class_name in ("LatentConsistencyModelPipeline",):
        return "sd15"
    return None


def _family_of_checkpoint_keys(keys: Iterable[str]) -> str | None:
    for key in keys:
        if key.startswith("conditioner.embedders."):
            return "sdxl"
        if key.startswith("cond_stage_model."):
            return "sd15"
    return None


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"


@contextmanager
def _load_errors(code: str, source: ModelSource) -> Iterator[None]:
    """Any failure of the block becomes a :class:`ModelLoadError` naming ``source``, except an
    out-of-memory error (the cache evicts and retries on those) and a ModelLoadError already."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:
        if is_oom(e):
            raise
        raise ModelLoadError(code, f"{source.describe()}: {_short(e)}") from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from None


def _check_folder_family(code: str, folder: Path, family: str, what: str) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(code, f"{what} {folder} is not a diffusers folder (no model_index.json)")
    try:
        cfg = _read_json(index)
    except ValueError as e:
        raise ModelLoadError(code, str(e)) from None
    class_name = str(cfg.get("_class_name", ""))
    found = family_of_pipeline_class(class_name)
    if found is None:
        raise ModelLoadError(code, f"{what} {folder} holds a {class_name or 'unknown'} pipeline,"
                                   " not a Stable Diffusion 1.x/2.x or XL one")
    if found != family:
        raise ModelLoadError(code, f"registry says family {family} but {what} {folder} holds a {class_name}"
                                   f" ({found}); fix `family` in the models config")
    return cfg


def _config_from_hf_cache(code: str, file: Path) -> str:
    """The local Hugging Face cache folder with the configs of the base model diffusers infers from the
    checkpoint's keys; never downloads."""
    import torch
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint
    from huggingface_hub import snapshot_download

    if file.suffix.lower() == ".safetensors":
        header = read_safetensors_header(file)
        checkpoint = {k: torch.empty(v["shape"], device="meta") for k, v in header.items()}
    else:
        checkpoint = load_single_file_checkpoint(str(file), local_files_only=True)
    repo = fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
    try:
        return snapshot_download(repo, local_files_only=True,
                                 allow_patterns=["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"])
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not in the cache
        raise ModelLoadError(code, f"{file.name} has no `config:` folder and the configs of {repo} (the base"
                                   " model inferred from its weights) are not in the local Hugging Face cache;"
                                   " set source.config to a local diffusers folder of the same architecture"
                                   ) from None


def _check_single_file(code: str, file: Path, config: Path | None, family: str) -> None:
    """Cheap checks before diffusers reads a single-file checkpoint: it exists, is not corrupt, is of the
    registry's family and has the UNet input channels its config folder says."""
    if not file.is_file():
        raise ModelLoadError(code, f"checkpoint file {file} does not exist")
    if config is not None:
        if not config.is_dir():
            raise ModelLoadError(code, f"config folder {config} does not exist")
        _check_folder_family(code, config, family, "config folder")
    if file.suffix.lower() != ".safetensors":
        return
    try:
        header = read_safetensors_header(file)
    except CorruptCheckpoint as e:
        raise ModelLoadError(code, f"corrupt checkpoint: {e}") from None
    found = _family_of_checkpoint_keys(header)
    if found is not None and found != family:
        raise ModelLoadError(code, f"registry says family {family} but {file.name} is an {found} checkpoint;"
                                   " fix `family` in the models config")
    if config is not None and _UNET_IN_KEY in header and (config / "unet" / "config.json").is_file():
        in_file = header[_UNET_IN_KEY]["shape"][1]
        in_config = _read_json(config / "unet" / "config.json").get("in_channels")
        if in_config is not None and in_file != in_config:
            raise ModelLoadError(code, f"{file.name} has a {in_file}-channel UNet but its config folder {config}"
                                       f" describes {in_config} channels; use the config folder of"
                                       f" {'an inpainting' if in_file == 9 else 'a base'} model")


def _check_loaded(code: str, pipe, family: str) -> None:
    """After loading: no weight left unloaded (meta), the family and the UNet input channels make sense."""
    for name, module in pipe.components.items():
        if module is None or not hasattr(module, "named_parameters"):
            continue
        missing = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.is_meta]
        if missing:
            raise ModelLoadError(code, f"the checkpoint has no weights for {len(missing)} tensor(s) of {name}"
                                       f" (e.g. {missing[0]}); is it complete, and of the family {family}?")
    is_xl = pipe.unet.config.get("addition_embed_type") == "text_time"
    if is_xl != (family == "sdxl"):
        raise ModelLoadError(code, f"registry says family {family} but the loaded UNet is"
                                   f" {'an SDXL' if is_xl else 'an SD 1.x/2.x'} one; fix `family`")
    in_channels = pipe.unet.config.get("in_channels")
    if in_channels not in (4, 9):
        raise ModelLoadError(code, f"the UNet has {in_channels} input channels; only base (4) and inpainting (9)"
                                   " checkpoints are supported")


def apply_scheduler(pipe, name: str | None) -> None:
    """Replace ``pipe.scheduler`` by the diffusers scheduler class ``name`` built from the current
    scheduler's config (so betas, prediction type and timestep spacing carry over). None: keep it."""
    if name is None:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise ValueError(f"{name!r} is not a diffusers scheduler")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def load_main_pipeline(entry: ModelEntry, registry: Registry, device: str, dtype: torch.dtype, demo_dir: Path):
    """Load a Main model as an inpainting pipeline on ``device`` in ``dtype``.

    By source kind: ``demo`` -> the tiny demo folder under ``demo_dir`` (built once); ``path`` -> a diffusers
    folder (``from_pretrained``); ``file`` -> ``from_single_file`` with the ``config`` folder; ``hub`` ->
    ``from_pretrained(repo_id)`` (with the source's ``revision`` and ``variant``), the only kind with
    ``local_files_only=False``. The configured
    ``defaults.scheduler`` is applied, the progress bar disabled. Raises :class:`ModelLoadError`.

    The entry's ``speed:`` options are not applied here: the worker chooses ``dtype`` from them
    (:func:`workers.models.speed.pipeline_dtype`) and applies the rest to what this returns
    (:func:`workers.models.speed.apply_speed`, in :meth:`workers.models.kinds.WorkerModels.pipeline`), so that
    tests and the benchmark get a stock pipeline from this function.
    """
    code, family, source = entry.model_code, entry.family, entry.source
    if entry.model_type != ModelType.MAIN:
        raise ModelLoadError(code, f"it is a {entry.model_type}, not a Main model")
    cls = pipeline_class_for(family)
    no_checker = without_safety_checker(cls)  # a policy's checker is loaded apart: WorkerModels.safety_checker
    t0 = time.monotonic()
    with _load_errors(code, source):
        if source.demo is not None:
            folder = demo_path(source.demo, demo_dir)
            _check_folder_family(code, folder, family, "demo folder")
            pipe = cls.from_pretrained(folder, dtype=dtype, local_files_only=True, **no_checker)
        elif source.path is not None:
            folder = registry.resolve_path(source)
            if not folder.is_dir():
                raise ModelLoadError(code, f"model folder {folder} does not exist")
            _check_folder_family(code, folder, family, "model folder")
            pipe = cls.from_pretrained(folder, dtype=dtype, local_files_only=True, **no_checker)
        elif source.file is not None:
            file = registry.resolve_path(source)
            config = registry.resolve_config(source)
            _check_single_file(code, file, config, family)
            config_dir = str(config) if config is not None else _config_from_hf_cache(code, file)
            pipe = cls.from_single_file(str(file), config=config_dir, dtype=dtype, local_files_only=True, **no_checker)
        else:
            try:
                from diffusers import DiffusionPipeline

                index = DiffusionPipeline.load_config(source.hub, revision=source.revision)
            except Exception as e:  # noqa: BLE001
                raise ModelLoadError(code, f"hub repo {source.hub}: {_short(e)}") from e
            found = family_of_pipeline_class(str(index.get("_class_name", "")))
            if found is not None and found != family:
                raise ModelLoadError(code, f"registry says family {family} but hub repo {source.hub} holds a"
                                           f" {index.get('_class_name')} ({found}); fix `family`")
            pipe = cls.from_pretrained(source.hub, revision=source.revision, variant=source.variant, dtype=dtype,
                                       local_files_only=False, **no_checker)
        _check_loaded(code, pipe, family)
        apply_scheduler(pipe, entry.defaults.scheduler)
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s (%s, %s) from %s in %.1fs", code, type(pipe).__name__, family, source.describe(),
             time.monotonic() - t0)
    return pipe


# --- external VAEs -----------------------------------------------------------------------------------

_VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


def _vae_class(code: str, class_name: str | None, where: str):
    import diffusers

    if class_name not in _VAE_CLASSES:
        raise ModelLoadError(code, f"{where} holds a {class_name or 'unknown'} model; supported VAEs:"
                                   f" {', '.join(_VAE_CLASSES)}")
    return getattr(diffusers, class_name)


def _vae_folder(code: str, path: Path) -> tuple[Path, str | None]:
    """(folder, subfolder) of a VAE: a VAE folder (config.json) or a pipeline folder with ``vae/``."""
    if (path / "config.json").is_file():
        return path, None
    if (path / "vae" / "config.json").is_file():
        return path, "vae"
    raise ModelLoadError(code, f"{path} is neither a VAE folder (config.json) nor a pipeline folder with vae/")


def load_vae(source: ModelSource, device: str, dtype: torch.dtype, *, family: str | None = None,
             demo_dir: Path | None = None, label: str | None = None):
    """Load an external VAE (``AutoencoderKL`` or ``AutoencoderTiny``) on ``device`` in ``dtype``.

    ``path``: a VAE folder (its ``config.json`` ``_class_name`` picks the class) or a pipeline folder's
    ``vae/``; ``file``: ``AutoencoderKL.from_single_file`` with the ``config`` folder, or, without one, the
    standard SD VAE config of ``family``; ``hub``: a repo whose root (or ``vae/``) holds a VAE; ``demo``:
    the demo model's own VAE (built under ``demo_dir``). Paths must be absolute (as :class:`Registry` makes
    them). ``label`` names the VAE in errors (default ``vae:<family>``). Raises :class:`ModelLoadError`.
    """
    code = label or f"vae:{family or '?'}"
    t0 = time.monotonic()
    with _load_errors(code, source):
        if source.demo is not None:
            if demo_dir is None:
                raise ModelLoadError(code, "a demo VAE needs demo_dir")
            folder = demo_path(source.demo, demo_dir) / "vae"
            vae = _vae_class(code, _read_json(folder / "config.json").get("_class_name"), str(folder)) \
                .from_pretrained(folder, dtype=dtype, local_files_only=True)
        elif source.path is not None:
            if not source.path.is_dir():
                raise ModelLoadError(code, f"VAE folder {source.path} does not exist")
            folder, sub = _vae_folder(code, source.path)
            cfg = _read_json(folder / (sub or "") / "config.json")
            vae = _vae_class(code, cfg.get("_class_name"), str(source.path)).from_pretrained(
                folder, subfolder=sub, dtype=dtype, local_files_only=True)
        elif source.file is not None:
            vae = _load_vae_file(code, source, family, dtype)
        else:
            vae = _load_vae_hub(code, source, dtype)
        missing = [n for n, p in [*vae.named_parameters(), *vae.named_buffers()] if p.is_meta]
        if missing:
            raise ModelLoadError(code, f"the VAE checkpoint has no weights for {len(missing)} tensor(s)"
                                       f" (e.g. {missing[0]})")
        vae = vae.to(device).eval()
    log.info("loaded VAE %s (%s) from %s in %.1fs", code, type(vae).__name__, source.describe(),
             time.monotonic() - t0)
    return vae


def _load_vae_file(code: str, source: ModelSource, family: str | None, dtype):
    from diffusers import AutoencoderKL

    file = source.file
    if not file.is_file():
        raise ModelLoadError(code, f"VAE file {file} does not exist")
    if file.suffix.lower() == ".safetensors":
        try:
            read_safetensors_header(file)
        except CorruptCheckpoint as e:
            raise ModelLoadError(code, f"corrupt VAE file: {e}") from None
    if source.config is not None:
        if not source.config.is_dir():
            raise ModelLoadError(code, f"VAE config folder {source.config} does not exist")
        folder, sub = _vae_folder(code, source.config)
        cfg = _read_json(folder / (sub or "") / "config.json")
        _vae_class(code, cfg.get("_class_name"), str(source.config))
        if cfg.get("_class_name") != "AutoencoderKL":
            raise ModelLoadError(code, "a single-file VAE must be an AutoencoderKL")
        return AutoencoderKL.from_single_file(str(file), config=str(folder), subfolder=sub, dtype=dtype,
                                              local_files_only=True)
    if family not in _STANDARD_VAE_CONFIGS:
        raise ModelLoadError(code, f"{file.name} has no `config:` and no family to take the standard config of")
    with tempfile.TemporaryDirectory(prefix="atelier-vae-config-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(_STANDARD_VAE_CONFIGS[family]))
        return AutoencoderKL.from_single_file(str(file), config=tmp, dtype=dtype, local_files_only=True)


def _load_vae_hub(code: str, source: ModelSource, dtype):
    from diffusers import AutoencoderKL

    last: Exception | None = None
    for sub in (None, "vae"):
        try:
            cfg = AutoencoderKL.load_config(source.hub, subfolder=sub, revision=source.revision)
        except Exception as e:  # noqa: BLE001 - try the next layout
            last = e
            continue
        cls = _vae_class(code, cfg.get("_class_name"), f"hub repo {source.hub}")
        return cls.from_pretrained(source.hub, subfolder=sub, revision=source.revision, variant=source.variant,
                                   dtype=dtype, local_files_only=False)
    raise ModelLoadError(code, f"hub repo {source.hub} has no VAE config: {_short(last)}")


# --- ControlNets -------------------------------------------------------------------------------------


def load_controlnet(
    source: Path, device: str, dtype: torch.dtype, config: Path | None = None
):
    """Load a ControlNet on ``device`` in ``dtype``, from local files only.

    * A folder: a diffusers ``ControlNetModel`` folder (``config.json`` + weights), read with
      ``ControlNetModel.from_pretrained(local_files_only=True)``.
    * A file (``.safetensors``, ``.pth``, ``.ckpt``): ``ControlNetModel.from_single_file`` with ``config`` =
      a local folder holding the matching diffusers ``config.json`` (required: without it diffusers infers a
      Hub repository from the keys and fetches its config, which needs the network or that repository in
      the local Hugging Face cache). The file may hold diffusers keys (loaded as is) or the original
      ControlNet/LDM keys (``control_model.*``, converted by diffusers).
    """
    from diffusers import ControlNetModel

    source = Path(source)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"{source} is not a diffusers ControlNet folder (no config.json)")
        model = ControlNetModel.from_pretrained(source, dtype=dtype, local_files_only=True)
    elif source.is_file():
        if config is None:
            raise ValueError(
                f"single-file ControlNet {source} needs `config`: a local folder with its diffusers config.json"
                " (offline, diffusers cannot infer it)"
            )
        config = Path(config)
        if not (config / "config.json").is_file():
            raise FileNotFoundError(f"ControlNet config folder {config} has no config.json")
        model = ControlNetModel.from_single_file(
            str(source), config=str(config), local_files_only=True, dtype=dtype
        )
    else:
        raise FileNotFoundError(f"ControlNet source {source} does not exist")
    return model.to(device).eval()


# --- single weights files from the hub (Upscalers) ----------------------------------------------------


def hub_weights_file(code: str, source: ModelSource, suffixes: tuple[str, ...]) -> Path:
    """The one weights file (ending in one of ``suffixes``) at the root of the ``hub:`` repo of ``source``, fetched
    into the local Hugging Face cache (``HF_HUB_OFFLINE=1``: the cache only). Raises :class:`ModelLoadError` when
    the repo cannot be reached, or holds no such file or several (then name one with a ``file:`` source)."""
    from huggingface_hub import snapshot_download

    patterns = [f"*{s}" for s in suffixes]
    try:
        folder = Path(snapshot_download(source.hub, revision=source.revision, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, revision: all one answer
        raise ModelLoadError(code, f"hub repo {source.hub}: {_short(e)}") from e
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise ModelLoadError(code, f"hub repo {source.hub} holds {len(files)} weights files at its root ({found});"
                                   " an Upscaler's `hub:` source needs exactly one: download the one you want and"
                                   " give it as `file:`")
    return files[0]
