"""One mapping from errors to Vertex's JSON error shape: {"error": {"code": HTTP status, "message", "status"}}."""

from __future__ import annotations

import logging
import secrets

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.errors import TuneryError
from tunery.jobs.states import IllegalTransition

STATUS = {400: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          405: "METHOD_NOT_ALLOWED", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


log = logging.getLogger("tunery")


class ApiError(Exception):
    """An error with its HTTP status; `status_name` overrides the canonical name (e.g. 400 FAILED_PRECONDITION)."""

    def __init__(self, http: int, message: str, status_name: str | None = None) -> None:
        super().__init__(message)
        self.http, self.message, self.status_name = http, message, status_name or STATUS.get(http, "UNKNOWN")


def error_body(http: int, message: str, status_name: str | None = None) -> dict:
    return {"error": {"code": http, "message": message, "status": status_name or STATUS.get(http, "UNKNOWN")}}


def _from_tunery(exc: TuneryError) -> ApiError:
    """Errors a user caused are 400s; an illegal state change is a failed precondition."""
    text = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return ApiError(400, text, "FAILED_PRECONDITION" if isinstance(exc, IllegalTransition) else None)


def install(app) -> None:
    """Register the handlers that turn every failure into the Vertex error shape."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return JSONResponse(error_body(exc.http, exc.message, exc.status_name), status_code=exc.http)

    @app.exception_handler(TuneryError)
    async def _tunery(_: Request, exc: TuneryError):
        e = _from_tunery(exc)
        return JSONResponse(error_body(e.http, e.message, e.status_name), status_code=e.http)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(error_body(400, f"{where}: {first.get('msg', 'invalid request')}"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        """A bug, never a user's error: the traceback goes to the log under an incident id the answer names."""
        incident = secrets.token_hex(6)
        log.error("incident %s: %s %s failed", incident, request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, f"internal error (incident {incident}; the server log has its traceback)"),
                            status_code=500)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 in the Vertex error shape, from Content-Length
    before anything is read, or as soon as a chunked body passes the limit (nothing larger is ever buffered)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send, length.decode(errors="replace")[:20])
        seen, refused = 0, False

        async def guarded_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not refused:
                    refused = True  # answer now; the app sees the client go away and its answer is dropped
                    await self._refuse(send, f"more than {self.limit}")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send, found: str) -> None:
        response = JSONResponse(error_body(413, f"request body: expected at most {self.limit:,} bytes, found {found} "
                                                "(the server's --max-request-mb)"), status_code=413)
        await response({"type": "http"}, None, send)
