"""Pure ASGI middleware: request-body limit, and the access log plus request metrics."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException

from .metrics import Metrics, log_event


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


async def _send_json(send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from Content-Length, else while it streams in."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if declared > self.max_bytes:
                scope.setdefault("state", {}).setdefault("log", {})["error"] = f"body of {declared} bytes over the limit"
                await _send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})
                return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_json(send, 413, {"detail": exc.detail})


class ObserveMiddleware:
    """One JSON access-log line and the request metrics per HTTP request.

    Logged: method, route, status, latency, client address, body size, and what the
    handler put in ``request.state.log`` (class, batch size, one-line error).  Never
    headers (so never the token), never bodies (so never image bytes).
    """

    def __init__(self, app, metrics: Metrics, logger: logging.Logger) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})
        state["log"] = {}

        async def tracking_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            seconds = time.perf_counter() - start
            path = _route_path(scope)
            self.metrics.observe_request(path, status, seconds)
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            client = scope.get("client")
            log_event(self.logger, "access", method=scope.get("method"), path=path, status=status,
                      ms=round(seconds * 1000, 2), client=client[0] if client else None,
                      bytes_in=int(length) if length.isdigit() else None, **state.get("log", {}))


def _route_path(scope) -> str:
    """The matched route's template (bounded label set); unmatched paths are "other"."""
    route = scope.get("route")
    if route is not None:
        return route.path
    app = scope.get("app")
    raw = scope.get("path", "")
    if app is not None and any(getattr(r, "path", None) == raw for r in app.routes):
        return raw  # docs and openapi.json (plain Starlette routes)
    return "other"
