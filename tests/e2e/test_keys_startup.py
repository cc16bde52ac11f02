"""A key file or models config that cannot be used stops the service at start, as a user meets it:
the gateway (uvicorn) exits non-zero printing the message once, without a traceback, and never
answers; ``make run``'s launcher exits non-zero at once with the message, having started nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from support.api import ROOT, TEST_MODELS_YAML, free_port

NUMBER_KEY = "keys:\n  - PublicKey: abcdefg\n    PrivateKey: 123456\n"
NUMBER_KEY_MESSAGE = ('keys[0] (PublicKey abcdefg): PrivateKey is a number (123456); '
                      'quote the value: PrivateKey: "123456"')


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """A clean environment: no ATELIER_ variable of the caller's, the test's own data dir and port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    models = tmp_path / "models.yaml"
    if not models.exists():
        models.write_text(TEST_MODELS_YAML)
    env.update(ATELIER_DATA_DIR=str(tmp_path / "data"), ATELIER_PORT=str(free_port()), ATELIER_DEVICE="cpu",
               ATELIER_MODELS_CONFIG=str(models), PYTHONPATH=str(ROOT), **settings)
    return env


def _leftovers(data_dir: Path) -> list[str]:
    """Processes of this deployment still running (found by their data dir, in the environment or argv)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == os.getpid():
                continue
            if str(data_dir) in " ".join(p.info["cmdline"] or []) \
                    or p.environ().get("ATELIER_DATA_DIR") == str(data_dir):
                found.append(" ".join(p.info["cmdline"] or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_the_gateway_exits_with_the_message_and_never_answers(tmp_path):
    (tmp_path / "keys.yaml").write_text(NUMBER_KEY)
    env = _env(tmp_path, ATELIER_KEYS_FILE=str(tmp_path / "keys.yaml"))
    port = env["ATELIER_PORT"]
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", port],
                            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    answered = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                answered.append(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert proc.poll() is not None, "the gateway is still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode != 0, out
    assert not answered, f"the gateway answered {answered}"
    assert out.count(NUMBER_KEY_MESSAGE) == 1, out
    assert f"{tmp_path / 'keys.yaml'}: {NUMBER_KEY_MESSAGE}" in out
    assert "Traceback" not in out, out


def _launch(tmp_path: Path, **settings: str) -> tuple[int, str, float]:
    env = _env(tmp_path, **settings)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.cli.run"], cwd=ROOT, env=env, start_new_session=True,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


@pytest.mark.parametrize("case", ["number key", "bad models config", "missing key file"])
def test_make_run_refuses_to_start_and_leaves_nothing_running(tmp_path, case):
    settings: dict[str, str] = {}
    if case == "number key":
        (tmp_path / "keys.yaml").write_text(NUMBER_KEY)
        settings["ATELIER_KEYS_FILE"] = str(tmp_path / "keys.yaml")
        expected = f"{tmp_path / 'keys.yaml'}: {NUMBER_KEY_MESSAGE}"
    elif case == "bad models config":
        (tmp_path / "models.yaml").write_text("models:\n  - ModelCode: x\n    ModelType: Main\n    Name: X\n")
        expected = f"{tmp_path / 'models.yaml'}: models[0] (ModelCode 'x'): "
    else:
        settings["ATELIER_KEYS_FILE"] = str(tmp_path / "absent.yaml")
        expected = f"{tmp_path / 'absent.yaml'}: cannot read the key file"
    code, out, seconds = _launch(tmp_path, **settings)
    assert code != 0, out
    assert out.count(expected) == 1 and "[atelier] cannot start: " in out, out
    assert "[atelier] starting" not in out and "Traceback" not in out, out
    assert seconds < 30
    assert not (tmp_path / "data" / "redis").exists(), "the embedded Redis was started"
    assert not _leftovers(tmp_path / "data")


def test_make_run_checks_the_models_config_with_the_dev_keys_too(tmp_path):
    # no ATELIER_KEYS_FILE: the dev key pair is created, then the models config is refused
    (tmp_path / "models.yaml").write_text("models: [\n")
    code, out, _ = _launch(tmp_path)
    assert code != 0 and f"{tmp_path / 'models.yaml'}: not valid YAML" in out, out
    assert (tmp_path / "data" / "dev-keys.yaml").exists()
    assert not (tmp_path / "data" / "redis").exists()
