"""The gateway: ``POST /`` dispatches PICPIK actions; every API-level outcome is HTTP 200 with a
RetCode. Also ``GET /livez``, ``GET /healthz``, ``GET /readyz``, ``GET /queue``, ``GET /metrics`` (``app/metrics.py``),
``GET /results/{TaskUID}/{name}`` (signed), and the browser playground: static files under
``/playground/`` (``app/playground/``, served with a strict Content-Security-Policy), where ``GET /`` leads."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.actions import ACTIONS
from app.actions.base import SignedCall
from app.background import start_loops
from app.contract.codes import DEFAULT_MESSAGES, STORAGE_UNAVAILABLE_MESSAGE, RetCode
from app.contract.registry import UnknownModel
from app.contract.storage import RESULTS
from app.deps import ServicesDep, signed_call
from app.errors import ApiError
from app.metrics import TimedApi, count_answer, live_workers, queue_state
from app.resultlinks import check_link
from app.services import ConfigError, get_services

log = logging.getLogger("atelier.gateway")


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Before serving: a key file or models config that cannot be used stops the gateway here
    # (ConfigError, reported by StartupRefusal), not as a 500 on every request.
    svc = get_services()
    await run_in_threadpool(svc.check)
    loops = start_loops(svc)  # retention sweep, recovery of tasks whose worker died (app/background.py)
    yield
    for loop in loops:
        loop.stop()


class StartupRefusal:
    """ASGI middleware: a :class:`ConfigError` raised by the lifespan reaches the server as a startup
    failure whose message is the error's text alone, so uvicorn prints it once (no traceback) and
    exits non-zero. Other lifespan failures are passed on unchanged; requests pass straight through."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[dict[str, Any]] = []  # Starlette's startup failure (a traceback), sent or replaced below

        async def send_or_hold(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_or_hold)
        except ConfigError as e:
            await send({"type": "lifespan.startup.failed", "message": f"cannot start: {e}"})
            raise
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)


app = FastAPI(title="Atelier", summary="PICPIK-compatible mannequin-to-model API", lifespan=lifespan)
app.add_middleware(TimedApi)
app.add_middleware(StartupRefusal)


def answer(request: Request, code: int, message: str, **fields: Any) -> Response:
    """The answer to ``POST /``, counted in the metrics; Action and request_uuid echo the body when it was read."""
    body = getattr(request.state, "body", None) or {}
    action = body.get("Action") if isinstance(body.get("Action"), str) else ""
    ruuid = body.get("request_uuid") if isinstance(body.get("request_uuid"), str) else ""
    count_answer(request, action if code != RetCode.UNKNOWN_ACTION else "?", code)
    return Response(orjson.dumps({"Action": action, "RetCode": int(code), "Message": message,
                                  "request_uuid": ruuid, **fields}), media_type="application/json")


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> Response:
    return answer(request, exc.ret_code, exc.message)


@app.exception_handler(UnknownModel)
async def _unknown_model(request: Request, exc: UnknownModel) -> Response:
    """A ModelCode that names no model of the kinds asked (``Registry.require``): 240 naming it."""
    return answer(request, RetCode.UNKNOWN_MODEL, ApiError.model(exc.model_code).message)


@app.exception_handler(redis.RedisError)
async def _redis_error(request: Request, exc: redis.RedisError) -> Response:
    log.warning("Redis unavailable: %s", exc)
    return answer(request, RetCode.UNAVAILABLE, DEFAULT_MESSAGES[RetCode.UNAVAILABLE])


@app.exception_handler(Exception)
async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("internal error")
    return answer(request, RetCode.INTERNAL, DEFAULT_MESSAGES[RetCode.INTERNAL])


@app.post("/")
async def api(request: Request, call: Annotated[SignedCall, Depends(signed_call)], svc: ServicesDep) -> Response:
    result = await run_in_threadpool(ACTIONS[call.action], call, svc)
    return answer(request, RetCode.OK, "", **result)


#: The playground's files (HTML, CSS, ES modules; no build step) and the headers they are served with: the
#: page holds a PrivateKey, so it runs only its own scripts, talks only to this origin, and is never framed.
PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground"
PLAYGROUND_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:;"
                               " connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none';"
                               " frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class PlaygroundFiles(StaticFiles):
    """The playground's static files, each response with :data:`PLAYGROUND_HEADERS`."""

    async def get_response(self, path: str, scope: dict[str, Any]) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PLAYGROUND_HEADERS)
        return response


app.mount("/playground", PlaygroundFiles(directory=PLAYGROUND_DIR, html=True), name="playground")


@app.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """A browser opening the service's address gets the playground (the API itself is ``POST /``)."""
    return RedirectResponse("/playground/", status_code=307)


@app.get("/livez")
async def livez() -> JSONResponse:
    """200 while the process serves requests, whatever Redis does: a liveness probe (a restart mends a stuck
    process, not an unreachable Redis, which ``/healthz`` reports)."""
    return JSONResponse({"status": "alive"})


@app.get("/healthz")
async def healthz(svc: ServicesDep) -> JSONResponse:
    try:
        await run_in_threadpool(svc.tasks.r.ping)
    except redis.RedisError as e:
        return JSONResponse({"status": "unavailable", "broker": str(e)}, status_code=503)
    return JSONResponse({"status": "ok"})


@app.get("/readyz")
async def readyz(svc: ServicesDep) -> JSONResponse:
    """200 when the broker answers and at least one live worker consumes the gateway's queue; else 503."""
    queue = svc.settings.queue
    try:
        workers = await run_in_threadpool(live_workers, svc.tasks.r, queue)
    except redis.RedisError as e:
        return JSONResponse({"status": "unavailable", "reason": f"the broker does not answer: {e}"}, status_code=503)
    if workers == 0:
        return JSONResponse({"status": "not ready", "workers": 0,
                             "reason": f"no live worker consumes the queue {queue}"}, status_code=503)
    return JSONResponse({"status": "ready", "workers": workers})


@app.get("/queue")
async def queue_now(svc: ServicesDep) -> JSONResponse:
    """What an autoscaler reads (KEDA's metrics-api scaler, deploy/kubernetes/autoscaling.yaml): the jobs waiting for a
    worker of the gateway's queue, in every list they can wait in (``app.metrics.queue_depth``), and its live
    workers; 503 when the broker does not answer. Two Redis round trips."""
    queue = svc.settings.queue
    try:
        waiting, workers = await run_in_threadpool(queue_state, svc.tasks.r, queue)
    except redis.RedisError as e:
        return JSONResponse({"queue": queue, "status": "unavailable", "reason": f"the broker does not answer: {e}"},
                            status_code=503)
    return JSONResponse({"queue": queue, "waiting": waiting, "workers": workers})


@app.get("/metrics")
async def metrics() -> PlainTextResponse:
    # in a thread: the collectors read Redis (app/metrics.py)
    return PlainTextResponse(await run_in_threadpool(generate_latest), media_type=CONTENT_TYPE_LATEST)


@app.get("/results/{uid}/{name}")
async def result_file(uid: str, name: str, exp: int, sig: str, svc: ServicesDep):
    not_found = JSONResponse({"detail": "not found or link expired"}, status_code=404)
    if not (RESULTS.is_group(uid) and RESULTS.is_name(name)):
        return not_found  # no result can have this address: no lookup

    def read() -> bytes | None:
        """The result, if the link is valid: in one thread hop with the task's lookup, and in one read (a result
        is a few hundred KB: a streamed file costs a thread hop per 64 KB chunk)."""
        rec = svc.tasks.get(uid)
        key = svc.keys.private_key(rec.owner) if rec else None
        served = (*rec.images, rec.clothes_mask) if rec else ()  # its images, and the clothes mask it made
        if rec is None or key is None or name not in served or not check_link(key, uid, name, exp, sig):
            return None
        return svc.storage.read_result(uid, name)  # None once swept

    try:
        data = await run_in_threadpool(read)
    except OSError as e:  # the data dir or bucket cannot be read now: the link stays valid, try again
        log.error("storage unavailable: %s", e)
        return JSONResponse({"detail": STORAGE_UNAVAILABLE_MESSAGE}, status_code=503)
    return not_found if data is None else Response(data, media_type="image/png")
