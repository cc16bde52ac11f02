"""The key file: each way it cannot be used is refused when it is read, with a message naming the
entry and the fix; the gateway's lifespan refuses to start on such a file (or on an invalid models
config); a good file, the published test key quoted, serves the published check value."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.contract.settings import get_settings
from app.keys import KeyFileError, KeyStore, load_keystore
from app.main import StartupRefusal, app
from app.services import ConfigError, get_services

PUBLISHED_KEY_FILE = 'keys:\n  - PublicKey: abcdefg\n    PrivateKey: "123456"\n'


def _store(tmp_path: Path, text: str) -> KeyStore:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    return KeyStore.from_file(path)


def test_the_published_test_key_quoted_is_read_as_a_string(tmp_path):
    store = _store(tmp_path, PUBLISHED_KEY_FILE)
    assert store.private_key("abcdefg") == "123456" and len(store) == 1


def test_a_number_private_key_names_the_entry_and_the_quoting_fix(tmp_path):
    with pytest.raises(KeyFileError) as e:
        _store(tmp_path, "keys:\n  - PublicKey: abcdefg\n    PrivateKey: 123456\n")
    assert str(e.value) == (f'{tmp_path / "keys.yaml"}: keys[0] (PublicKey abcdefg): PrivateKey is a number (123456); '
                            'quote the value: PrivateKey: "123456"')


@pytest.mark.parametrize(("text", "expected"), [
    ("keys: [: broken", "not valid YAML (line 1"),
    ("", "expected a mapping with a `keys:` list, got nothing"),
    ("- PublicKey: a\n  PrivateKey: b\n", "expected a mapping with a `keys:` list, got a list"),
    ("key:\n  - PublicKey: a\n", "no `keys:` list (top-level keys: key)"),
    ("keys:\n  PublicKey: a\n  PrivateKey: b\n", "`keys` must be a list of entries, got a mapping"),
    ("keys: []\n", "`keys` lists no entry; add one"),
    ("keys:\n  - my-shop\n", "keys[0] must be a mapping with PublicKey and PrivateKey, got a string"),
    ("keys:\n  - PrivateKey: s\n", 'keys[0]: PublicKey is missing; add it: PublicKey: "<value>"'),
    ("keys:\n  - PublicKey: a\n", 'keys[0] (PublicKey a): PrivateKey is missing; add it: PrivateKey: "<value>"'),
    ('keys:\n  - PublicKey: ""\n    PrivateKey: s\n', "keys[0]: PublicKey is empty"),
    ("keys:\n  - PublicKey: a\n    PrivateKey:\n", "keys[0] (PublicKey a): PrivateKey is empty"),
    ("keys:\n  - PublicKey: 0123\n    PrivateKey: s\n",
     'keys[0]: PublicKey is a number (0123); quote the value: PublicKey: "0123"'),
    ("keys:\n  - PublicKey: a\n    PrivateKey: 1.5e+3\n",
     'PrivateKey is a number (1.5e+3); quote the value: PrivateKey: "1.5e+3"'),
    ("keys:\n  - PublicKey: a\n    PrivateKey: yes\n",
     'keys[0] (PublicKey a): PrivateKey is a boolean (yes); quote the value: PrivateKey: "yes"'),
    ("keys:\n  - PublicKey: a\n    PrivateKey: 2024-01-31\n",
     'PrivateKey is a date (2024-01-31); quote the value: PrivateKey: "2024-01-31"'),
    ("keys:\n  - PublicKey: a\n    PrivateKey: [x, y]\n",
     "keys[0] (PublicKey a): PrivateKey is a list; write one string"),
    ("keys:\n  - PublicKey: a\n    PrivateKey: s1\n  - PublicKey: b\n    PrivateKey: s2\n"
     "  - PublicKey: a\n    PrivateKey: s3\n",
     "keys[2] (PublicKey a): duplicate PublicKey, keys[0] has it too; give every entry its own PublicKey"),
])
def test_an_unusable_key_file_is_refused_with_the_entry_and_the_fix(tmp_path, text, expected):
    with pytest.raises(KeyFileError) as e:
        _store(tmp_path, text)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'keys.yaml'}: ") and expected in message, message
    assert "\n" not in message


def test_a_missing_key_file_names_the_file_and_the_setting(tmp_path):
    with pytest.raises(KeyFileError, match=r"nope\.yaml: cannot read the key file .*ATELIER_KEYS_FILE"):
        KeyStore.from_file(tmp_path / "nope.yaml")


def test_a_corrupt_dev_key_file_is_refused_too(tmp_path):
    (tmp_path / "dev-keys.yaml").write_text("keys:\n  - PublicKey: dev-x\n    PrivateKey: 42\n")
    with pytest.raises(KeyFileError, match="dev-keys.yaml: keys\\[0\\] \\(PublicKey dev-x\\): PrivateKey is a number"):
        load_keystore(None, tmp_path)


# --- the gateway at start ------------------------------------------------------------------------

@pytest.fixture()
def deployment(atelier_env, monkeypatch, tmp_path):
    """Point the in-process gateway at files of the test's own (``deployment(keys=..., models=...)``)."""
    def configure(keys: str | None = None, models: str | None = None) -> None:
        if keys is not None:
            (tmp_path / "keys.yaml").write_text(keys)
            monkeypatch.setenv("ATELIER_KEYS_FILE", str(tmp_path / "keys.yaml"))
        if models is not None:
            (tmp_path / "models.yaml").write_text(models)
            monkeypatch.setenv("ATELIER_MODELS_CONFIG", str(tmp_path / "models.yaml"))
        get_settings.cache_clear()
        get_services.cache_clear()

    yield configure
    monkeypatch.undo()
    get_settings.cache_clear()
    get_services.cache_clear()


def test_the_gateway_serves_the_published_check_value_with_the_quoted_test_key(deployment):
    deployment(keys=PUBLISHED_KEY_FILE)
    with TestClient(app) as client:
        r = client.post("/", json={"Action": "ListModels", "PublicKey": "abcdefg",
                                   "Signature": "4a20bc1141494035f6aaaad13224c94c5a8bc3a5"}).json()
    assert r["RetCode"] == 0 and r["MainModels"], r


def test_the_gateway_does_not_start_with_a_number_private_key(deployment):
    deployment(keys="keys:\n  - PublicKey: abcdefg\n    PrivateKey: 123456\n")
    with pytest.raises(ConfigError, match='PrivateKey is a number \\(123456\\); quote the value: PrivateKey: "123456"'):
        with TestClient(app):
            pass


@pytest.mark.parametrize(("models", "expected"), [
    ("models:\n  - ModelCode: x\n", "models[0] (ModelCode 'x')"),
    ("models: [\n", "not valid YAML"),
])
def test_the_gateway_does_not_start_with_an_invalid_models_config(deployment, tmp_path, models, expected):
    deployment(models=models)
    with pytest.raises(ConfigError) as e:
        with TestClient(app):
            pass
    assert str(e.value).startswith(f"{tmp_path / 'models.yaml'}: ") and expected in str(e.value)


def test_the_gateway_does_not_start_without_its_models_config(deployment, tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_MODELS_CONFIG", str(tmp_path / "missing.yaml"))
    deployment()
    with pytest.raises(ConfigError, match="missing.yaml: cannot read the models config .*ATELIER_MODELS_CONFIG"):
        with TestClient(app):
            pass


def test_the_gateway_does_not_start_when_the_dev_key_pair_cannot_be_written(deployment, tmp_path, monkeypatch):
    (tmp_path / "data").write_text("a file where the data dir should be")
    monkeypatch.delenv("ATELIER_KEYS_FILE")
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    deployment()
    with pytest.raises(ConfigError, match="dev-keys.yaml: cannot create the dev key pair .*ATELIER_KEYS_FILE"):
        with TestClient(app):
            pass


# --- how a refusal reaches the server (the ASGI lifespan protocol, as uvicorn drives it) ----------

def _drive_lifespan(startup) -> tuple[list[dict], BaseException | None]:
    """Run a FastAPI app whose lifespan calls ``startup`` behind StartupRefusal, as a server does:
    the messages the server receives, and the exception the app raised (None if none)."""
    @asynccontextmanager
    async def lifespan(_app):
        startup()
        yield

    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(incoming)

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> BaseException | None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await StartupRefusal(FastAPI(lifespan=lifespan))(scope, receive, send)
        except BaseException as e:  # what the server would see
            return e
        return None

    return sent, asyncio.run(run())


def test_a_config_error_reaches_the_server_as_its_message_alone():
    def refuse():
        raise ConfigError("keys.yaml: keys[0]: PublicKey is missing")

    sent, error = _drive_lifespan(refuse)
    assert sent == [{"type": "lifespan.startup.failed",
                     "message": "cannot start: keys.yaml: keys[0]: PublicKey is missing"}]
    assert isinstance(error, ConfigError)


def test_other_startup_failures_reach_the_server_unchanged():
    def crash():
        raise RuntimeError("boom")

    sent, error = _drive_lifespan(crash)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "Traceback" in sent[0]["message"] and "RuntimeError: boom" in sent[0]["message"]
    assert isinstance(error, RuntimeError)


def test_a_good_startup_passes_through():
    sent, error = _drive_lifespan(lambda: None)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert error is None
