"""CreatePersona, ListPersonas, DeletePersona (extensions of PICPIK's API, docs/API.md "Personas"): a key's saved
reference images, which an IP-Adapter unit names by ``PersonaCode`` instead of ``ImageIndex``.

Answered by the gateway alone (no task). A persona is its owner's only: another key's PersonaCode is answered 240
exactly as an unknown one (:func:`require_persona`, also the check of a unit's PersonaCode). Its images are stored
in storage's ``personas`` namespace, never swept; its record is in Redis without a TTL
(``app/contract/personas.py``). The workers compute each adapter encoder's embeddings of it once, on first use,
and store them beside the images; DeletePersona removes the record, the images and those embeddings.
"""
from __future__ import annotations

import logging
from typing import Any

from app.actions.base import SignedCall
from app.contract.codes import STORAGE_UNAVAILABLE_MESSAGE, RetCode, persona_message
from app.contract.limits import PERSONA_CODE_FIELD, PERSONA_NAME_FIELD
from app.contract.personas import PersonaRecord, TooManyPersonas, new_persona_code
from app.errors import ApiError
from app.services import Services
from app.validation.personas import check_persona_code, is_persona_code, parse_create_persona

log = logging.getLogger("atelier.gateway")


def require_persona(svc: Services, owner: str, code: str) -> PersonaRecord:
    """The persona ``code`` of ``owner``; 240 ``Persona [code] not exists`` for an unknown code, a deleted one and
    another key's alike. The one gateway-side check of a PersonaCode (a unit's, DeletePersona's, SwitchFace's)."""
    rec = svc.personas.owned(owner, code) if is_persona_code(code) else None
    if rec is None:
        raise ApiError(RetCode.UNKNOWN_MODEL, persona_message(code))
    return rec


def persona_limits(svc: Services, public_key: str) -> tuple[int, int]:
    """The key's (personas, images per persona): its key file entry's MaxPersonas / MaxPersonaImages, else the
    deployment's ATELIER_MAX_PERSONAS_PER_KEY / ATELIER_MAX_PERSONA_IMAGES."""
    pair, s = svc.keys.pair(public_key), svc.settings
    personas = pair.max_personas if pair is not None and pair.max_personas is not None else s.max_personas_per_key
    images = (pair.max_persona_images if pair is not None and pair.max_persona_images is not None
              else s.max_persona_images)
    return personas, images


def create_persona(call: SignedCall, svc: Services) -> dict[str, Any]:
    s = svc.settings
    max_personas, max_images = persona_limits(svc, call.public_key)
    req = parse_create_persona(call.body, max_images=max_images, max_pixels=s.max_image_pixels)
    if svc.personas.count(call.public_key) >= max_personas:
        raise _too_many(max_personas)
    code = new_persona_code()
    try:
        for img in req.images:
            svc.storage.put_persona_image(code, img.sha256, img.data)
        rec = svc.personas.create(call.public_key, req.name, [img.sha256 for img in req.images], max_personas,
                                  code=code)
    except TooManyPersonas:  # another CreatePersona of this key took the last place meanwhile
        svc.storage.delete_persona(code)
        raise _too_many(max_personas) from None
    except OSError as e:
        log.error("storage unavailable: %s", e)
        raise ApiError(RetCode.UNAVAILABLE, STORAGE_UNAVAILABLE_MESSAGE) from None
    log.info("persona %s created for %s (%d images)", rec.code, call.public_key, len(rec.images))
    return {PERSONA_CODE_FIELD: rec.code}


def _too_many(limit: int) -> ApiError:
    return ApiError.param(PERSONA_NAME_FIELD, f"cannot be added: this key keeps {limit} personas, the most this"
                                              " deployment allows (delete one with DeletePersona)")


def list_personas(call: SignedCall, svc: Services) -> dict[str, Any]:
    return {"PersonaList": [rec.to_wire() for rec in svc.personas.list(call.public_key)]}


def delete_persona(call: SignedCall, svc: Services) -> dict[str, Any]:
    code = check_persona_code(call.body.get(PERSONA_CODE_FIELD))
    require_persona(svc, call.public_key, code)
    svc.personas.delete(call.public_key, code)
    try:
        svc.storage.delete_persona(code)
    except OSError as e:  # the record is gone: nothing can use the files; the operator sees the log
        log.error("persona %s: its files could not be deleted: %s", code, e)
    log.info("persona %s deleted by %s", code, call.public_key)
    return {PERSONA_CODE_FIELD: code}
