"""A deployment of real models never imports the demo builders: a worker whose models_config names only
``path:`` / ``file:`` sources runs a whole job (translator, LoRA, ControlNet with canny) without
``workers.demo`` ever being imported (docs/architecture.md, "Rules": "`workers/demo` is reached only through
`workers/models/sources.py`").

The model files are real tiny models, made here with the demo builders (this test process may import them);
the job runs in a fresh interpreter that knows them only by their paths, with an import hook that records
every attempt to import ``workers.demo``, even one that would fail or be caught.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.api import ROOT, example_inputs
from workers.demo.control import ensure_demo_controlnet
from workers.demo.model import ensure_demo_model
from workers.demo.submodels import write_demo_lora_kohya
from workers.demo.translator import RECIPE_VERSION, ensure_demo_translator

#: Spanish, in the demo translator's vocabulary ("a girl in a red dress"): the translator must load and run.
SPANISH_PROMPT = "una chica con un vestido rojo"

JOB_SCRIPT = r"""
import hashlib, importlib.abc, json, sys
from pathlib import Path

attempts = []

class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "workers.demo" or name.startswith("workers.demo."):
            attempts.append(name)
        return None

sys.meta_path.insert(0, Recorder())

from app.contract.jobs import ControlUnitRef, JobMessage, SubModelRef
from app.contract.settings import get_settings
from workers.jobs.generate import run_job
from workers.runtime import WorkerRuntime

args = json.loads(sys.argv[1])
rt = WorkerRuntime.build(get_settings())

def put(path):
    data = Path(path).read_bytes()
    return rt.storage.put_input(hashlib.sha256(data).hexdigest(), data)

mannequin, mask = put(args["mannequin"]), put(args["mask"])
registry = rt.registry
main = registry.get("house-inpaint")
units = []
for unit in main.default_control:  # resolved as the gateway resolves a request without a ControlNet field
    pre = registry.get(unit.preprocessor)
    cm = registry.get(unit.control_model)
    units.append(ControlUnitRef(image=mannequin, preprocessor=unit.preprocessor, resolution=pre.defaults.resolution,
                                control_model=unit.control_model, control_weight=cm.defaults.control_weight,
                                starting_step=cm.defaults.starting_step, ending_step=cm.defaults.ending_step))
uid, _ = rt.store.create(args["owner"], None, "GenerateFromMannequin", 7, 0)
job = JobMessage(task_uid=uid, main_model="house-inpaint", sub_models=[SubModelRef(model_code="house-lora")],
                 positive_prompts=[args["prompt"]], translate_prompts=True, seed=7, width=64, height=64,
                 batch_size=1, mannequin_image=mannequin, clothes_mask=mask, control_units=units)
run_job(rt, job.to_wire())
rec = rt.store.get(uid)
print(json.dumps({
    "status": str(rec.status), "error": rec.error_message, "notes": rec.notes, "images": len(rec.images),
    "control_units": len(units), "loaded": sorted(label for label, _ in rt.cache.cached()),
    "demo_modules": sorted(m for m in sys.modules if m == "workers.demo" or m.startswith("workers.demo.")),
    "demo_import_attempts": attempts,
}))
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict[str, Path]:
    """A models.yaml of real (tiny) model files named by ``path:`` / ``file:`` only, and its data dir."""
    d = tmp_path_factory.mktemp("real-deployment")
    main = ensure_demo_model(d / "files" / "house-inpaint")
    controlnet = ensure_demo_controlnet(d / "files" / "house-controlnet", base_model=main)
    lora = write_demo_lora_kohya(d / "files" / "loras" / "house-style.safetensors", seed=1)
    # the translator takes ~10 s to train: the copy test_translate.py builds once per machine
    cache = Path(os.environ.get("ATELIER_DEMO_MODELS_DIR", Path.home() / ".cache" / "atelier" / "test-models"))
    translator = ensure_demo_translator(cache / f"demo-translator-r{RECIPE_VERSION}", seed=0)
    config = {
        "translator": {"path": str(translator)},
        "models": [
            {"ModelCode": "house-inpaint", "Name": "House inpainting model", "ModelType": "Main", "family": "sd15",
             "source": {"path": str(main)}, "defaults": {"steps": 2, "guidance_scale": 5.0},
             "default_control": [{"PreProcessor": "canny", "ControlModel": "house-controlnet"}]},
            {"ModelCode": "house-lora", "Name": "House style", "ModelType": "LoRA",
             "source": {"file": str(lora)}, "defaults": {"lora_weight": 0.8}, "TriggerWordList": ["house style"]},
            {"ModelCode": "canny", "Name": "Canny edges", "ModelType": "PreProcessor", "preprocessor": "canny"},
            {"ModelCode": "house-controlnet", "Name": "House ControlNet", "ModelType": "ControlModel",
             "family": "sd15", "source": {"path": str(controlnet)}},
        ],
    }
    (d / "models.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    mannequin, mask = example_inputs(64, 64)
    mannequin.save(d / "mannequin.png")
    mask.save(d / "mask.png")
    return {"config": d / "models.yaml", "data": d / "data", "mannequin": d / "mannequin.png", "mask": d / "mask.png",
            "translator": translator}


def test_models_config_names_no_demo_source(deployment):
    text = deployment["config"].read_text()
    assert "demo:" not in text and "house-inpaint" in text


def test_a_non_demo_deployment_never_imports_workers_demo(deployment, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update({
        "ATELIER_MODELS_CONFIG": str(deployment["config"]),
        "ATELIER_DATA_DIR": str(deployment["data"]),
        "ATELIER_REDIS_URL": redis_url,
        "ATELIER_DEVICE": "cpu",
        "ATELIER_PROGRESS_INTERVAL_S": "0",
    })
    args = {"mannequin": str(deployment["mannequin"]), "mask": str(deployment["mask"]),
            "owner": "pk-demo-isolation", "prompt": SPANISH_PROMPT}
    out = subprocess.run([sys.executable, "-c", JOB_SCRIPT, json.dumps(args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log = out.stderr[-5000:]
    assert result["status"] == "Finished", (result, log)
    assert result["images"] == 1 and result["control_units"] == 1, result
    # the job really used every kind of model: translator, LoRA file, ControlNet
    assert any(note.startswith("TranslatePrompts: translated") for note in result["notes"]), (result, log)
    used = {deployment["translator"].name, "house-lora", "house-controlnet", "house-inpaint"}
    assert used <= set(result["loaded"]), result
    # ... and never reached for the demo builders
    assert result["demo_import_attempts"] == [] and result["demo_modules"] == [], result
    models_dir = deployment["data"] / "models"
    assert not models_dir.exists() or not any(models_dir.iterdir()), sorted(models_dir.iterdir())
