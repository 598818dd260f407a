"""The FastAPI application: endpoints, admission, auth, loading and the micro-batcher."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Callable, NoReturn, Optional, Union

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from .._version import __version__
from ..io.images import ImageLoadError, load_image_bytes
from .batcher import MicroBatcher, QueueFull
from .config import ServiceOptions
from .metrics import Metrics, log_event
from .middleware import BodyLimitMiddleware, ObserveMiddleware
from .models import ClassesResponse, DetectJSON, DetectOptions, DetectResponse, to_response
from .scoring import ScoringService

Loader = Callable[[], ScoringService]


class ServerState:
    """What the endpoints share: the scoring service (once loaded), batcher, metrics, limits."""

    def __init__(self, options: ServiceOptions, token: Optional[str], log: logging.Logger,
                 on_load_error: Optional[Callable[[str], None]] = None) -> None:
        self.options = options
        self.log = log
        self.on_load_error = on_load_error
        self.service: Optional[ScoringService] = None
        self.load_error: Optional[str] = None
        self.inflight = 0
        self.decode_limiter: Optional[anyio.CapacityLimiter] = None
        self.batcher = MicroBatcher(self._run_batch, max_batch=options.max_batch,
                                    max_wait_s=options.max_wait_ms / 1000, max_queue=options.queue_size,
                                    on_batch=lambda n, s: self.metrics.observe_batch(n, s))
        self.metrics = Metrics(queue_depth=lambda: self.batcher.depth, inflight=lambda: self.inflight)
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None

    def _run_batch(self, class_name: str, payloads: list[tuple[Any, int]]):
        assert self.service is not None
        explain = max(p[1] for p in payloads)
        return self.service.score(class_name, [p[0] for p in payloads], explain)

    def token_ok(self, header: str) -> bool:
        if self._token_digest is None:
            return True
        scheme, _, value = header.partition(" ")
        given = hashlib.sha256(value.strip().encode()).digest()
        # compare digests: constant time, and the token's length does not leak either
        return hmac.compare_digest(given, self._token_digest) and scheme.lower() == "bearer"

    def loaded(self, service: ScoringService, seconds: float) -> None:
        self.service = service
        self.metrics.ready.set(1)
        log_event(self.log, "ready", classes=service.classes, seconds=round(seconds, 2), weights=service.weights,
                  method=service.method)

    def failed(self, message: str) -> None:
        self.load_error = message
        log_event(self.log, "load_failed", error=message)
        if self.on_load_error is not None:
            self.on_load_error(message)

    def load_in_background(self, source: Loader) -> None:
        """Run ``source`` in a daemon thread (stopping the server never waits for a load);
        its outcome comes back on the running event loop."""
        loop = asyncio.get_running_loop()

        def load() -> None:
            start = time.perf_counter()
            try:
                service = source()
            except Exception as exc:  # noqa: BLE001 - reported on one line; the server stops
                message = " ".join(str(exc).split()) or type(exc).__name__
                loop.call_soon_threadsafe(self.failed, message)
            else:
                loop.call_soon_threadsafe(self.loaded, service, time.perf_counter() - start)

        threading.Thread(target=load, name="alfa-ad-load", daemon=True).start()


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def _reject(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> NoReturn:
    request.state.log["error"] = detail
    raise HTTPException(status, detail, headers=headers)


def _upload_name(filename: Optional[str]) -> str:
    name = re.sub(r"[\x00-\x1f\x7f]", "", filename or "")[:80]
    return f"upload {name!r}" if name else "upload"


def _openapi_body() -> dict[str, Any]:
    form = DetectOptions.model_json_schema()
    form["properties"] = {"image": {"type": "string", "format": "binary", "description": "The image file."},
                          **form["properties"]}
    form["required"] = ["image"]
    form.pop("additionalProperties", None)
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": DetectJSON.model_json_schema()},
    }}}


def create_app(source: Union[ScoringService, Loader], options: ServiceOptions, *, token: Optional[str] = None,
               logger: Optional[logging.Logger] = None,
               on_load_error: Optional[Callable[[str], None]] = None) -> FastAPI:
    """The app for a loaded :class:`ScoringService`, or a loader run in the background at start-up
    (``/healthz`` answers at once, ``/readyz`` and ``/v1/*`` once it has loaded)."""
    log = logger or logging.getLogger("alfa_ad.serve")
    state = ServerState(options, token, log, on_load_error)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.decode_limiter = anyio.CapacityLimiter(options.decode_workers)
        await state.batcher.start()
        if isinstance(source, ScoringService):
            state.loaded(source, 0.0)
        else:
            state.load_in_background(source)
        try:
            yield
        finally:
            await state.batcher.stop()

    app = FastAPI(title="alfa-ad", version=__version__, lifespan=lifespan,
                  description="Training-free visual anomaly detection (ALFA, WinCLIP, musc against a pool): score images "
                              "over HTTP.")
    app.state.server = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(options.max_body_mb * 1_000_000))
    app.add_middleware(ObserveMiddleware, metrics=state.metrics, logger=log)
    _add_routes(app, state)
    return app


async def _authorized(request: Request) -> None:
    if not request.app.state.server.token_ok(request.headers.get("authorization", "")):
        _reject(request, 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def _ready(request: Request, state: ServerState) -> ScoringService:
    if state.service is None:
        detail = f"model failed to load: {state.load_error}" if state.load_error else "model loading"
        _reject(request, 503, detail, {"Retry-After": "5"})
    return state.service


def _add_routes(app: FastAPI, state: ServerState) -> None:
    """The endpoints, and the handler that answers an unexpected error with a bare 500."""

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        message = " ".join(str(exc).split())[:300]
        request.state.log["error"] = f"{type(exc).__name__}: {message}"
        log_event(state.log, "error", path=request.url.path, error=f"{type(exc).__name__}: {message}")
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Model and every class loaded")
    async def readyz() -> JSONResponse:
        if state.service is not None:
            return JSONResponse({"status": "ready", "classes": state.service.classes})
        body = {"status": "failed", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(_authorized)])
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/classes", response_model=ClassesResponse, dependencies=[Depends(_authorized)])
    async def classes(request: Request) -> dict[str, Any]:
        service = _ready(request, state)
        return {"classes": service.describe(), "config": service.config, "method": service.method,
                "weights": service.weights, "weights_source": service.weights_source, "version": service.version}

    @app.post("/v1/detect", response_model=DetectResponse, dependencies=[Depends(_authorized)],
              openapi_extra=_openapi_body(), summary="Score one image",
              responses={400: {"description": "Not an image, corrupt, or too many pixels"},
                         413: {"description": "Body too large, or the image costs more tiles than max_tiles"}, 415: {"description": "Wrong content type"},
                         422: {"description": "Bad field or unknown class"},
                         503: {"description": "Queue full (Retry-After) or model loading"},
                         504: {"description": "No result within the timeout"}})
    async def detect(request: Request) -> DetectResponse:
        service = _ready(request, state)
        options = state.options
        if state.inflight >= options.queue_size + options.max_batch:
            _reject(request, 503, "server busy: queue full", {"Retry-After": str(state.batcher.retry_after())})
        state.inflight += 1
        try:
            return await _detect(request, state, service)
        finally:
            state.inflight -= 1


async def _detect(request: Request, state: ServerState, service: ScoringService) -> DetectResponse:
    """One image: read and check the request, decode, score in a micro-batch, answer."""
    options = state.options
    data, fields, source = await _read_request(request)
    try:
        opts = DetectOptions.model_validate(fields)
    except ValidationError as exc:
        _reject(request, 422, _one_line(exc))
    class_name = opts.class_name
    if class_name is None and len(service.classes) == 1:
        class_name = service.classes[0]
    if class_name not in service.detectors:
        what = "class_name is required" if class_name is None else f"unknown class {class_name!r}"
        _reject(request, 422, f"{what}; served: {', '.join(service.classes)}")
    request.state.log["class_name"] = class_name
    try:
        image = await anyio.to_thread.run_sync(
            partial(load_image_bytes, data, source=source, max_pixels=options.max_pixels),
            limiter=state.decode_limiter)
    except ImageLoadError as exc:
        _reject(request, 400, str(exc))
    del data
    tiles = service.detectors[class_name].tile_count(*image.size)
    if tiles > options.max_tiles:
        _reject(request, 413, f"image {image.width}x{image.height} would cost {tiles} model passes (tiles), "
                              f"the per-request budget is max_tiles={options.max_tiles}")
    try:
        result, batch = await asyncio.wait_for(state.batcher.submit(class_name, (image, opts.explain)),
                                               options.timeout_s)
    except QueueFull as exc:
        _reject(request, 503, "server busy: queue full", {"Retry-After": str(exc.retry_after)})
    except asyncio.TimeoutError:
        _reject(request, 504, f"no result within {options.timeout_s:g} s")
    request.state.log["batch"] = batch.size
    return await anyio.to_thread.run_sync(partial(
        to_response, result, class_name, opts, service.thresholds(class_name), service.weights_source,
        service.version, batch, options.map_size, service.score_note(class_name)), limiter=state.decode_limiter)


async def _read_request(request: Request) -> tuple[bytes, dict[str, Any], str]:
    """``(image bytes, the other fields, a name for the image)`` of a multipart or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8, max_part_size=64 * 1024) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                _reject(request, 422, "image: a file field named 'image' is required")
            fields = {k: v for k, v in form.multi_items() if k != "image"}
            if any(not isinstance(v, str) for v in fields.values()):
                _reject(request, 422, "only one file field, 'image', is accepted")
            return await upload.read(), fields, _upload_name(upload.filename)
    if ctype == "application/json":
        try:
            body = DetectJSON.model_validate_json(await request.body())
        except ValidationError as exc:
            _reject(request, 422, _one_line(exc))
        text = body.image.split(",", 1)[1] if body.image.startswith("data:") else body.image
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            _reject(request, 400, "image: not valid base64")
        return data, body.model_dump(exclude={"image"}), "upload (JSON image)"
    _reject(request, 415, "send multipart/form-data (file field 'image', field 'class_name') "
                          "or application/json ({'image': base64, 'class_name': ...})")
