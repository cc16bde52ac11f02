"""A persona written as CreatePersona writes one, for the worker-side tests (persona units, SwitchFace's
PersonaCode): each image's PNG bytes under its content hash in the PERSONAS namespace, then the Redis record."""
from __future__ import annotations

import hashlib
import io

from PIL import Image

from app.contract.personas import PersonaStore, new_persona_code


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_persona(rt, *images: Image.Image, owner: str = "pk-persona") -> str:
    """The PersonaCode of a new persona of ``images`` owned by ``owner``, in ``rt``'s storage and task store."""
    shas = []
    code = new_persona_code()
    for img in images:
        data = png(img)
        shas.append(rt.storage.put_persona_image(code, hashlib.sha256(data).hexdigest(), data))
    PersonaStore(rt.store.r).create(owner, "test", shas, 1000, code=code)
    return code
