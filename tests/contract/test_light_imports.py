"""The gateway (and the shared contract) never import the heavy ML libraries: checked in a fresh
interpreter, so that nothing imported by another test hides it."""
import subprocess
import sys

HEAVY = ["torch", "diffusers", "transformers", "controlnet_aux", "peft", "accelerate"]


def test_gateway_does_not_import_heavy_libraries():
    code = ("import sys, app.main, app.cli.client, app.cli.run, app.actions, app.contract.queue; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
