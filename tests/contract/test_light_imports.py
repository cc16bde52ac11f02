"""The gateway (and the shared contract) never import the heavy ML libraries nor the worker: checked in a
fresh interpreter, so that nothing imported by another test hides it."""
import json
import subprocess
import sys

from support.api import ROOT

HEAVY = ["torch", "diffusers", "transformers", "controlnet_aux", "peft", "accelerate"]

#: Imports every module of the app package (found by walking it, so a new module is covered without being
#: listed here), then reports which heavy libraries and worker modules got imported, and by which module.
WALK_APP = r"""
import importlib, json, pkgutil, sys
import app

HEAVY = json.loads(sys.argv[1])

def pulled():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m.split(".")[0] == "workers")

modules, culprits = [], {}
for info in pkgutil.walk_packages(app.__path__, "app."):
    before = set(pulled())
    importlib.import_module(info.name)
    modules.append(info.name)
    new = sorted(set(pulled()) - before)
    if new:
        culprits[info.name] = new[:5]
print(json.dumps({"modules": modules, "pulled": pulled(), "culprits": culprits}))
"""


def test_gateway_does_not_import_heavy_libraries():
    code = ("import sys, app.main, app.cli.client, app.cli.run, app.actions, app.contract.queue; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_app_module_imports_heavy_libraries_or_workers():
    out = subprocess.run([sys.executable, "-c", WALK_APP, json.dumps(HEAVY)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # the walk saw the whole package (a walk that stopped early would pass everything)
    expected = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                for p in (ROOT / "app").rglob("*.py")} - {"app"}
    assert expected <= set(result["modules"]), sorted(expected - set(result["modules"]))
    assert result["pulled"] == [], (
        "app/ modules import heavy libraries or workers (first module that pulled each in: "
        f"{result['culprits']})")
