"""The key store: PublicKey -> PrivateKey, from the YAML file at ATELIER_KEYS_FILE::

    keys:
      - PublicKey: ...
        PrivateKey: ...

Without that file a development key pair is created once under the data dir (``dev-keys.yaml``)
and printed by ``make run``.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class KeyPair:
    public_key: str
    private_key: str


class KeyStore:
    def __init__(self, pairs: list[KeyPair]):
        self._by_public = {p.public_key: p for p in pairs}

    def private_key(self, public_key: str) -> str | None:
        pair = self._by_public.get(public_key)
        return pair.private_key if pair else None

    def only_pair(self) -> KeyPair:
        """The one pair of a single-key store (the dev key file); ValueError otherwise."""
        if len(self._by_public) != 1:
            raise ValueError(f"expected one key pair, found {len(self._by_public)}")
        return next(iter(self._by_public.values()))

    def __len__(self) -> int:
        return len(self._by_public)

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        doc = yaml.safe_load(path.read_text()) or {}
        pairs = []
        for i, entry in enumerate(doc.get("keys") or []):
            pub, priv = entry.get("PublicKey"), entry.get("PrivateKey")
            if not isinstance(pub, str) or not isinstance(priv, str) or not pub or not priv:
                raise ValueError(f"{path}: keys[{i}] needs a non-empty PublicKey and PrivateKey")
            pairs.append(KeyPair(pub, priv))
        if not pairs:
            raise ValueError(f"{path}: no keys")
        return cls(pairs)


def dev_keys_path(data_dir: Path) -> Path:
    return data_dir / "dev-keys.yaml"


def ensure_dev_keys(data_dir: Path) -> KeyPair:
    """Create (once) and return the development key pair under the data dir."""
    path = dev_keys_path(data_dir)
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pair = KeyPair("dev-" + secrets.token_urlsafe(16), secrets.token_urlsafe(32))
        path.write_text(yaml.safe_dump({"keys": [{"PublicKey": pair.public_key, "PrivateKey": pair.private_key}]}))
        path.chmod(0o600)
    return KeyStore.from_file(path).only_pair()


def load_keystore(keys_file: Path | None, data_dir: Path) -> KeyStore:
    if keys_file is not None:
        return KeyStore.from_file(keys_file)
    return KeyStore([ensure_dev_keys(data_dir)])
