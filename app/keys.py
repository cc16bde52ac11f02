"""The key store: PublicKey -> PrivateKey (and the key's webhook settings), from the YAML file at
ATELIER_KEYS_FILE::

    keys:
      - PublicKey: my-shop
        PrivateKey: "123456"
        WebhookSecret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw   # optional: signs this key's webhooks
        CallbackUrl: https://shop.example/hooks/atelier      # optional: the default CallbackUrl of its tasks
        MaxPersonas: 50                                      # optional: ATELIER_MAX_PERSONAS_PER_KEY for this key
        MaxPersonaImages: 12                                 # optional: ATELIER_MAX_PERSONA_IMAGES for this key
        MaxPriority: 3                                       # optional: ATELIER_MAX_PRIORITY for this key

Without that file a development key pair is created once under the data dir (``dev-keys.yaml``)
and printed by ``make run``.

A file that cannot be used is refused when it is read (:class:`KeyFileError`, naming the file, the
entry and the fix), which the gateway and ``make run`` do before serving: not YAML, not a mapping
with a ``keys:`` list, an entry that is not a mapping, a PublicKey or PrivateKey that is missing,
empty or not a string (YAML reads ``PrivateKey: 123456`` as a number), a duplicate PublicKey; a
WebhookSecret that is not ``whsec_`` and the base64 of 24 to 64 bytes (Standard Webhooks), a CallbackUrl that
is not an http(s) URL or that has no WebhookSecret beside it (docs/API.md "Webhooks"); a MaxPersonas that is not
a whole number >= 0 or a MaxPersonaImages that is not one >= 1 (docs/API.md "Personas"); a MaxPriority that is
not a whole number within the Priority range (docs/API.md "Priority").
"""
from __future__ import annotations

import base64
import binascii
import datetime
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.contract.limits import MAX_PRIORITY_FIELD, PRIORITY_RANGE
from app.validation.generate import CALLBACK_URL_FIELD, callback_url_problem

KEY_FIELDS = ("PublicKey", "PrivateKey")
WEBHOOK_SECRET_FIELD = "WebhookSecret"
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_BYTES = (24, 64)  # the Standard Webhooks specification's range for a secret
_MAKE_SECRET = ("python3 -c \"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"")
#: The per-key persona limits a key entry may set (absent: the deployment's setting), each with its least value.
PERSONA_LIMIT_FIELDS = {"MaxPersonas": 0, "MaxPersonaImages": 1}
_EXAMPLE = '`keys:` then entries like `- PublicKey: my-shop` / `  PrivateKey: "a-long-random-secret"`'


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class KeyPair:
    public_key: str
    private_key: str
    webhook_secret: str | None = None  # whsec_...: signs the webhooks of this key's tasks
    callback_url: str | None = None    # the CallbackUrl of this key's tasks that do not name one
    max_personas: int | None = None    # MaxPersonas: this key's ATELIER_MAX_PERSONAS_PER_KEY; None: the setting's
    max_persona_images: int | None = None  # MaxPersonaImages: this key's ATELIER_MAX_PERSONA_IMAGES
    max_priority: int | None = None    # MaxPriority: this key's ATELIER_MAX_PRIORITY


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class KeyStore:
    def __init__(self, pairs: list[KeyPair]):
        self._by_public = {p.public_key: p for p in pairs}

    def private_key(self, public_key: str) -> str | None:
        pair = self._by_public.get(public_key)
        return pair.private_key if pair else None

    def pair(self, public_key: str) -> KeyPair | None:
        return self._by_public.get(public_key)

    def only_pair(self) -> KeyPair:
        """The one pair of a single-key store (the dev key file); ValueError otherwise."""
        if len(self._by_public) != 1:
            raise ValueError(f"expected one key pair, found {len(self._by_public)}")
        return next(iter(self._by_public.values()))

    def __len__(self) -> int:
        return len(self._by_public)

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        """The key store of a YAML key file; :class:`KeyFileError` for a file that cannot be used."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise KeyFileError(f"{path}: cannot read the key file ({reason}); "
                               f"ATELIER_KEYS_FILE must name a readable YAML file") from None
        try:
            doc = yaml.safe_load(text)
            tree = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            raise KeyFileError(f"{path}: not valid YAML ({_one_line(e)}); expected {_EXAMPLE}") from None
        return cls(parse_keys(doc, tree, path))


def parse_keys(doc: Any, tree: yaml.Node | None, origin: object) -> list[KeyPair]:
    """The pairs of a parsed key file (``doc``; ``tree``, its YAML nodes, gives a value as it was
    written). Raises :class:`KeyFileError` naming ``origin``, the entry and the fix."""
    if not isinstance(doc, dict):
        raise KeyFileError(f"{origin}: expected a mapping with a `keys:` list, got {_kind(doc)}; write {_EXAMPLE}")
    if "keys" not in doc:
        found = ", ".join(sorted(map(str, doc))) or "none"
        raise KeyFileError(f"{origin}: no `keys:` list (top-level keys: {found}); write {_EXAMPLE}")
    entries = doc["keys"]
    if not isinstance(entries, list):
        raise KeyFileError(f"{origin}: `keys` must be a list of entries, got {_kind(entries)}; write {_EXAMPLE}")
    if not entries:
        raise KeyFileError(f"{origin}: `keys` lists no entry; add one: {_EXAMPLE}")
    entry_nodes = _entry_nodes(tree)
    pairs: list[KeyPair] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise KeyFileError(f"{origin}: keys[{i}] must be a mapping with PublicKey and PrivateKey, "
                               f"got {_kind(entry)}; write {_EXAMPLE}")
        node = entry_nodes[i] if i < len(entry_nodes) else None
        public = entry.get("PublicKey")
        label = f"keys[{i}] (PublicKey {public})" if isinstance(public, str) and public else f"keys[{i}]"
        for field in KEY_FIELDS:
            problem = _field_problem(field, entry, node)
            if problem:
                raise KeyFileError(f"{origin}: {label}: {problem}")
        if public in first_index:
            raise KeyFileError(f"{origin}: {label}: duplicate PublicKey, keys[{first_index[public]}] has it too; "
                               f"give every entry its own PublicKey")
        first_index[public] = i
        problem = _webhook_problem(entry, node) or _persona_limits_problem(entry) or _max_priority_problem(entry)
        if problem:
            raise KeyFileError(f"{origin}: {label}: {problem}")
        pairs.append(KeyPair(public, entry["PrivateKey"], webhook_secret=entry.get(WEBHOOK_SECRET_FIELD),
                             callback_url=entry.get(CALLBACK_URL_FIELD), max_personas=entry.get("MaxPersonas"),
                             max_persona_images=entry.get("MaxPersonaImages"),
                             max_priority=entry.get(MAX_PRIORITY_FIELD)))
    return pairs


def _webhook_problem(entry: dict, node: yaml.Node | None) -> str | None:
    """What is wrong with the entry's optional WebhookSecret and CallbackUrl, or None."""
    for field in (WEBHOOK_SECRET_FIELD, CALLBACK_URL_FIELD):
        if field in entry:
            problem = _field_problem(field, entry, node)
            if problem:
                return problem
    secret = entry.get(WEBHOOK_SECRET_FIELD)
    if secret is not None and not _good_secret(secret):
        lo, hi = WEBHOOK_SECRET_BYTES
        return (f"{WEBHOOK_SECRET_FIELD} must be {WEBHOOK_SECRET_PREFIX} followed by the base64 of {lo} to {hi} "
                f"random bytes (Standard Webhooks); make one with: {_MAKE_SECRET}")
    url = entry.get(CALLBACK_URL_FIELD)
    if url is not None:
        problem = callback_url_problem(url)
        if problem:
            return f"{CALLBACK_URL_FIELD} {problem}"
        if secret is None:
            return (f"{CALLBACK_URL_FIELD} needs a {WEBHOOK_SECRET_FIELD} to sign the deliveries with; add one: "
                    f"{WEBHOOK_SECRET_FIELD}: whsec_..., made with: {_MAKE_SECRET}")
    return None


def _persona_limits_problem(entry: dict) -> str | None:
    """What is wrong with the entry's optional MaxPersonas / MaxPersonaImages, or None."""
    for field, least in PERSONA_LIMIT_FIELDS.items():
        value = entry.get(field)
        if field in entry and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            return f"{field} must be a whole number >= {least} (got {value!r}); write e.g. {field}: {least + 10}"
    return None


def _max_priority_problem(entry: dict) -> str | None:
    """What is wrong with the entry's optional MaxPriority, or None."""
    value = entry.get(MAX_PRIORITY_FIELD)
    lo, hi = int(PRIORITY_RANGE.lo), int(PRIORITY_RANGE.hi)
    if MAX_PRIORITY_FIELD in entry and (isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
        return (f"{MAX_PRIORITY_FIELD} must be a whole number between {lo} and {hi} (got {value!r}); write e.g."
                f" {MAX_PRIORITY_FIELD}: 3")
    return None


def _good_secret(secret: str) -> bool:
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return False
    lo, hi = WEBHOOK_SECRET_BYTES
    return lo <= len(raw) <= hi


def _field_problem(field: str, entry: dict, node: yaml.Node | None) -> str | None:
    """What is wrong with ``entry[field]`` and how to fix it, or None when it is a non-empty string."""
    if field not in entry:
        return f'{field} is missing; add it: {field}: "<value>"'
    value = entry[field]
    if isinstance(value, str):
        return None if value else f'{field} is empty; write the value: {field}: "<value>"'
    if value is None:
        return f'{field} is empty; write the value: {field}: "<value>"'
    if isinstance(value, (dict, list)):
        return f'{field} is {_kind(value)}; write one string: {field}: "<value>"'
    written = _written(node, field)
    if written is None:
        written = str(value).lower() if isinstance(value, bool) else str(value)
    quoted = json.dumps(written, ensure_ascii=False)
    return f"{field} is {_kind(value)} ({written}); quote the value: {field}: {quoted}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (an empty document or value)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _entry_nodes(tree: yaml.Node | None) -> list[yaml.Node]:
    """The nodes of the ``keys`` entries, as written (empty where the file's shape is unusual)."""
    if isinstance(tree, yaml.MappingNode):
        for key, value in tree.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "keys" and isinstance(value, yaml.SequenceNode):
                return list(value.value)
    return []


def _written(node: yaml.Node | None, field: str) -> str | None:
    """The text of ``field``'s scalar value as the file writes it (``0123`` stays ``0123``)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == field and isinstance(value, yaml.ScalarNode):
                return value.value
    return None


def _one_line(error: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML error, on one line."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def dev_keys_path(data_dir: Path) -> Path:
    return data_dir / "dev-keys.yaml"


def ensure_dev_keys(data_dir: Path) -> KeyPair:
    """Create (once) and return the development key pair under the data dir."""
    path = dev_keys_path(data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pair = KeyPair("dev-" + secrets.token_urlsafe(16), secrets.token_urlsafe(32), new_webhook_secret())
        path.write_text(yaml.safe_dump({"keys": [{"PublicKey": pair.public_key, "PrivateKey": pair.private_key,
                                                  WEBHOOK_SECRET_FIELD: pair.webhook_secret}]}))
        path.chmod(0o600)
    return KeyStore.from_file(path).only_pair()


def load_keystore(keys_file: Path | None, data_dir: Path) -> KeyStore:
    if keys_file is not None:
        return KeyStore.from_file(keys_file)
    return KeyStore([ensure_dev_keys(data_dir)])
