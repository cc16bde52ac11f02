"""Every kind of model a worker loads, each through the one :class:`~workers.models.cache.ModelCache`.

One method per kind says how it is keyed (what makes two requests share one loaded copy), where it lives
(``device`` or ``host``), what names it in logs and errors, and which loader reads it:

* ``pipeline``: keyed by source, family, scheduler and the ``speed:`` options that shape a loaded pipeline
  (:func:`~workers.models.speed.load_key`: ModelCodes with the same weights and such options share one
  pipeline; editing one of them in the YAML loads it again; the per-call ones are recorded on the pipeline at
  each hand-out); on the device, in the model's dtype (:func:`~workers.models.speed.pipeline_dtype`); loaded
  by :func:`~workers.models.loading.load_main_pipeline`, then given its fast paths
  (:func:`~workers.models.speed.apply_speed`).
* ``vae``: by family, source and dtype (that of the pipeline it goes on); device;
  :func:`~workers.models.loading.load_vae`, then prepared as the pipeline's model asks
  (:func:`~workers.models.speed.prepare_vae`).
* ``controlnet``: by resolved file or folder, config folder and dtype (that of the Main model it runs with);
  device; :func:`~workers.models.loading.load_controlnet`.
* ``annotator``: by detector, annotator folder and device; device (host for weight-free ``canny``);
  :func:`~workers.inference.preprocess.load_detector`.
* ``submodel``: by its kind's cache key (:attr:`~workers.submodels.spec.SubmodelKind.cache_key`: type and
  resolved file unless the kind says more), the file's mtime and size; in its kind's place (host for LoRAs,
  embeddings, hypernetworks); :func:`~workers.submodels.apply.read_submodel`.
* ``translator``: by resolved folder; host; :meth:`~workers.translate.translator.Translator.load`.
* ``safety``: a Main model's safety checker (``safety: {policy: checker}``), by resolved folder and dtype; device;
  :func:`~workers.inference.safety.load_safety_checker`.
* ``ip-adapter``: an IP-Adapter ControlModel's file made into modules
  (:class:`~workers.adapters.ip_adapter.LoadedAdapter`), by resolved file, its mtime and size, and dtype (that of
  the Main model it runs with); device; :func:`~workers.adapters.files.read_adapter_file` then
  :func:`~workers.adapters.ip_adapter.build_adapter`.
* ``image-encoder``: an IP-Adapter's CLIP vision encoder (``image_encoder:``), by resolved folder and dtype;
  device; :func:`~workers.adapters.encoder.load_image_encoder`. Adapters naming one folder share it.
* ``mask``: a mask engine (BackgroundRemover, PointSegmenter, ClothesSegmenter), by engine kind, resolved
  file or folder and rembg model; on the device for transformers folders, host for ONNX files and
  the weight-free GrabCut; :func:`~workers.masks.engines.load_engine`.
* ``face-model``: a FaceID adapter's face-recognition ONNX model (``face_model:``) in onnxruntime, by resolved
  file, its mtime and size; host (onnxruntime's own memory; CUDA's provider on a CUDA worker);
  :func:`~workers.adapters.faceid.load_face_model`. Adapters naming one file share it.
* ``face_detector``: the face detector (MTCNN, its weights inside facenet-pytorch's wheel), by device; on the
  device on CUDA, on the host on a CPU worker; :func:`~workers.faces.detect.load_face_detector`.
* ``upscaler``: an Upscaler (a super-resolution file), by resolved file, its mtime and size, and dtype (this
  worker's, where the architecture supports it); device; :func:`~workers.inference.upscale.load_upscaler`
  (spandrel detects the architecture).
* ``eraser``: an Eraser (a LaMa-family inpainting file), by resolved file, its mtime and size, and dtype; device;
  :func:`~workers.inference.erase.load_eraser` (spandrel detects the architecture).
* ``describer``: a Describer (a transformers image-to-text folder), by resolved folder and dtype; device;
  :meth:`~workers.inference.describe.Describer.load`.
* ``describe-translator``: one of a Describer's ``translators:`` (English into a TranslateDescription language), by
  resolved folder; host (it runs on the CPU, as the prompt translator); :meth:`Translator.load`.

A job passes its :class:`~workers.models.cache.Lease`: what it gets stays loaded until the job ends.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from app.contract.limits import IP_ADAPTER_FACEID
from app.contract.registry import ERASER_SUFFIXES, UPSCALER_SUFFIXES, ModelEntry, ModelSource, Registry
from workers.adapters.encoder import load_image_encoder
from workers.adapters.faceid import FaceModelError, load_face_model
from workers.adapters.files import FACEID_VARIANTS, AdapterFileError, read_adapter_file
from workers.adapters.ip_adapter import AdapterFitError, build_adapter
from workers.faces.detect import FaceDetector, load_face_detector
from workers.inference.control import drop_control_pipelines
from workers.inference.describe import Describer, DescriberLoadError
from workers.inference.erase import Eraser, EraserFileError, load_eraser
from workers.inference.preprocess import detector_key, load_detector
from workers.inference.safety import SafetyCheckerError, checker_folders, load_safety_checker
from workers.inference.upscale import SuperResolution, UpscalerFileError, load_upscaler
from workers.masks.engines import EngineError, load_engine
from workers.models import loading
from workers.models.cache import Lease, ModelCache, ModelLoadError, is_oom
from workers.models.sources import local_path
from workers.models.speed import apply_speed, load_key, pipeline_dtype, prepare_vae, record
from workers.submodels.apply import read_submodel, submodel_file
from workers.submodels.kinds import kind_of
from workers.submodels.spec import SubModelSpec
from workers.translate.translator import Translator, TranslatorLoadError

T = TypeVar("T")


@dataclass
class Loaders:
    """The functions that read each kind from disk (tests put stand-ins of known sizes here)."""

    main: Callable[..., Any] = loading.load_main_pipeline
    vae: Callable[..., Any] = loading.load_vae
    controlnet: Callable[..., Any] = loading.load_controlnet
    detector: Callable[..., Any] = load_detector
    submodel: Callable[..., Any] = read_submodel
    translator: Callable[..., Any] = Translator.load
    mask: Callable[..., Any] = load_engine
    safety: Callable[..., Any] = load_safety_checker
    ip_adapter: Callable[..., Any] = lambda path, device, dtype: build_adapter(read_adapter_file(path), device, dtype)
    image_encoder: Callable[..., Any] = load_image_encoder
    face_detector: Callable[..., Any] = load_face_detector
    face_model: Callable[..., Any] = load_face_model
    upscaler: Callable[..., Any] = load_upscaler
    eraser: Callable[..., Any] = load_eraser
    describer: Callable[..., Any] = Describer.load


class WorkerModels:
    """The models of one worker process, by kind, on ``device`` in ``dtype``; ``models_dir`` is where
    ``demo:`` sources are built."""

    def __init__(self, cache: ModelCache, *, device: str, dtype: Any, models_dir: Path,
                 loaders: Loaders | None = None):
        self.cache = cache
        self.device = device
        self.dtype = dtype
        self.models_dir = Path(models_dir)
        self.loaders = loaders or Loaders()

    def dtype_of(self, entry: ModelEntry) -> Any:
        """The weights dtype of the Main model ``entry`` here: its ``speed.dtype`` on CUDA (``auto``: this
        worker's ``dtype``), float32 on the CPU."""
        return pipeline_dtype(entry.speed, self.device, self.dtype)

    def pipeline(self, lease: Lease, entry: ModelEntry, registry: Registry, *, ahead: bool = False) -> Any:
        """The warm inpainting pipeline of the Main model ``entry``, its ``speed:`` options applied (and
        recorded: :func:`~workers.patching.per_call.speed_of` gives ``entry.speed`` until the next hand-out). Raises
        :class:`ModelLoadError`. ``ahead``: for the worker's look-ahead (:mod:`workers.lifecycle.overlap`): loaded only
        when it fits the budget beside what the running job holds (else :class:`NoRoom`), and nothing recorded (the
        pipeline may be the running job's)."""
        dtype = self.dtype_of(entry)

        def load() -> Any:
            pipe = self.loaders.main(entry, registry, self.device, dtype, self.models_dir)
            try:
                apply_speed(pipe, entry.speed, self.device)
            except Exception as e:
                if is_oom(e):
                    raise
                raise ModelLoadError(entry.model_code, f"its speed options could not be applied: {e}") from e
            return pipe

        pipe = lease.get(
            ("pipeline", entry.source, entry.family, entry.defaults.scheduler, load_key(entry.speed)), load,
            label=entry.model_code, kind="pipeline", estimate=lambda: self._estimate(entry, registry, dtype),
            slot=("pipeline", entry.model_code), ahead=ahead)
        if not ahead:
            record(pipe, entry.speed)  # this model's per-call options (chunking, VAE tiling) for this job
        return pipe

    @contextmanager
    def vae_for(self, lease: Lease, entry: ModelEntry, registry: Registry, use_main_model_vae: bool) -> Iterator[Any]:
        """``with models.vae_for(lease, entry, registry, use_main_model_vae) as pipe:`` the warm pipeline of
        ``entry`` with ``pipe.vae`` replaced by the deployment's external VAE of its family (``vaes:``),
        unless ``use_main_model_vae`` or none is configured. The checkpoint's own VAE is put back when the
        block ends, whatever happens in it. Raises :class:`ModelLoadError`."""
        pipe = self.pipeline(lease, entry, registry)
        source = None if use_main_model_vae else registry.vae_source(entry.family)
        if source is None:
            yield pipe
            return
        label = f"vae:{entry.family}"
        dtype = self.dtype_of(entry)
        vae = lease.get(
            ("vae", entry.family, source, str(dtype)),
            lambda: self.loaders.vae(source, self.device, dtype, family=entry.family,
                                     demo_dir=self.models_dir, label=label),
            label=label, kind="vae", estimate=lambda: loading.estimate_bytes(source, dtype),
            slot=("vae", entry.family, str(dtype)))
        original = pipe.vae
        own = getattr(getattr(original, "config", None), "latent_channels", None)
        theirs = getattr(getattr(vae, "config", None), "latent_channels", None)
        if own is not None and theirs is not None and own != theirs:
            raise ModelLoadError(label, f"it has {theirs} latent channels, model {entry.model_code} {own}")
        prepare_vae(vae, entry.speed, self.device)
        pipe.vae = vae
        try:
            yield pipe
        finally:
            pipe.vae = original

    def controlnet(self, lease: Lease, entry: ModelEntry, registry: Registry, dtype: Any = None) -> Any:
        """The ControlModel ``entry`` on the device, in ``dtype``: that of the Main model it runs with
        (:meth:`dtype_of`; None = this worker's). Raises :class:`ModelLoadError`."""
        path = local_path(entry, registry, self.models_dir)
        config = registry.resolve_config(entry)
        dtype = self.dtype if dtype is None else dtype

        def load() -> Any:
            try:
                return self.loaders.controlnet(path, self.device, dtype, config=config)
            except Exception as e:
                if is_oom(e):
                    raise
                raise ModelLoadError(entry.model_code, str(e)) from e

        return lease.get(("controlnet", str(path), str(config), str(dtype)), load, label=entry.model_code,
                         kind="controlnet", estimate=lambda: self._estimate(entry, registry, dtype),
                         slot=("controlnet", entry.model_code, str(dtype)),
                         on_evict=drop_control_pipelines)

    def ip_adapter(self, lease: Lease, entry: ModelEntry, registry: Registry, dtype: Any = None) -> Any:
        """The IP-Adapter ControlModel ``entry`` as modules on the device, in ``dtype`` (that of the Main model it
        runs with; None = this worker's). A file replaced on disk is read again. Raises :class:`ModelLoadError`
        (saying what is wrong with the file)."""
        path = local_path(entry, registry, self.models_dir)
        dtype = self.dtype if dtype is None else dtype

        def load() -> Any:
            try:
                adapter = self.loaders.ip_adapter(path, self.device, dtype)
            except (OSError, AdapterFileError, AdapterFitError) as e:
                raise ModelLoadError(entry.model_code, f"IP-Adapter file {path}: {e}") from e
            faceid = getattr(adapter, "variant", "") in FACEID_VARIANTS
            if faceid != (entry.adapter == IP_ADAPTER_FACEID):
                raise ModelLoadError(entry.model_code, f"IP-Adapter file {path}: a {adapter.variant} file, not for"
                                                       f" `adapter: {entry.adapter}`"
                                                       + (f" (use `adapter: {IP_ADAPTER_FACEID}`)" if faceid else ""))
            return adapter

        st = path.stat() if path.exists() else None
        stamp = (st.st_mtime_ns, st.st_size) if st is not None else None
        return lease.get(("ip-adapter", str(path), stamp, str(dtype)), load, label=entry.model_code, kind="ip-adapter",
                         slot=("ip-adapter", entry.model_code, str(dtype)),
                         estimate=st.st_size if st is not None and path.suffix == ".safetensors" else None)

    def image_encoder(self, lease: Lease, entry: ModelEntry, registry: Registry, dtype: Any = None) -> Any:
        """The CLIP vision encoder of the IP-Adapter ``entry`` (its ``image_encoder:``), on the device in ``dtype``.
        Raises :class:`ModelLoadError` (labelled ``<ModelCode>``)."""
        folder = local_path(entry.image_encoder, registry, self.models_dir)
        dtype = self.dtype if dtype is None else dtype

        def load() -> Any:
            try:
                return self.loaders.image_encoder(folder, self.device, dtype)
            except Exception as e:
                if is_oom(e):
                    raise
                raise ModelLoadError(entry.model_code, f"image encoder {folder}: {e}") from e

        return lease.get(("image-encoder", str(folder), str(dtype)), load, label=f"{entry.model_code}:encoder",
                         kind="image-encoder", slot=("image-encoder", str(folder), str(dtype)),
                         estimate=lambda: loading.estimate_bytes(ModelSource(path=folder), dtype) or None)

    def detectors(self, lease: Lease) -> Callable[[str, Path | None], Any]:
        """``detectors(kind, annotator_folder)`` for :func:`workers.inference.preprocess.preprocess`: each
        controlnet-aux detector loaded once. Its files are checked first (``FileNotFoundError``); files that do not
        load (corrupt, another layout) raise ``ValueError`` saying so, whatever the detector's own error was."""

        def get(kind: str, folder: Path | None) -> Any:
            key = detector_key(kind, folder, self.device)
            detector, _, device = key

            def load() -> Any:
                try:
                    return self.loaders.detector(kind, folder, device)
                except FileNotFoundError:
                    raise
                except Exception as e:
                    if is_oom(e):
                        raise
                    where = f" in {folder}" if folder is not None else ""
                    raise ValueError(f"the {kind} annotator{where} could not be loaded: {e}") from e

            return lease.get(("annotator", *key), load, label=detector, kind="annotator",
                             place="device" if folder is not None else "host")

        return get

    def submodel(self, lease: Lease, spec: SubModelSpec) -> Any:
        """The parsed file of a submodel (a LoRA, embedding, hypernetwork ...: read-only, shared between jobs),
        keyed and placed as its kind says. A file replaced on disk is read again. Raises
        :class:`~workers.submodels.spec.SubmodelError`."""
        kind = kind_of(spec)
        file = submodel_file(spec).resolve()
        st = os.stat(file)
        key = kind.cache_key(spec, file)
        return lease.get(("submodel", *key, st.st_mtime_ns, st.st_size),
                         lambda: self.loaders.submodel(spec, file), label=spec.model_code, kind="submodel",
                         place=kind.place, slot=("submodel", *key),
                         # a safetensors file is its tensors plus a small header; a pickle, not reliably
                         estimate=st.st_size if file.suffix == ".safetensors" else None)

    def _estimate(self, entry: ModelEntry, registry: Registry, dtype: Any) -> int | None:
        """The bytes ``entry`` will take once loaded in ``dtype``, from its files' headers (None when unknown:
        hub)."""
        path = local_path(entry, registry, self.models_dir)
        if path is None:
            return None
        return loading.estimate_bytes(ModelSource(path=path) if path.is_dir() else ModelSource(file=path), dtype)

    def translator(self, lease: Lease, registry: Registry) -> Translator | None:
        """The deployment's prompt translator (``translator:``), or None when none is configured. Raises
        :class:`~workers.translate.translator.TranslatorLoadError`."""
        if registry.translator is None:
            return None
        path = local_path(registry.translator, registry, self.models_dir)
        return lease.get(("translator", str(path)), lambda: self.loaders.translator(path), label=path.name,
                         kind="translator", place="host", slot=("translator",),
                         estimate=lambda: loading.estimate_bytes(ModelSource(path=path), torch.float32))  # on the CPU

    def safety_checker(self, lease: Lease, entry: ModelEntry) -> Any:
        """The safety checker the Main model ``entry``'s policy names (``safety.checker``, resolved by the
        registry), on the device in this worker's dtype; None under ``policy: none``. Models naming one folder share
        it. Raises :class:`ModelLoadError` (labelled ``safety:<ModelCode>``)."""
        if entry.safety.policy != "checker":
            return None
        folder, label = entry.safety.checker, f"safety:{entry.model_code}"

        def load() -> Any:
            try:
                return self.loaders.safety(folder, self.device, self.dtype)
            except Exception as e:
                if is_oom(e):
                    raise
                raise ModelLoadError(label, f"safety checker {folder}: {e}") from e

        def estimate() -> int | None:
            try:
                model_dir, _ = checker_folders(folder)
            except SafetyCheckerError:
                return None
            return loading.estimate_bytes(ModelSource(path=model_dir), self.dtype) or None  # 0: pickled weights only

        return lease.get(("safety", str(folder), str(self.dtype)), load, label=label, kind="safety",
                         estimate=estimate, slot=("safety", entry.model_code))

    def mask_engine(self, lease: Lease, entry: ModelEntry, registry: Registry) -> Any:
        """The mask engine ``entry`` (:mod:`workers.masks.engines`). Raises :class:`ModelLoadError` for files
        that are missing, corrupt or not of the engine's kind."""
        path = local_path(entry, registry, self.models_dir)
        on_device = entry.engine in ("sam", "segformer")
        device = self.device if on_device else ("cuda" if str(self.device).startswith("cuda") else "cpu")

        def load() -> Any:
            try:
                return self.loaders.mask(entry.engine, path, device=device, rembg_model=entry.rembg_model)
            except EngineError as e:
                raise ModelLoadError(entry.model_code, str(e)) from e

        st = path.stat() if path is not None and path.exists() else None
        stamp = (st.st_mtime_ns, st.st_size) if st is not None else None  # a replaced file is read again
        return lease.get(("mask", entry.engine, str(path), stamp, entry.rembg_model), load, label=entry.model_code,
                         kind="mask", place="device" if on_device else "host", slot=("mask", entry.model_code),
                         estimate=st.st_size if st is not None and path.is_file() else None)

    def face_detector(self, lease: Lease) -> FaceDetector:
        """The face detector (:mod:`workers.faces.detect`), one per worker: on the device on CUDA, on the host (in
        the RAM budget) on a CPU worker. Its weights come with its package, so it always loads."""
        on_device = str(self.device).startswith("cuda")
        return lease.get(("face_detector", str(self.device)), lambda: self.loaders.face_detector(self.device),
                         label="face-detector", kind="face_detector", place="device" if on_device else "host",
                         slot=("face_detector",))
    def face_model(self, lease: Lease, entry: ModelEntry, registry: Registry) -> Any:
        """The face-recognition ONNX model of the FaceID adapter ``entry`` (its ``face_model:``,
        :func:`~workers.adapters.faceid.load_face_model`). A file replaced on disk is read again. Raises
        :class:`ModelLoadError` (labelled ``<ModelCode>``) for a missing file or one that is not an ArcFace model."""
        path = local_path(entry.face_model, registry, self.models_dir)

        def load() -> Any:
            try:
                return self.loaders.face_model(path, self.device)
            except (OSError, FaceModelError) as e:
                raise ModelLoadError(entry.model_code, f"face model {path}: {e}") from e
            except Exception as e:  # onnxruntime's and onnx's own errors for a file that is no ONNX model
                raise ModelLoadError(entry.model_code, f"face model {path}: {e}") from e

        st = path.stat() if path is not None and path.exists() else None
        stamp = (st.st_mtime_ns, st.st_size) if st is not None else None
        return lease.get(("face-model", str(path), stamp), load, label=f"{entry.model_code}:face", kind="face-model",
                         place="host", slot=("face-model", str(path)), estimate=st.st_size if st else None)

    def upscaler(self, lease: Lease, entry: ModelEntry, registry: Registry) -> SuperResolution:
        """The Upscaler ``entry`` on the device, in this worker's dtype where its architecture supports it
        (:func:`~workers.inference.upscale.load_upscaler`). A file replaced on disk is read again. Raises
        :class:`ModelLoadError` for a missing file, one spandrel does not recognise, or a model that is not
        super-resolution of RGB images."""
        return self._weights_file_model(lease, entry, registry, kind="upscaler", suffixes=UPSCALER_SUFFIXES,
                                        load=self.loaders.upscaler, error=UpscalerFileError, size_dtype=self.dtype)

    def eraser(self, lease: Lease, entry: ModelEntry, registry: Registry) -> Eraser:
        """The Eraser ``entry`` on the device (:func:`~workers.inference.erase.load_eraser`). A file replaced on disk
        is read again. Raises :class:`ModelLoadError` for a missing file or one that is not an RGB inpainting model
        spandrel recognises."""
        return self._weights_file_model(lease, entry, registry, kind="eraser", suffixes=ERASER_SUFFIXES,
                                        load=self.loaders.eraser, error=EraserFileError, size_dtype=torch.float32)

    def _weights_file_model(self, lease: Lease, entry: ModelEntry, registry: Registry, *, kind: str,
                            suffixes: tuple[str, ...], load: Callable[[Path, str, Any], T],
                            error: type[Exception], size_dtype: Any) -> T:
        """A model of one weights file (a local file, or a hub repo's one file in the Hugging Face cache) loaded by
        ``load(path, device, dtype)`` through the cache as ``kind``, keyed by the file's stamp (a file replaced on
        disk is read again); ``error`` from ``load`` becomes :class:`ModelLoadError`; ``size_dtype``: the dtype its
        size is estimated in (what it is held in)."""
        path = local_path(entry, registry, self.models_dir)
        if path is None:  # hub: the repo's one weights file, in the local Hugging Face cache
            path = loading.hub_weights_file(entry.model_code, entry.source, suffixes)

        def loaded() -> T:
            try:
                return load(path, self.device, self.dtype)
            except error as e:
                raise ModelLoadError(entry.model_code, str(e)) from e

        st = path.stat() if path.is_file() else None
        stamp = (st.st_mtime_ns, st.st_size) if st is not None else None
        return lease.get((kind, str(path), stamp, str(self.dtype)), loaded, label=entry.model_code, kind=kind,
                         slot=(kind, entry.model_code),
                         estimate=lambda: loading.estimate_bytes(ModelSource(file=path), size_dtype))

    def describer(self, lease: Lease, entry: ModelEntry, registry: Registry) -> Describer:
        """The Describer ``entry`` on the device (:meth:`~workers.inference.describe.Describer.load`). Raises
        :class:`ModelLoadError`."""
        path = local_path(entry, registry, self.models_dir) or _hub_folder(entry)

        def load() -> Describer:
            try:
                return self.loaders.describer(path, self.device, self.dtype)
            except DescriberLoadError as e:
                raise ModelLoadError(entry.model_code, str(e)) from e

        return lease.get(("describer", str(path), str(self.dtype)), load, label=entry.model_code, kind="describer",
                         slot=("describer", entry.model_code),
                         estimate=lambda: loading.estimate_bytes(ModelSource(path=path), torch.float32))

    def describe_translator(self, lease: Lease, entry: ModelEntry, language: str, registry: Registry) -> Translator:
        """The Describer ``entry``'s translator into ``language`` (its ``translators:``), on the host. Raises
        :class:`ModelLoadError` (labelled ``<ModelCode>:<language>``); KeyError for a language it has none of (the
        gateway refuses such a request)."""
        source, label = entry.translators[language], f"{entry.model_code}:{language}"
        path = local_path(source, registry, self.models_dir)

        def load() -> Translator:
            try:
                return self.loaders.translator(path)
            except TranslatorLoadError as e:
                raise ModelLoadError(label, str(e)) from e

        return lease.get(("describe-translator", str(path)), load, label=label, kind="describe-translator",
                         place="host", slot=("describe-translator", label),
                         estimate=lambda: loading.estimate_bytes(ModelSource(path=path), torch.float32))


def _hub_folder(entry: ModelEntry) -> Path:
    """A ``hub:`` source's folder in the local Hugging Face cache (``HF_HUB_OFFLINE=1``: the cache only)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(entry.source.hub, revision=entry.source.revision))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, revision: all one answer
        raise ModelLoadError(entry.model_code, f"hub repo {entry.source.hub}: {e}") from e
