"""Result URLs that work only for the task's owner: signed with the owner's PrivateKey (HMAC-SHA256)
and expiring with the retention period. Revoking a key revokes its links."""
from __future__ import annotations

import hashlib
import hmac
import time


def _mac(private_key: str, uid: str, name: str, exp: int) -> str:
    msg = f"{uid}/{name}:{exp}".encode()
    return hmac.new(private_key.encode(), msg, hashlib.sha256).hexdigest()[:40]


def make_link(base_url: str, private_key: str, uid: str, name: str, exp: int) -> str:
    return f"{base_url}/results/{uid}/{name}?exp={exp}&sig={_mac(private_key, uid, name, exp)}"


def check_link(private_key: str, uid: str, name: str, exp: int, sig: str, now: float | None = None) -> bool:
    if exp < (now if now is not None else time.time()) or not sig.isascii():
        return False  # compare_digest takes ASCII text only; a MAC is hex
    return hmac.compare_digest(_mac(private_key, uid, name, exp), sig)
