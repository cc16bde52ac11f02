"""FastAPI dependencies: the body (size-limited, parsed) and the signature check."""
from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from app.actions import ACTIONS
from app.actions.base import SignedCall
from app.contract.codes import RetCode
from app.contract.limits import MAX_BODY_DEPTH
from app.errors import ApiError
from app.services import Services, get_services
from app.signature import verify

ServicesDep = Annotated[Services, Depends(get_services)]

def _too_deep(body: dict[str, Any], limit: int) -> bool:
    """Whether ``body`` nests arrays/objects more than ``limit`` levels deep (iterative: no recursion)."""
    level: list[Any] = [body]
    for _ in range(limit):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


async def read_body(request: Request, svc: ServicesDep) -> dict[str, Any]:
    """The JSON object of the request; the body size limit (ATELIER_MAX_BODY_BYTES) lives here."""
    limit = svc.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError.param("body", f"larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError.param("body", f"larger than {limit} bytes")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError.param("body", "not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError.param("body", "must be a JSON object")
    if _too_deep(body, MAX_BODY_DEPTH):
        raise ApiError.param("body", f"nested more than {MAX_BODY_DEPTH} levels deep")
    request.state.body = body  # lets the error handler echo Action and request_uuid
    return body


async def signed_call(body: Annotated[dict[str, Any], Depends(read_body)], svc: ServicesDep) -> SignedCall:
    """Action present and known, then PublicKey/Signature present, the key known, the signature valid."""
    action = body.get("Action")
    if action is None or action == "":
        raise ApiError(RetCode.MISSING_ACTION)
    if not isinstance(action, str) or action not in ACTIONS:
        raise ApiError.unknown_action(action)
    public_key, signature = body.get("PublicKey"), body.get("Signature")
    if not isinstance(public_key, str) or not public_key or not isinstance(signature, str) or not signature:
        raise ApiError(RetCode.MISSING_SIGNATURE)
    private_key = svc.keys.private_key(public_key)
    if private_key is None:
        raise ApiError(RetCode.UNKNOWN_KEY)
    if not verify(body, private_key):
        raise ApiError(RetCode.BAD_SIGNATURE)
    return SignedCall(action, public_key, private_key, body)
