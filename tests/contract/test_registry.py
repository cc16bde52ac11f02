"""app/contract/registry.py: the models YAML format (source kinds, families, schedulers, the vaes section),
its error messages, relative path resolution, the ListModels wire output, ModelType and ``Registry.require``."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from app.contract.codes import model_message
from app.contract.jobs import GENERATE_TASK_NAME, MASK_TASK_NAME, task_name_for
from app.contract.limits import (
    CONTROL_TYPES,
    DEMO_SOURCES,
    GENERATION_TYPES,
    LIST_MODELS_FIELDS,
    MASK_ACTION_ENGINE_TYPE,
    MASK_ENGINE_TYPES,
    MODEL_TYPES,
    SUBMODEL_TYPES,
    ModelType,
)
from app.contract.registry import (
    KNOWN_SCHEDULERS,
    ModelEntry,
    ModelSource,
    Registry,
    SpeedOptions,
    UnknownModel,
    get_registry,
)
from support.api import ROOT


def write(folder: Path, text: str, name: str = "models.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def model(code: str = "m", **fields) -> dict:
    return {"ModelCode": code, "Name": code, "ModelType": "Main", "source": {"demo": "inpaint"}, **fields}


def registry_of(*models: dict, vaes: dict | None = None, base: Path = Path("/deploy")) -> Registry:
    doc = {"models": list(models)}
    if vaes is not None:
        doc["vaes"] = vaes
    return Registry.from_dict(doc, base, origin="models.yaml")


def test_the_shipped_models_yaml_is_valid():
    registry = Registry.from_file(ROOT / "models_config" / "models.yaml")
    types = {e.model_type for e in registry.entries()}
    assert types == {t for t in MODEL_TYPES if t in DEMO_SOURCES}  # an example of every type with a demo model
    assert registry.translator is not None and registry.translator.demo == "translator"


def test_every_source_kind_parses(tmp_path):
    path = write(tmp_path / "cfg", """
        models:
          - {ModelCode: demo, Name: Demo, ModelType: Main, source: {demo: inpaint}}
          - {ModelCode: folder, Name: Folder, ModelType: Main, family: sdxl, source: {path: /models/sdxl-inpaint}}
          - ModelCode: single
            Name: Single file
            ModelType: Main
            source: {file: /models/real.safetensors, config: /models/sd15-inpaint-config}
            defaults: {steps: 30, guidance_scale: 6.5, scheduler: DPMSolverMultistepScheduler}
          - {ModelCode: ckpt, Name: Ckpt, ModelType: Main, source: {file: /models/old.ckpt}}
          - {ModelCode: hub, Name: Hub, ModelType: Main, source: {hub: org/repo, revision: main}}
          - {ModelCode: lora, Name: LoRA, ModelType: LoRA, source: {file: /loras/style.safetensors}}
          - {ModelCode: emb, Name: Embedding, ModelType: Embedding, source: {file: /emb/easyneg.pt}}
          - {ModelCode: hn, Name: Hypernetwork, ModelType: HyperNetwork, source: {file: /hn/anime.pt}}
          - {ModelCode: lora-dir, Name: LoRA folder, ModelType: LoRA, family: sdxl, source: {path: /loras/peft}}
        """)
    registry = Registry.from_file(path)
    kinds = {e.model_code: e.source.kind for e in registry.entries()}
    assert kinds == {"demo": "demo", "folder": "path", "single": "file", "ckpt": "file", "hub": "hub",
                     "lora": "file", "emb": "file", "hn": "file", "lora-dir": "path"}
    single = registry.get("single")
    assert single.defaults.scheduler == "DPMSolverMultistepScheduler" and single.defaults.steps == 30
    assert registry.resolve_path(single) == Path("/models/real.safetensors")
    assert registry.resolve_config(single) == Path("/models/sd15-inpaint-config")
    assert registry.get("folder").family == "sdxl"
    assert registry.get("hub").source.hub == "org/repo" and registry.resolve_path(registry.get("hub")) is None
    assert registry.get("demo").defaults.scheduler is None
    assert registry.vaes == {}


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    path = write(tmp_path / "deploy" / "config", """
        models:
          - {ModelCode: a, Name: A, ModelType: Main, source: {path: ../models/a}}
          - {ModelCode: b, Name: B, ModelType: Main, source: {file: b.safetensors, config: configs/sd15}}
          - {ModelCode: c, Name: C, ModelType: Main, source: {path: /abs/c}}
          - {ModelCode: l, Name: L, ModelType: LoRA, source: {file: loras/l.safetensors}}
        vaes:
          sd15: {file: vaes/ft-mse.safetensors, config: vaes/ft-mse}
          sdxl: {path: vaes/sdxl}
        """)
    registry = Registry.from_file(path)
    cfg = (tmp_path / "deploy" / "config").resolve()
    assert registry.resolve_path(registry.get("a")) == (tmp_path / "deploy" / "models" / "a").resolve()
    assert registry.get("a").source.path == registry.resolve_path(registry.get("a"))  # stored absolute
    assert registry.resolve_path(registry.get("b")) == cfg / "b.safetensors"
    assert registry.resolve_config(registry.get("b")) == cfg / "configs" / "sd15"
    assert registry.resolve_path(registry.get("c")) == Path("/abs/c")
    assert registry.resolve_path(registry.get("l")) == cfg / "loras" / "l.safetensors"
    assert registry.vae_source("sd15").file == cfg / "vaes" / "ft-mse.safetensors"
    assert registry.vae_source("sd15").config == cfg / "vaes" / "ft-mse"
    assert registry.vae_source("sdxl").path == cfg / "vaes" / "sdxl"
    assert registry.resolve_path(Path("x/y")) == cfg / "x" / "y"
    assert registry.resolve_path(registry.vae_source("sdxl")) == cfg / "vaes" / "sdxl"


def test_entries_built_in_code_get_their_paths_resolved_too():
    e = ModelEntry.model_validate(model(source={"file": "m.safetensors", "config": "cfg"}))
    registry = Registry([e], Path("/deploy"))
    assert registry.get("m").source.file == Path("/deploy/m.safetensors")
    assert registry.resolve_config(registry.get("m")) == Path("/deploy/cfg")


def test_the_vaes_section_accepts_every_source_kind():
    registry = registry_of(model(), vaes={"sd15": {"hub": "stabilityai/sd-vae-ft-mse"}, "sdxl": {"demo": "inpaint"}})
    assert registry.vae_source("sd15").kind == "hub" and registry.vae_source("sdxl").kind == "demo"
    assert registry_of(model()).vae_source("sd15") is None


@pytest.mark.parametrize(("vaes", "message"), [
    ({"sd3": {"path": "x"}}, r"vaes: sd3: Extra inputs are not permitted"),
    ({"sd15": {"path": "x", "file": "y.safetensors"}}, r"vaes: sd15: source needs exactly one of"),
    ({"sd15": {"file": "vae.pt"}}, r"vaes.sd15.file must end in .safetensors or .ckpt"),
    ({"sd15": {}}, r"source needs exactly one of: demo, path, file, hub \(got none\)"),
])
def test_bad_vaes_entries_are_refused(vaes, message):
    with pytest.raises(ValueError, match=message):
        registry_of(model(), vaes=vaes)


@pytest.mark.parametrize(("fields", "message"), [
    ({"source": {"demo": "inpaint", "path": "x"}}, r"exactly one of: demo, path, file, hub \(got demo, path\)"),
    ({"source": {"path": "x", "hub": "a/b"}}, r"\(got path, hub\)"),
    ({"source": {}}, r"\(got none\)"),
    ({"source": {"path": "x", "config": "c"}}, r"source.config is only allowed with source.file"),
    ({"source": {"path": "x", "revision": "main"}}, r"source.revision is only allowed with source.hub"),
    ({"source": {"hub": "not-a-repo-id"}}, r"hub must be a repo id like 'owner/name'"),
    ({"source": {"file": "model.pt"}}, r"a Main model's source.file must end in .safetensors or .ckpt"),
    ({"source": {"nfs": "/x"}}, r"source.nfs: Extra inputs are not permitted"),
    ({"family": "sd3"}, r"family: Input should be 'sd15' or 'sdxl'"),
    ({"family": "sdxl"}, r"demo models are family sd15, not sdxl"),
    ({"defaults": {"scheduler": "MagicScheduler"}}, r"unknown scheduler 'MagicScheduler'; known: DDIMScheduler"),
    ({"defaults": {"sampler": "euler"}}, r"defaults.sampler: Extra inputs are not permitted"),
    ({"defaults": {"steps": 0}}, r"defaults.steps"),
    ({"ModelType": "ControlNet"}, r"ModelType: Input should be 'Main', 'LoRA', 'Embedding', 'HyperNetwork',"),
    ({"ModelType": "LoRA", "source": {"demo": "inpaint"}}, r"demo: inpaint is not a LoRA model"),
    ({"ModelType": "Embedding", "source": {"hub": "a/b"}}, r"a Embedding source must be path, file or demo, not hub"),
    ({"ModelType": "PreProcessor"}, r"a PreProcessor needs `preprocessor:`"),
    ({"ModelType": "PreProcessor", "preprocessor": "canny", "source": {"hub": "a/b"}},
     r"a PreProcessor's source is an annotator folder"),
    ({"preprocessor": "canny"}, r"`preprocessor:` is for PreProcessor entries only"),
    ({"ModelType": "ControlModel", "source": None}, r"a ControlModel model needs a source"),
    ({"ModelType": "ControlModel", "source": {"path": "cn"}, "default_control": [{"ControlModel": "x"}]},
     r"`default_control:` is for Main models only"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors"}, "default_main": True},
     r"`default_main:` is for Main models only"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors"}, "points": 3}, r"`points:` is for Main models only"),
    ({"points": -1}, r"points: Input should be greater than or equal to 0"),
    ({"defaults": {"resolution": 100}}, r"defaults.resolution"),
    ({"defaults": {"control_weight": 3}}, r"defaults.control_weight"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors", "config": "c"}},
     r"source.config is for single-file Main checkpoints, not LoRA"),
    ({"ModelType": "HyperNetwork", "source": {"file": "h.pt"}, "defaults": {"scheduler": "DDIMScheduler"}},
     r"defaults.scheduler applies to Main models only"),
])
def test_bad_entries_are_refused_with_a_message_naming_the_entry(fields, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[1\] \(ModelCode 'bad'\): .*" + message):
        registry_of(model("good"), model("bad", **fields))


def test_an_entry_without_a_model_code_is_named_by_its_index():
    with pytest.raises(ValueError, match=r"models\[0\]: ModelCode: Field required"):
        registry_of({"Name": "x", "ModelType": "Main", "source": {"demo": "inpaint"}})


def test_duplicate_codes_are_refused_naming_both_entries():
    with pytest.raises(ValueError, match=r"models.yaml: models\[2\] \(ModelCode 'a'\): duplicate ModelCode,"
                                         r" already used by models\[0\]"):
        registry_of(model("a"), model("b"), model("a", ModelType="LoRA", source={"file": "a.safetensors"}))


def test_unknown_top_level_keys_and_bad_yaml_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['vae'\]"):
        Registry.from_file(write(tmp_path, "models: []\nvae: {sd15: {path: x}}\n"))
    with pytest.raises(ValueError, match="not valid YAML"):
        Registry.from_file(write(tmp_path, "models: [\n"))
    with pytest.raises(ValueError, match="`models` must be a list"):
        Registry.from_file(write(tmp_path, "models: {a: 1}\n"))


def test_the_wire_output_is_unchanged():
    e = ModelEntry.model_validate(model("x", TriggerWordList=["tw"], IsOfficial=False,
                                        source={"file": "x.safetensors", "config": "c"},
                                        defaults={"scheduler": "EulerDiscreteScheduler"}))
    assert e.to_wire() == {"Name": "x", "ModelCode": "x", "IsOfficial": False, "TriggerWordList": ["tw"],
                           "InferenceParams": {}, "ModelType": "Main"}


def test_get_registry_rereads_the_file_when_it_changes(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"models": [model("a")]}))
    assert [e.model_code for e in get_registry(path).entries()] == ["a"]
    path.write_text(yaml.safe_dump({"models": [model("a"), model("b")]}))
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert [e.model_code for e in get_registry(path).entries()] == ["a", "b"]


def test_sources_describe_themselves_for_logs():
    assert ModelSource(file=Path("/m.safetensors"), config=Path("/c")).describe() == "file=/m.safetensors (config=/c)"
    assert ModelSource(hub="a/b", revision="v1").describe() == "hub=a/b (revision=v1)"
    assert ModelSource(hub="a/b", variant="fp16", files=("x/*.json", "y.bin")).describe() == \
        "hub=a/b (variant=fp16) (files=x/*.json,y.bin)"


@pytest.mark.parametrize(("source", "message"), [
    ({"path": "x", "filename": "a.onnx"}, r"source.filename is only allowed with source.hub"),
    ({"file": "x.safetensors", "variant": "fp16"}, r"source.variant is only allowed with source.hub"),
    ({"demo": "inpaint", "files": ["*.json"]}, r"source.files is only allowed with source.hub"),
    ({"hub": "a/b", "filename": "a.onnx", "files": ["*.json"]}, r"filename \(one file\) and source.files"),
    ({"hub": "a/b", "filename": "../etc/passwd"}, r"filename must be a file's path inside the repo"),
    ({"hub": "a/b", "filename": "/abs.onnx"}, r"filename must be a file's path inside the repo"),
    ({"hub": "a/b", "files": []}, r"files: .*at least 1 item"),
    ({"hub": "a/b", "files": ["ok.json", "../up/*"]}, r"files must be glob patterns of paths inside the repo"),
    ({"hub": "a/b", "variant": "fp16/x"}, r"variant: String should match pattern"),
])
def test_bad_hub_file_selections_are_refused(source, message):
    with pytest.raises(ValueError, match=r"models\[0\] \(ModelCode 'm'\): .*" + message):
        registry_of(model(source=source))


def test_a_served_config_takes_a_hub_source_where_a_worker_reads_the_hub_and_points_to_atelier_pull_elsewhere():
    """Main models and VAEs load a diffusers hub repo themselves (with its revision and variant); a source naming
    files of a repo, or a hub source of a kind that reads local files only, is for ``atelier pull``, and the message
    refusing it says so."""
    registry = registry_of(model(source={"hub": "a/b", "variant": "fp16", "revision": "v1"}),
                           vaes={"sdxl": {"hub": "c/d", "variant": "fp16"}})
    assert registry.get("m").source.variant == "fp16" and registry.vae_source("sdxl").variant == "fp16"
    pull = r".*run `atelier pull --config <this file>` and serve the models.yaml it writes"
    for fields in ({"source": {"hub": "a/b", "files": ["unet/*"]}},
                   {"source": {"hub": "a/b", "filename": "m.safetensors"}},
                   {"ModelType": "ControlModel", "source": {"hub": "a/b"}},
                   {"ModelType": "PreProcessor", "preprocessor": "openpose", "source": {"hub": "a/b"}},
                   {"ModelType": "BackgroundRemover", "engine": "rembg", "source": {"hub": "a/b"}},
                   {"ModelType": "ClothesSegmenter", "engine": "segformer", "source": {"hub": "a/b"}}):
        with pytest.raises(ValueError, match=r"models\[0\] \(ModelCode 'm'\): " + pull):
            registry_of(model(**fields))
    with pytest.raises(ValueError, match=r"vaes: .*vaes.sd15: a hub source naming files" + pull):
        registry_of(model(), vaes={"sd15": {"hub": "a/b", "filename": "vae.safetensors"}})
    with pytest.raises(ValueError, match=r"translator: source must be `path: <folder>`.*" + pull):
        Registry.from_dict({"models": [model()], "translator": {"hub": "Helsinki-NLP/opus-mt-mul-en"}}, Path("/d"))


def test_the_known_schedulers_exist_in_diffusers_and_work_from_an_sd_scheduler_config():
    """The registry cannot import diffusers (the gateway imports it); this keeps its list honest."""
    import diffusers

    sd_config = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        steps_offset=1, clip_sample=False, set_alpha_to_one=False).config
    for name in KNOWN_SCHEDULERS:
        cls = getattr(diffusers, name)
        assert issubclass(cls, diffusers.SchedulerMixin), name
        scheduler = cls.from_config(sd_config)
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4, name


def test_control_types_and_default_control():
    reg = registry_of(
        model("main", default_control=[{"PreProcessor": "pose", "ControlModel": "cn"}]),
        {"ModelCode": "pose", "Name": "OpenPose", "ModelType": "PreProcessor", "preprocessor": "openpose",
         "source": {"path": "annotators"}, "defaults": {"resolution": 384}},
        {"ModelCode": "canny", "Name": "Canny", "ModelType": "PreProcessor", "preprocessor": "canny"},
        {"ModelCode": "cn", "Name": "Pose ControlNet", "ModelType": "ControlModel", "source": {"path": "cn"},
         "defaults": {"control_weight": 0.7, "ending_step": 0.8}},
    )
    assert [e.model_code for e in reg.entries_of("PreProcessor")] == ["pose", "canny"]
    assert reg.get("pose").to_wire()["InferenceParams"] == {"Resolution": 384}
    assert reg.get("cn").to_wire()["InferenceParams"] == {"ControlWeight": 0.7, "StartingStep": 0.0,
                                                          "EndingStep": 0.8}
    assert reg.get("canny").source is None
    assert reg.get("main").default_control[0].control_model == "cn"


def test_default_control_must_name_models_of_the_file():
    with pytest.raises(ValueError, match=r"default_control\[0\]: 'nope' is not a ControlModel"):
        registry_of(model("main", default_control=[{"ControlModel": "nope"}]))


def test_the_default_main_model_is_the_marked_one_else_the_first():
    lora = model("l", ModelType="LoRA", source={"file": "l.safetensors"})
    assert registry_of(lora, model("a"), model("b")).default_main().model_code == "a"
    assert registry_of(lora, model("a"), model("b", default_main=True)).default_main().model_code == "b"
    assert registry_of(lora).default_main() is None
    with pytest.raises(ValueError, match=r"`default_main: true` on 2 Main models \(a, b\); mark one"):
        registry_of(model("a", default_main=True), model("b", default_main=True))
    shipped = Registry.from_file(ROOT / "models_config" / "models.yaml")
    assert shipped.default_main().model_code == "demo-inpaint"


def test_points_per_image_default_to_one():
    assert registry_of(model("a"), model("b", points=3)).get("a").points == 1
    assert registry_of(model("a"), model("b", points=3)).get("b").points == 3


def test_picpik_shapes_of_models_and_control_models():
    lora = ModelEntry.model_validate(model("l", ModelType="LoRA", source={"file": "l.safetensors"},
                                           TriggerWordList=["tw"], defaults={"lora_weight": 0.7}))
    assert lora.to_model() == {"Name": "l", "ModelCode": "l", "IsOfficial": True, "TriggerWordList": ["tw"],
                               "InferenceParams": {"LoraWeight": 0.7}}
    cm = ModelEntry.model_validate(model("c", ModelType="ControlModel", source={"path": "cn"},
                                         defaults={"control_weight": 0.5}))
    assert cm.to_control() == {"ModelCode": "c", "Name": "c", "InferenceParams": {
        "ControlWeight": 0.5, "StartingStep": 0.0, "EndingStep": 1.0}}


def test_a_bad_edit_of_a_running_deployments_file_keeps_the_last_valid_version(tmp_path, caplog):
    path = write(tmp_path, yaml.safe_dump({"models": [model("a")]}))
    assert [e.model_code for e in get_registry(path).entries()] == ["a"]

    def edit(text: str, seconds: int) -> None:
        path.write_text(text)
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + seconds))

    edit("models: [\n", 5)  # a typo while the service runs
    assert [e.model_code for e in get_registry(path).entries()] == ["a"]
    assert [e.model_code for e in get_registry(path).entries()] == ["a"]
    assert caplog.text.count("still serving its last valid version") == 1
    edit(yaml.safe_dump({"models": [model("a"), model("b")]}), 10)  # fixed
    assert [e.model_code for e in get_registry(path).entries()] == ["a", "b"]
    with pytest.raises(ValueError, match="not valid YAML"):
        get_registry(write(tmp_path / "other", "models: [\n"))  # never valid: refused


def test_a_control_models_default_window_must_not_be_reversed():
    with pytest.raises(ValueError, match=r"starting_step 0.8 is after ending_step 0.2"):
        registry_of(model("c", ModelType="ControlModel", source={"path": "cn"},
                          defaults={"starting_step": 0.8, "ending_step": 0.2}))


def engine(code: str, model_type: str = "BackgroundRemover", **fields) -> dict:
    return {"ModelCode": code, "Name": code, "ModelType": model_type, **fields}


@pytest.mark.parametrize("fields, message", [
    ({}, r"a BackgroundRemover needs `engine:` one of rembg, grabcut"),
    ({"engine": "sam"}, r"engine: Input should be|needs `engine:` one of rembg, grabcut"),
    ({"engine": "grabcut", "source": {"file": "u.onnx"}}, r"`engine: grabcut` reads no weights: leave `source:` out"),
    ({"engine": "rembg"}, r"`engine: rembg` needs a source"),
    ({"engine": "rembg", "source": {"path": "folder"}}, r"`engine: rembg` reads an .onnx `file:`, not path"),
    ({"engine": "rembg", "source": {"file": "u.safetensors"}}, r"reads an .onnx file, got 'u.safetensors'"),
    ({"engine": "rembg", "source": {"demo": "sam"}}, r"demo: sam is not a BackgroundRemover"),
    ({"engine": "grabcut", "rembg_model": "u2net"}, r"`rembg_model:` is for `engine: rembg` only"),
    ({"engine": "rembg", "rembg_model": "u3net", "source": {"file": "u.onnx"}}, r"rembg_model: Input should be"),
    ({"engine": "grabcut", "garment_classes": [1]}, r"`garment_classes:` is for ClothesSegmenter entries only"),
    ({"engine": "grabcut", "default_main": True}, r"`default_main:` is not for mask engines"),
    ({"engine": "grabcut", "preprocessor": "canny"}, r"`preprocessor:` is not for mask engines"),
    ({"engine": "grabcut", "default_control": [{"ControlModel": "x"}]}, r"`default_control:` is not for mask engines"),
])
def test_bad_engine_entries_are_refused(fields, message):
    with pytest.raises(ValueError, match=r"models\[0\] \(ModelCode 'e'\): .*(" + message + ")"):
        registry_of(engine("e", **fields))


def test_engine_fields_are_for_engines_and_defaults_are_one_per_type():
    with pytest.raises(ValueError, match=r"`engine:` is for mask engines only"):
        registry_of(model("m", engine="grabcut"))
    with pytest.raises(ValueError, match=r"`default_engine:` is for mask engines only"):
        registry_of(model("m", default_engine=True))
    a, b = engine("a", engine="grabcut"), engine("b", engine="grabcut")
    assert registry_of(a, b).default_engine("BackgroundRemover").model_code == "a"
    assert registry_of(a, {**b, "default_engine": True}).default_engine("BackgroundRemover").model_code == "b"
    assert registry_of(a).default_engine("PointSegmenter") is None
    with pytest.raises(ValueError, match=r"`default_engine: true` on 2 BackgroundRemovers \(a, b\); mark one"):
        registry_of({**a, "default_engine": True}, {**b, "default_engine": True})
    seg = registry_of(engine("s", "ClothesSegmenter", engine="segformer", source={"path": "seg"},
                             garment_classes=[4, 7])).get("s")
    assert seg.garment_classes == [4, 7] and seg.to_engine() == {"ModelCode": "s", "Name": "s",
                                                                 "ModelType": "ClothesSegmenter", "Engine": "segformer"}


def test_task_names_follow_the_action():
    assert task_name_for("GenerateFromMannequin") == GENERATE_TASK_NAME
    assert {task_name_for(a) for a in ("RemoveBackground", "RemoveBackgroundsInBatch", "ExtractContents")} == {
        MASK_TASK_NAME}


# --- speed: (models_config/README.md "Speed (GPU fast paths)") ------------------------------------------------


def test_speed_defaults_are_the_safe_fast_paths():
    speed = registry_of(model("m")).get("m").speed
    assert speed == SpeedOptions()
    assert (speed.dtype, speed.channels_last, speed.sdpa, speed.fuse_qkv, speed.compile) == ("auto", True, True,
                                                                                           True, False)
    assert (speed.warmup_sizes, speed.warmup_batch, speed.deep_cache_interval, speed.deep_cache_branch) == \
        ((), (1,), 0, 0)
    assert (speed.vae_tiling_above_px, speed.vae_slicing, speed.max_batch, speed.max_batch_megapixels) == \
        (1536 * 1536, True, 8, 2.2)
    hash(speed)  # frozen: fit for cache keys


def test_speed_options_parse_from_yaml(tmp_path):
    path = write(tmp_path, """
        models:
          - ModelCode: fast
            Name: fast
            ModelType: Main
            source: {demo: inpaint}
            speed:
              dtype: bfloat16
              compile: true
              compile_mode: reduce-overhead
              warmup_sizes: [[512, 512], [768, 1024]]
              warmup_batch: [1, 4]
              deep_cache_interval: 3
              deep_cache_branch: 1
              vae_tiling_above_px: 0
              max_batch: 4
              max_batch_megapixels: 1.5
    """)
    speed = Registry.from_file(path).get("fast").speed
    assert speed.dtype == "bfloat16" and speed.compile and speed.compile_mode == "reduce-overhead"
    assert speed.warmup_sizes == ((512, 512), (768, 1024)) and speed.warmup_batch == (1, 4)
    assert (speed.deep_cache_interval, speed.deep_cache_branch, speed.vae_tiling_above_px) == (3, 1, 0)
    assert (speed.max_batch, speed.max_batch_megapixels) == (4, 1.5)


@pytest.mark.parametrize(("speed", "message"), [
    ({"turbo": True}, r"speed.turbo: Extra inputs are not permitted"),
    ({"dtype": "float8"}, r"speed.dtype: Input should be 'auto', 'float16', 'bfloat16' or 'float32'"),
    ({"compile_mode": "fast"}, r"speed.compile_mode: Input should be 'default', 'reduce-overhead'"),
    ({"max_batch": 0}, r"speed.max_batch: Input should be greater than or equal to 1"),
    ({"max_batch_megapixels": 0}, r"speed.max_batch_megapixels: Input should be greater than 0"),
    ({"deep_cache_interval": 1}, r"deep_cache_interval 1 would recompute every step"),
    ({"deep_cache_interval": -2}, r"speed.deep_cache_interval: Input should be greater than or equal to 0"),
    ({"deep_cache_branch": 4}, r"speed.deep_cache_branch: Input should be less than or equal to 3"),
    ({"vae_tiling_above_px": -1}, r"speed.vae_tiling_above_px: Input should be greater than or equal to 0"),
    ({"warmup_sizes": [[512, 32]]}, r"warmup size 512x32: width and height must be in \[64, 2560\]"),
    ({"warmup_sizes": [[4096, 512]]}, r"warmup size 4096x512"),
    ({"warmup_sizes": [[512]]}, r"speed.warmup_sizes.0"),
    ({"warmup_batch": []}, r"speed.warmup_batch: .*at least 1 item"),
    ({"warmup_batch": [0]}, r"warmup_batch values must be in \[1, 16\]"),
    ({"sdpa": "maybe"}, r"speed.sdpa: Input should be a valid boolean"),
])
def test_bad_speed_options_are_refused_naming_the_field(speed, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[1\] \(ModelCode 'bad'\): .*" + message):
        registry_of(model("good"), model("bad", speed=speed))


@pytest.mark.parametrize("fields", [
    {"ModelType": "LoRA", "source": {"file": "l.safetensors"}},
    {"ModelType": "ControlModel", "source": {"path": "cn"}},
    {"ModelType": "PreProcessor", "preprocessor": "canny", "source": None},
    {"ModelType": "BackgroundRemover", "engine": "grabcut", "source": None},
])
def test_speed_is_for_main_models_only(fields):
    with pytest.raises(ValueError, match=r"`speed:` is for Main models only"):
        registry_of(model("bad", **fields, speed={"compile": True}))
    # the defaults written out are no error: they change nothing
    assert registry_of(model("ok", **fields, speed={"compile": False})).get("ok").speed == SpeedOptions()


@pytest.mark.parametrize(("size", "options", "expected"), [
    ((512, 512), {}, 8),                                             # 2.2 MP / 0.26 MP = 8.4 -> max_batch 8
    ((1024, 1024), {}, 2),                                           # 2.2 / 1.05 = 2.1
    ((1536, 1536), {}, 1),
    ((2560, 2560), {}, 1),                                           # never less than one
    ((512, 512), {"max_batch": 3}, 3),
    ((768, 768), {"max_batch_megapixels": 1.2}, 2),                 # 1.2 / 0.59 = 2.03
    ((64, 64), {"max_batch": 64, "max_batch_megapixels": 0.01}, 2),  # 10000 / 4096 = 2.4
])
def test_images_per_call_follows_the_formula(size, options, expected):
    assert SpeedOptions(**options).images_per_call(*size) == expected


# --- ModelType and Registry.require --------------------------------------------------------------------------

def test_model_types_are_an_enum_equal_to_their_wire_strings():
    assert [str(t) for t in ModelType] == ["Main", "LoRA", "Embedding", "HyperNetwork", "ControlModel",
                                           "PreProcessor", "BackgroundRemover", "PointSegmenter", "ClothesSegmenter",
                                           "Upscaler", "Eraser", "Describer"]
    assert MODEL_TYPES == tuple(ModelType) and ModelType.MAIN == "Main" and ModelType("LoRA") is ModelType.LORA
    groups = (SUBMODEL_TYPES, CONTROL_TYPES, MASK_ENGINE_TYPES, GENERATION_TYPES, tuple(LIST_MODELS_FIELDS),
              tuple(MASK_ACTION_ENGINE_TYPE.values()),
              tuple(k for k in DEMO_SOURCES if k not in ("translator", "image_encoder", "face_model",
                                                          "describe_translator")))
    assert all(isinstance(t, ModelType) for group in groups for t in group)
    assert GENERATION_TYPES == (ModelType.MAIN, *SUBMODEL_TYPES)
    e = ModelEntry.model_validate(model("x", ModelType="LoRA", source={"file": "x.safetensors"}))
    assert e.model_type is ModelType.LORA and e.model_type == "LoRA"
    wire = e.to_wire()
    assert type(wire["ModelType"]) is str and json.loads(json.dumps(wire))["ModelType"] == "LoRA"
    assert yaml.safe_load(yaml.safe_dump(wire))["ModelType"] == "LoRA"
    assert e.model_dump(mode="json", by_alias=True)["ModelType"] == "LoRA"


def test_require_gives_the_entry_of_one_of_the_kinds_else_unknown_model_naming_the_code():
    reg = registry_of(model("main"), model("l", ModelType="LoRA", source={"file": "l.safetensors"}),
                      {"ModelCode": "canny", "Name": "Canny", "ModelType": "PreProcessor", "preprocessor": "canny"})
    assert reg.require("main", ModelType.MAIN) is reg.get("main")
    assert reg.require("l", *SUBMODEL_TYPES) is reg.get("l")
    assert reg.require("canny", ModelType.CONTROL_MODEL, ModelType.PRE_PROCESSOR).model_code == "canny"
    for code, kinds in (("l", (ModelType.MAIN,)), ("main", SUBMODEL_TYPES), ("nope", tuple(ModelType)),
                        ("", (ModelType.MAIN,)), (None, (ModelType.MAIN,))):
        with pytest.raises(UnknownModel) as caught:
            reg.require(code, *kinds)
        assert caught.value.model_code == str(code)
        assert str(caught.value) == model_message(str(code)) == f"Model [{code}] not exists"
        assert isinstance(caught.value, LookupError)
    with pytest.raises(TypeError, match="at least one ModelType"):
        reg.require("main")


def test_native_size_and_refine_strength_of_a_main_model():
    reg = registry_of(model("sd15"), model("xl", family="sdxl", source={"path": "xl"}),
                      model("own", native={"width": 256, "height": 384}, refine={"strength": 0.5}))
    assert reg.get("sd15").native_size == (512, 512) and reg.get("xl").native_size == (1024, 1024)
    assert reg.get("own").native_size == (256, 384) and reg.get("own").refine.strength == 0.5
    assert reg.get("sd15").refine.strength == 0.35


@pytest.mark.parametrize(("fields", "message"), [
    ({"native": {"width": 250, "height": 384}}, r"native.width: Input should be a multiple of 8"),
    ({"native": {"width": 32, "height": 384}}, r"native.width: Input should be greater than or equal to 64"),
    ({"native": {"width": 256}}, r"native.height: Field required"),
    ({"refine": {"strength": 1.5}}, r"refine.strength: Input should be less than or equal to 1"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors"}, "native": {"width": 256, "height": 256}},
     r"`native:` and `refine:` are for Main models only"),
])
def test_bad_native_or_refine_options_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[0\] \(ModelCode 'bad'\): .*" + message):
        registry_of(model("bad", **fields))


def test_the_safety_policy_defaults_to_none_and_its_checker_folder_is_resolved_against_the_yaml(tmp_path):
    reg = registry_of(model("default"), model("short", safety="none"), model("long", safety={"policy": "none"}),
                      model("rel", safety={"policy": "checker", "checker": "checkers/sd"}),
                      model("abs", safety={"policy": "checker", "checker": "/opt/checker"}))
    for code in ("default", "short", "long"):
        assert reg.get(code).safety.policy == "none" and reg.get(code).safety.checker is None
    assert reg.get("rel").safety.policy == "checker" and reg.get("rel").safety.checker == Path("/deploy/checkers/sd")
    assert reg.get("abs").safety.checker == Path("/opt/checker")
    path = write(tmp_path / "cfg", """
        models:
          - {ModelCode: m, Name: M, ModelType: Main, source: {demo: inpaint}, safety: {policy: checker, checker: sc}}
        """)
    assert Registry.from_file(path).get("m").safety.checker == (tmp_path / "cfg" / "sc").resolve()


@pytest.mark.parametrize(("fields", "message"), [
    ({"safety": "checker"}, r"safety: `safety: \{policy: checker\}` needs `checker:`"),
    ({"safety": {"policy": "checker"}}, r"safety: `safety: \{policy: checker\}` needs `checker:`"),
    ({"safety": {"policy": "none", "checker": "sc"}}, r"safety: `safety.checker` is only used with `policy: checker`"),
    ({"safety": "strict"}, r"safety.policy: Input should be 'none' or 'checker'"),
    ({"safety": {"policy": "checker", "checker": "sc", "threshold": 0.5}}, r"safety.threshold: Extra inputs"),
    ({"ModelType": "LoRA", "source": {"file": "l.safetensors"}, "safety": {"policy": "checker", "checker": "sc"}},
     r"`safety:` is for Main models only"),
])
def test_bad_safety_policies_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[0\] \(ModelCode 'bad'\): .*" + message):
        registry_of(model("bad", **fields))


# --- IP-Adapters (adapter: ip-adapter) -------------------------------------------------------------------------

def ip(code: str = "ip", **fields) -> dict:
    return model(code, **{"ModelType": "ControlModel", "adapter": "ip-adapter",
                          "source": {"file": "ip/ip-adapter_sd15.bin"}, "image_encoder": {"path": "ip/image_encoder"},
                          **fields})


def test_an_ip_adapter_entry_resolves_its_file_and_encoder_and_lists_itself_as_one():
    reg = registry_of(model("main"), ip(), ip("ipx", family="sdxl",
                                              source={"file": "/abs/ip-adapter_sdxl.safetensors"}))
    e = reg.get("ip")
    assert e.source.file == Path("/deploy/ip/ip-adapter_sd15.bin")
    assert e.image_encoder.path == Path("/deploy/ip/image_encoder")
    assert e.to_control() == {"ModelCode": "ip", "Name": "ip", "Adapter": "ip-adapter", "Family": "sd15",
                              "InferenceParams": {"ControlWeight": 1.0, "StartingStep": 0.0, "EndingStep": 1.0}}
    assert reg.get("ipx").to_control()["Family"] == "sdxl"
    demo = registry_of(ip(source={"demo": "ip-adapter"}, image_encoder={"demo": "clip-vision"})).get("ip")
    assert demo.source.demo == "ip-adapter" and demo.image_encoder.demo == "clip-vision"


@pytest.mark.parametrize("fields, message", [
    ({"image_encoder": None}, "needs `image_encoder:"),
    ({"source": {"file": "ip.pt"}}, "must end in .safetensors or .bin"),
    ({"source": {"path": "ip-folder"}}, "source is its file"),
    ({"source": {"demo": "controlnet"}}, "is not an IP-Adapter"),
    ({"image_encoder": {"file": "enc.safetensors"}}, "CLIP vision folder"),
    ({"image_encoder": {"demo": "inpaint"}}, "CLIP vision folder"),
    ({"ModelType": "LoRA"}, "for ControlModel entries only"),
    ({"adapter": "t2i"}, "adapter"),
])
def test_an_ip_adapter_entry_is_refused_when_it_lacks_or_misnames_its_files(fields, message):
    entry = {k: v for k, v in ip(**{k: v for k, v in fields.items() if v is not None}).items()
             if not (k in fields and fields[k] is None)}
    with pytest.raises(ValueError, match=message):
        registry_of(entry)


def test_a_controlnet_cannot_be_a_demo_ip_adapter_nor_a_default_control():
    with pytest.raises(ValueError, match="without `adapter: ip-adapter`"):
        registry_of(model("c", ModelType="ControlModel", source={"demo": "ip-adapter"}))
    with pytest.raises(ValueError, match="needs a request's reference image"):
        registry_of(model("main", default_control=[{"ControlModel": "ip"}]), ip())


# --- FaceID adapters (adapter: ip-adapter-faceid) --------------------------------------------------------------

def faceid(code: str = "fid", **fields) -> dict:
    return model(code, **{"ModelType": "ControlModel", "adapter": "ip-adapter-faceid",
                          "source": {"file": "ip/ip-adapter-faceid-plusv2_sd15.bin"},
                          "face_model": {"file": "insightface/w600k_r50.onnx"},
                          "image_encoder": {"path": "ip/image_encoder"}, **fields})


def test_a_faceid_entry_resolves_its_file_face_model_and_encoder_and_lists_itself_as_an_adapter():
    reg = registry_of(model("main"), faceid(), faceid("plain", source={"file": "ip/ip-adapter-faceid_sd15.bin"},
                                                      image_encoder=None))
    e = reg.get("fid")
    assert e.face_model.file == Path("/deploy/insightface/w600k_r50.onnx")
    assert e.image_encoder.path == Path("/deploy/ip/image_encoder")
    assert e.to_control()["Adapter"] == "ip-adapter-faceid" and e.to_control()["Family"] == "sd15"
    assert reg.get("plain").image_encoder is None  # the faceid (not plus) file reads no CLIP encoder
    demo = registry_of(faceid(source={"demo": "ip-adapter-faceid"}, face_model={"demo": "arcface"})).get("fid")
    assert demo.source.demo == "ip-adapter-faceid" and demo.face_model.demo == "arcface"


@pytest.mark.parametrize("fields, message", [
    ({"face_model": None}, "needs `face_model:"),
    ({"face_model": {"file": "arcface.pth"}}, "ArcFace ONNX file"),
    ({"face_model": {"demo": "clip-vision"}}, "ArcFace ONNX file"),
    ({"source": {"file": "f.pt"}}, "source is its file"),
    ({"source": {"demo": "ip-adapter"}}, "not a FaceID adapter"),
    ({"image_encoder": {"file": "enc.safetensors"}}, "CLIP vision folder"),
    ({"adapter": "ip-adapter"}, "`face_model:` is for `adapter: ip-adapter-faceid`"),
])
def test_a_faceid_entry_is_refused_when_it_lacks_or_misnames_its_files(fields, message):
    entry = {k: v for k, v in faceid(**{k: v for k, v in fields.items() if v is not None}).items()
             if not (k in fields and fields[k] is None)}
    with pytest.raises(ValueError, match=message):
        registry_of(entry)


# --- Upscalers ---------------------------------------------------------------------------------------------------

def upscaler(code: str = "up", **fields) -> dict:
    return {"ModelCode": code, "Name": code, "ModelType": "Upscaler", "source": {"file": f"{code}.pth"}, **fields}


def test_upscaler_entries_take_a_weights_file_the_hub_or_the_demo_and_tiles():
    reg = registry_of(upscaler("esrgan"), upscaler("st", source={"file": "/w/4x-UltraSharp.safetensors"},
                                                   tile={"size": 256, "overlap": 16}, points=3),
                      upscaler("hub", source={"hub": "owner/repo"}), upscaler("demo", source={"demo": "upscaler"}),
                      model("main", refine={"strength": 0.3, "upscaler": "esrgan"}),
                      model("plain", refine={"upscaler": "LANCZOS"}))
    assert reg.get("esrgan").source.file == Path("/deploy/esrgan.pth") and reg.get("esrgan").points == 1
    assert (reg.get("esrgan").tiling.size, reg.get("esrgan").tiling.overlap) == (512, 32)   # the defaults
    assert (reg.get("st").tiling.size, reg.get("st").tiling.overlap, reg.get("st").points) == (256, 16, 3)
    assert reg.get("main").refine.upscaler == "esrgan"
    assert reg.get("plain").refine.upscaler is None     # Lanczos, in any case, is no model
    assert [e.model_code for e in reg.entries_of(ModelType.UPSCALER)] == ["esrgan", "st", "hub", "demo"]
    assert reg.get("st").to_upscaler() == {"ModelCode": "st", "Name": "st", "ModelType": "Upscaler"}
    with pytest.raises(UnknownModel):
        reg.require("main", ModelType.UPSCALER)


@pytest.mark.parametrize(("entry", "message"), [
    (upscaler(source={"file": "x.bin"}), r"an Upscaler's source.file must end in .pth, .safetensors, .pt, .ckpt"),
    (upscaler(source={"path": "folder"}), r"an Upscaler's source is a weights `file:`, a `hub:` repo holding one"),
    (upscaler(source={"demo": "inpaint"}), r"demo: inpaint is not a Upscaler model"),
    (upscaler(tile={"size": 64, "overlap": 32}), r"tile: tile.overlap 32 must be less than half of tile.size 64"),
    (upscaler(tile={"size": 16}), r"tile.size: Input should be greater than or equal to 32"),
    (upscaler(tile={"size": 256, "overlap": -1}), r"tile.overlap: Input should be greater than or equal to 0"),
    (upscaler(defaults={"steps": 5}), r"`defaults:` are not for Upscaler entries"),
    (upscaler("Lanczos"), r"'Lanczos' is the name of the Lanczos filter \(no model\) in requests"),
    (model("m", tile={"size": 256, "overlap": 16}), r"`tile:` is for Upscaler entries only"),
    (model("m", refine={"upscaler": ""}), r"refine.upscaler: String should have at least 1 character"),
])
def test_bad_upscaler_entries_are_refused_naming_the_field(entry, message):
    with pytest.raises(ValueError, match=r"^models.yaml: models\[0\] \(ModelCode '\w+'\): .*" + message):
        registry_of(entry)


def test_a_main_models_refine_upscaler_must_be_an_upscaler_of_the_file():
    with pytest.raises(ValueError, match=r"ModelCode 'm': refine.upscaler: 'l' is not an Upscaler of this file"):
        registry_of(model("m", refine={"upscaler": "l"}), model("l", ModelType="LoRA", source={"file": "l.pth"}))
    with pytest.raises(ValueError, match=r"refine.upscaler: 'nope' is not an Upscaler of this file"):
        registry_of(model("m", refine={"upscaler": "nope"}))
