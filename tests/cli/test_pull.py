"""``atelier pull`` (app/cli/pull.py, app/cli/hub.py) against a local stand-in for the hub (tests/support/hub.py):
which files of a repo it takes, the models config it writes (served as is, its models loading through the production
loaders), progress, resumption within a run and across runs, refused content, nothing downloaded twice, one line
when the hub cannot be reached; and models_config/recommended.yaml itself."""
from __future__ import annotations

import fcntl
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from rich.console import Console

from app.cli import client
from app.cli.hub import Hub, HubError, Listing, RemoteFile
from app.cli.pull import (
    RECOMMENDED_CONFIG,
    PullError,
    _weights,
    hub_sources,
    pull,
    pulled_config,
    select_files,
    validate_pulled,
)
from app.contract.limits import ModelType
from app.contract.registry import ModelSource, Registry
from support.api import ROOT, free_port
from workers.inference.preprocess import annotator_files
from workers.models.loading import load_controlnet, load_main_pipeline
from workers.translate.translator import Translator

SMALL_CONFIG = """
translator: {hub: tiny/opus-mt-mul-en}
models:
  - ModelCode: tiny-inpaint
    Name: Tiny inpainting
    ModelType: Main
    family: sd15
    source: {hub: tiny/sd15-inpainting, variant: fp16}
    defaults: {steps: 2}
  - ModelCode: tiny-posed
    Name: Tiny inpainting, posed
    ModelType: Main
    source: {hub: tiny/sd15-inpainting, variant: fp16}
    default_control: [{PreProcessor: tiny-openpose, ControlModel: tiny-cn}]
  - ModelCode: tiny-openpose
    Name: OpenPose
    ModelType: PreProcessor
    preprocessor: openpose
    source: {hub: tiny/annotators, files: [body_pose_model.pth, hand_pose_model.pth, facenet.pth]}
  - {ModelCode: tiny-cn, Name: ControlNet, ModelType: ControlModel, source: {hub: tiny/controlnet, variant: fp16}}
  - ModelCode: tiny-cloth
    Name: Clothes
    ModelType: ClothesSegmenter
    engine: rembg-cloth
    source: {hub: tiny/cloth-seg, filename: onnx/u2net_cloth_seg.onnx}
  - {ModelCode: canny, Name: Canny, ModelType: PreProcessor, preprocessor: canny}
  - {ModelCode: local-lora, Name: A local LoRA, ModelType: LoRA, source: {file: loras/brand.safetensors}}
"""
INPAINT = "tiny/sd15-inpainting"
UNET = "unet/diffusion_pytorch_model.fp16.safetensors"
CLOTH = "onnx/u2net_cloth_seg.onnx"


@pytest.fixture()
def config(tmp_path) -> Path:
    path = tmp_path / "config" / "pull.yaml"
    path.parent.mkdir()
    path.write_text(SMALL_CONFIG)
    return path


def run(capsys, *args) -> tuple[int, str]:
    """``atelier pull ARGS`` through the command's entry point: (exit code, what it wrote on stderr)."""
    rc = client.main(["pull", *map(str, args)])
    return rc, capsys.readouterr().err


def expected_downloads(hub) -> set[str]:
    """What a pull of SMALL_CONFIG must fetch: the pipeline's components as fp16 variants, no decoy."""
    inpaint = {p for p in hub.repos[INPAINT] if not p.startswith(("safety_checker/", "feature_extractor/"))
               and p.endswith((".json", ".fp16.safetensors"))}
    return ({f"{INPAINT}/{p}" for p in inpaint}
            | {f"tiny/annotators/{f}" for f in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")}
            | {"tiny/controlnet/config.json", "tiny/controlnet/diffusion_pytorch_model.fp16.safetensors",
               f"tiny/cloth-seg/{CLOTH}"}
            | {f"tiny/opus-mt-mul-en/{p}" for p in hub.repos["tiny/opus-mt-mul-en"] if p.endswith((".json", ".spm"))}
            | {"tiny/opus-mt-mul-en/model.safetensors"})


def test_a_pull_fetches_what_each_source_means_and_writes_a_config_whose_models_load(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    rc, err = run(capsys, "--config", config, "--dest", dest)
    assert rc == 0, err
    assert hub.downloaded() == expected_downloads(hub)  # no safety checker, .ckpt, plain decoy, .bin, README, image
    assert not list(dest.rglob("*.part"))

    written = dest / "models.yaml"
    assert f"ATELIER_MODELS_CONFIG={dest}/models.yaml make run" in written.read_text()
    doc = yaml.safe_load(written.read_text())
    sources = {m["ModelCode"]: m.get("source") for m in doc["models"]}
    assert sources["tiny-inpaint"] == sources["tiny-posed"] == {"path": "tiny/sd15-inpainting"}  # relative, one folder
    assert sources["tiny-cloth"] == {"file": f"tiny/cloth-seg/{CLOTH}"}
    assert sources["tiny-openpose"] == {"path": "tiny/annotators"} and sources["canny"] is None
    assert sources["local-lora"] == {"file": str(config.parent / "loras" / "brand.safetensors")}  # made absolute
    assert doc["translator"] == {"path": "tiny/opus-mt-mul-en"}
    registry = Registry.from_file(written)  # a served config: no hub source left

    inpaint = dest / INPAINT
    assert not (inpaint / "safety_checker").exists() and not list(inpaint.rglob("*fp16*"))
    pipe = load_main_pipeline(registry.get("tiny-inpaint"), registry, "cpu", torch.float32, tmp_path / "demo")
    assert pipe.unet.config.in_channels == 9 and getattr(pipe, "safety_checker", None) is None
    assert load_controlnet(registry.resolve_path(registry.get("tiny-cn")), "cpu", torch.float32) is not None
    assert Translator.load(registry.resolve_path(registry.translator)).name == "opus-mt-mul-en"
    assert set(annotator_files("openpose")) <= {p.name for p in (dest / "tiny/annotators").iterdir()}

    # progress: the plan, one line per file with its check, the total, and how to serve it
    count = len(expected_downloads(hub))
    assert "tiny/sd15-inpainting @ " in err and re.search(rf"to download: [\d.]+ [kM]B in {count} file\(s\)", err)
    assert re.search(rf"ok {INPAINT}/unet/diffusion_pytorch_model.safetensors \([\d.]+ MB, sha256 verified\)", err)
    assert re.search(rf"ok {INPAINT}/model_index.json \(\d+ bytes, git blob id verified\)", err)
    assert f"serve them: ATELIER_MODELS_CONFIG={dest}/models.yaml make run" in err


def test_progress_bars_show_on_a_terminal(hub, config, tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, soft_wrap=True)
    assert pull(config, tmp_path / "m", console=console, names=["tiny-cloth"]) == 0
    text = out.getvalue()
    assert "all files" in text and "━" in text and "onnx/u2net_cloth_seg.onnx" in text


def test_a_second_pull_downloads_nothing(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    assert run(capsys, "--config", config, "--dest", dest)[0] == 0
    first = (dest / "models.yaml").read_text().split("\n", 1)[1]
    hub.reset()
    rc, err = run(capsys, "--config", config, "--dest", dest)
    assert rc == 0, err
    count = len(expected_downloads(hub))
    assert hub.transfers == [] and f"to download: 0 bytes in 0 file(s); {count} file(s) already complete" in err
    assert (dest / "models.yaml").read_text().split("\n", 1)[1] == first  # the same config (but its date)
    state = json.loads((dest / INPAINT / ".atelier-pull.json").read_text())
    assert state["commit"] == hub.commits[INPAINT] and "unet/diffusion_pytorch_model.safetensors" in state["files"]


def test_a_complete_file_the_state_does_not_vouch_for_is_hashed_not_downloaded_and_a_changed_one_is_fetched(
        hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    assert run(capsys, "--config", config, "--dest", dest, "--only", "tiny-cloth")[0] == 0
    (dest / "tiny/cloth-seg/.atelier-pull.json").unlink()
    hub.reset()
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-cloth")
    assert rc == 0 and hub.transfers == [] and "already here, sha256 verified" in err
    (dest / "tiny/cloth-seg" / CLOTH).write_bytes(b"edited by hand")
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-cloth")
    assert rc == 0 and hub.downloaded() == {f"tiny/cloth-seg/{CLOTH}"}
    assert (dest / "tiny/cloth-seg" / CLOTH).read_bytes() == hub.repos["tiny/cloth-seg"][CLOTH]


def test_a_transfer_cut_short_is_resumed_where_it_broke(hub, config, tmp_path, capsys):
    size = len(hub.repos[INPAINT][UNET])
    hub.cut(INPAINT, UNET, after=size // 3)
    rc, err = run(capsys, "--config", config, "--dest", tmp_path / "models", "--only", "tiny-inpaint")
    assert rc == 0, err
    unet = [t for t in hub.transfers if t.path == UNET]
    assert [t.start for t in unet] == [0, size // 3] and unet[0].sent == size // 3  # the rest asked with Range
    assert sum(t.sent for t in unet) == size
    assert (tmp_path / "models" / INPAINT / "unet/diffusion_pytorch_model.safetensors").read_bytes() == \
        hub.repos[INPAINT][UNET]


def test_a_part_left_by_an_interrupted_run_is_resumed(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    data = hub.repos[INPAINT][UNET]
    part = dest / INPAINT / "unet/diffusion_pytorch_model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-inpaint")
    assert rc == 0, err
    half = len(data) // 2
    assert [(t.start, t.sent) for t in hub.transfers if t.path == UNET] == [(half, len(data) - half)]
    assert "already in .part files" in err and re.search(r"sha256 verified, resumed at [\d.]+ MB", err)
    assert part.with_suffix("").read_bytes() == data and not part.exists()


def test_content_that_does_not_match_the_hubs_hash_is_refused_and_not_kept(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    target = dest / "tiny/cloth-seg" / CLOTH
    hub.corrupt("tiny/cloth-seg", CLOTH)
    rc, err = run(capsys, "--config", config, "--dest", dest)
    assert rc == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"atelier pull: tiny/cloth-seg/{CLOTH} does not match the hub's listing \(expected \d+ bytes,"
                        r" sha256:[0-9a-f]{64}; got sha256 [0-9a-f]{64}\): refused and deleted, run atelier pull"
                        r" again", err.strip().splitlines()[-1]), err  # the progress lines, then the reason in one
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    assert not (dest / "models.yaml").exists()  # nothing written until every file is right
    hub.corrupt("tiny/cloth-seg", CLOTH, on=False)
    hub.reset()
    rc, err = run(capsys, "--config", config, "--dest", dest)
    assert rc == 0, err
    assert f"tiny/cloth-seg/{CLOTH}" in hub.downloaded() and target.read_bytes() == hub.repos["tiny/cloth-seg"][CLOTH]


def test_a_corrupt_part_resumed_is_refused_too(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    data = hub.repos[INPAINT][UNET]
    part = dest / INPAINT / "unet/diffusion_pytorch_model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * (len(data) // 2))
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-inpaint")
    assert rc == 1 and "does not match the hub's listing" in err and not part.exists()
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-inpaint")
    assert rc == 0 and part.with_suffix("").read_bytes() == data


def test_an_unreachable_hub_fails_in_one_line_naming_it_and_the_repo(config, tmp_path):
    """In a fresh interpreter, as a user runs it: no traceback, exit code 1."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": endpoint, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "app.cli.client", "pull", "--config", str(config), "--dest",
                          str(tmp_path / "models")], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stdout == "", out.stderr
    assert re.fullmatch(rf"atelier pull: cannot reach {endpoint} \(hub repo tiny/sd15-inpainting\): .*refused\n",
                        out.stderr), out.stderr
    assert not (tmp_path / "models").exists()


MAIN = "{ModelCode: x, Name: x, ModelType: Main, source: %s}"
CLOTHES = "{ModelCode: x, Name: x, ModelType: ClothesSegmenter, engine: rembg-cloth, source: %s}"


@pytest.mark.parametrize(("entry", "message"), [
    (MAIN % "{hub: nobody/nothing}",
     r"hub repo nobody/nothing at http://127.0.0.1:\d+ was not found \(404; a private or gated repo needs HF_TOKEN\)"),
    (MAIN % "{hub: tiny/sd15-inpainting, revision: v9}",
     r"hub repo tiny/sd15-inpainting at http://127.0.0.1:\d+ has no revision v9"),
    (CLOTHES % "{hub: tiny/cloth-seg, filename: onnx/other.onnx}",
     r"hub repo tiny/cloth-seg \(commit [0-9a-f]{12}\) has no file onnx/other.onnx"),
    ("{ModelCode: x, Name: x, ModelType: PreProcessor, preprocessor: openpose,"
     " source: {hub: tiny/annotators, files: [body_pose_model.pth, '*.safetensors']}}",
     r"files: '\*.safetensors' matches no file of hub repo tiny/annotators"),
    ("{ModelCode: x, Name: x, ModelType: ControlModel, source: {hub: tiny/annotators}}",
     r"found no weights at the root of hub repo tiny/annotators .*: name its files with `files:` or `filename:`"),
    (CLOTHES % "{hub: tiny/cloth-seg, files: ['onnx/*']}",
     r"models\[0\] \(ModelCode 'x'\): `engine: rembg-cloth` reads an .onnx `file:`, not path.* a hub source with"
     r" `filename:` becomes a `file:`"),
    (CLOTHES % "{hub: tiny/cloth-seg, filename: README.md}", r"reads an .onnx file, got 'README.md'"),
    (MAIN % "{hub: tiny/sd15-inpainting, files: []}", r"models\[0\] \(ModelCode 'x'\): source: files: .*at least 1"),
])
def test_what_a_pull_cannot_do_is_said_in_one_line(hub, tmp_path, capsys, entry, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  - {entry}\n")
    rc, err = run(capsys, "--config", config, "--dest", tmp_path / "models")
    assert rc == 1 and err.count("\n") == 1, err
    assert re.fullmatch(r"atelier pull: .*" + message + r".*\n", err), err
    assert hub.transfers == []


def test_only_pulls_the_entries_named_and_what_their_default_control_needs(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-posed")
    assert rc == 0, err
    assert {d.split("/")[1] for d in hub.downloaded()} == {"sd15-inpainting", "annotators", "controlnet"}
    doc = yaml.safe_load((dest / "models.yaml").read_text())
    assert [m["ModelCode"] for m in doc["models"]] == ["tiny-posed", "tiny-openpose", "tiny-cn", "canny", "local-lora"]
    assert "translator" not in doc
    rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-nothing")
    assert rc == 1 and "--only tiny-nothing: not in" in err and "tiny-cloth, tiny-cn" in err


def test_a_second_pull_into_the_same_folder_at_the_same_time_is_refused(hub, config, tmp_path, capsys):
    dest = tmp_path / "models"
    dest.mkdir()
    with open(dest / ".atelier-pull.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running pull holds it
        rc, err = run(capsys, "--config", config, "--dest", dest, "--only", "tiny-cloth")
    assert rc == 1 and err.strip().splitlines()[-1] == f"atelier pull: another atelier pull is writing into {dest}:" \
        " wait until it ends"
    assert hub.transfers == []
    assert run(capsys, "--config", config, "--dest", dest, "--only", "tiny-cloth")[0] == 0  # released: it goes on


def test_a_dry_run_lists_without_downloading_or_writing(hub, config, tmp_path, capsys):
    rc, err = run(capsys, "--config", config, "--dest", tmp_path / "models", "--dry-run")
    assert rc == 0 and "to download:" in err and not (tmp_path / "models").exists()
    assert hub.downloaded() == {f"{INPAINT}/model_index.json"}  # read to plan (which components), never stored


def test_a_pull_refuses_to_start_without_room_on_the_disk(hub, config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("app.cli.pull._free_space", lambda path: 1000)
    rc, err = run(capsys, "--config", config, "--dest", tmp_path / "models")
    assert rc == 1 and re.search(r"has 1.0 kB free; the pull needs [\d.]+ MB", err)
    assert hub.downloaded() == {f"{INPAINT}/model_index.json"} and not (tmp_path / "models").exists()


# --- which files: the rules, without a hub -----------------------------------------------------------------------


def files(*names: str) -> dict[str, RemoteFile]:
    return {n: RemoteFile(n, 10, sha256="0" * 64) for n in names}


def test_weights_prefer_the_variant_then_safetensors_and_take_shards_with_their_index():
    names = files("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
    assert _weights(names, "fp16") == {"model.safetensors": "model.fp16.safetensors"}
    assert _weights(names, None) == {"model.safetensors": "model.safetensors"}
    assert _weights(files("pytorch_model.bin", "pytorch_model.fp16.bin"), "fp16") == {"pytorch_model.bin":
                                                                                      "pytorch_model.fp16.bin"}
    assert _weights(files("model.safetensors", "pytorch_model.fp16.bin"), "fp16") == {"model.safetensors":
                                                                                      "model.safetensors"}
    sharded = files("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                    "model.safetensors.index.json", "model.fp16-00001-of-00002.safetensors",
                    "model.safetensors.index.fp16.json")
    assert set(_weights(sharded, "fp16")) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                             "model.safetensors.index.json"}  # a sharded variant: the plain shards
    assert _weights(files("sdxl_vae.safetensors", "vae.ckpt", "tf_model.h5"), None) == {}


def test_a_pipeline_repo_gives_its_listed_components_never_its_safety_checker():
    index = {"_class_name": "StableDiffusionInpaintPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None]}
    listing = Listing("o/r", "main", "c" * 40, files(
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin", "safety_checker/config.json",
        "safety_checker/model.safetensors", "feature_extractor/preprocessor_config.json", "image_encoder/config.json",
        "sd-v1-5-inpainting.ckpt", "README.md"))
    chosen = select_files(listing, ModelSource(hub="o/r", variant="fp16"), lambda r: json.dumps(index).encode())
    assert {k: v.path for k, v in chosen.items()} == {
        "model_index.json": "model_index.json", "unet/config.json": "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors": "unet/diffusion_pytorch_model.fp16.safetensors"}
    by_pattern = select_files(listing, ModelSource(hub="o/r", variant="fp16", files=("unet/*",)), lambda r: b"")
    assert {k: v.path for k, v in by_pattern.items()} == {
        "unet/config.json": "unet/config.json", "unet/diffusion_pytorch_model.bin": "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors": "unet/diffusion_pytorch_model.fp16.safetensors"}
    with pytest.raises(PullError, match=r"files: 'vae/\*' matches no file"):
        select_files(listing, ModelSource(hub="o/r", files=("vae/*",)), lambda r: b"")


def test_an_endpoint_that_is_not_a_hub_is_named_in_the_error():
    with Hub(endpoint="http://mirror.invalid/") as portal:
        portal.client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>Wi-Fi")))
        with pytest.raises(HubError, match=r"^http://mirror.invalid did not answer hub repo a/b's file listing with"
                                           r" sizes \(is HF_ENDPOINT a Hugging Face hub\?\)$"):
            portal.listing("a/b")


# --- models_config/recommended.yaml --------------------------------------------------------------------------------


def test_the_recommended_config_is_a_valid_pull_config_with_a_licence_for_every_entry(tmp_path):
    text = RECOMMENDED_CONFIG.read_text()
    doc = yaml.safe_load(text)
    sources = hub_sources(doc, str(RECOMMENDED_CONFIG))  # each hub source well formed
    dest = tmp_path / "models"
    pulled = pulled_config(doc, RECOMMENDED_CONFIG, dest, dest / "models.yaml")
    validate_pulled(pulled, dest / "models.yaml", str(RECOMMENDED_CONFIG))  # served as is once pulled
    registry = Registry.from_dict(pulled, dest)
    types = {(e.model_type, e.family if e.model_type == ModelType.MAIN else e.engine or e.preprocessor)
             for e in registry.entries() if e.source is not None}
    assert {(ModelType.MAIN, "sd15"), (ModelType.MAIN, "sdxl"), (ModelType.PRE_PROCESSOR, "openpose"),
            (ModelType.CONTROL_MODEL, None), (ModelType.CLOTHES_SEGMENTER, "segformer")} <= types
    assert registry.translator is not None and registry.default_main().model_code == "sd15-inpaint"
    openpose = next(s for s in sources if s.name == "openpose").source
    assert set(openpose.files) == set(annotator_files("openpose"))  # what our openpose pre-processor reads
    assert all(s.source.variant == "fp16" for s in sources if s.name in ("sd15-inpaint", "sdxl-inpaint", "cn-openpose"))

    # every entry and the translator carry a `# licence:` comment in their block
    blocks = re.split(r"\n(?=  - ModelCode: |translator:|models:)", text)
    named = [b for b in blocks if b.startswith(("  - ModelCode:", "translator:"))]
    assert len(named) == len(doc["models"]) + 1
    for block in named:
        assert re.search(r"\n\s+# licence: \S", block), f"no `# licence:` comment in:\n{textwrap.indent(block, '  ')}"

    # served directly, it is refused with a message that says to pull it
    with pytest.raises(ValueError, match=r"only `atelier pull` downloads: run `atelier pull"):
        Registry.from_file(RECOMMENDED_CONFIG)


def test_a_describers_translators_are_pulled_with_it(tmp_path):
    """A Describer's `translators:` hub sources are pulled as its own (named by its ModelCode for --only), and become
    `path:` folders of the written config, which a deployment serves."""
    doc = yaml.safe_load(textwrap.dedent("""
        models:
          - ModelCode: blip
            Name: BLIP
            ModelType: Describer
            source: {hub: Salesforce/blip-image-captioning-base}
            translators: {fr: {hub: Helsinki-NLP/opus-mt-en-fr}, zh: {path: local/opus-mt-en-zh}}
    """))
    found = [(s.label, s.name, s.source.hub) for s in hub_sources(doc, "pull.yaml")]
    assert found == [("models[0] (ModelCode 'blip')", "blip", "Salesforce/blip-image-captioning-base"),
                     ("models[0] (ModelCode 'blip'): translators.fr", "blip", "Helsinki-NLP/opus-mt-en-fr")]
    out = pulled_config(doc, tmp_path / "in" / "pull.yaml", tmp_path / "models", tmp_path / "served.yaml")
    entry = out["models"][0]
    assert entry["source"] == {"path": "models/Salesforce/blip-image-captioning-base"}
    assert entry["translators"] == {"fr": {"path": "models/Helsinki-NLP/opus-mt-en-fr"},
                                    "zh": {"path": str(tmp_path / "in" / "local" / "opus-mt-en-zh")}}
    validate_pulled(out, tmp_path / "served.yaml", "served.yaml")
    served = Registry.from_dict(out, tmp_path, origin="served.yaml").require("blip", ModelType.DESCRIBER)
    assert served.languages() == ["en", "zh", "fr"]
