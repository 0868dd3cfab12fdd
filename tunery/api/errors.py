"""One mapping from errors to JSON error shapes: Vertex's {"error": {"code": HTTP status, "message", "status"}}, and
OpenAI's {"error": {"message", "type", "param", "code"}} on the OpenAI-compatible routes (`openai_path`)."""

from __future__ import annotations

import logging
import re
import secrets

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.api.wire import fields
from tunery.errors import RequestError, TuneryError
from tunery.jobs.states import IllegalTransition

STATUS = {400: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          405: "METHOD_NOT_ALLOWED", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


log = logging.getLogger("tunery")


class ApiError(Exception):
    """An error with its HTTP status; `status_name` overrides the canonical name (e.g. 400 FAILED_PRECONDITION)."""

    def __init__(self, http: int, message: str, status_name: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.http, self.message, self.status_name = http, message, status_name or STATUS.get(http, "UNKNOWN")
        self.code = code  # OpenAI's machine-readable `code` (e.g. "model_not_found"); the Vertex shape has none


def error_body(http: int, message: str, status_name: str | None = None) -> dict:
    return {"error": {"code": http, "message": message, "status": status_name or STATUS.get(http, "UNKNOWN")}}


# OpenAI's error `type` and default `code` by HTTP status (what api.openai.com answers)
OPENAI_TYPES = {401: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 500: "server_error"}
VERTEX_V1 = ("projects", "publishers")  # the /v1/... paths of the Vertex API; the rest of /v1 is OpenAI's


def openai_path(path: str) -> bool:
    """True for the OpenAI-compatible routes (and unknown paths) under /v1; Vertex's /v1/projects/... are not."""
    parts = path.split("/")
    return len(parts) > 2 and parts[1] == "v1" and parts[2] not in VERTEX_V1


def openai_body(http: int, message: str, code: str | None = None) -> dict:
    """OpenAI's error shape. `param` is the field our messages start with ("messages[0].role: expected ...")."""
    field = re.match(r"([A-Za-z_][\w.\[\]-]*): ", message)
    return {"error": {"message": message, "type": OPENAI_TYPES.get(http, "invalid_request_error"),
                      "param": field.group(1) if field else None, "code": code or OPENAI_CODES.get(http)}}


def body_for(path: str, http: int, message: str, status_name: str | None = None, code: str | None = None) -> dict:
    """The error shape the API family of `path` uses."""
    return openai_body(http, message, code) if openai_path(path) else error_body(http, message, status_name)


HTTP_OF = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
           "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429}


def from_request_error(exc: RequestError, names: dict[str, str]) -> ApiError:
    """A job service error as an API error, its field spelt as `names` (fields.VERTEX, fields.OPENAI) say."""
    return ApiError(HTTP_OF.get(exc.status, 400), fields.named(exc, names), exc.status)


def _from_tunery(exc: TuneryError, path: str = "") -> ApiError:
    """Errors a user caused are 400s (a service error says which); an illegal state change is a failed
    precondition."""
    if isinstance(exc, RequestError):
        return from_request_error(exc, fields.OPENAI if openai_path(path) else fields.vertex(exc))
    text = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return ApiError(400, text, "FAILED_PRECONDITION" if isinstance(exc, IllegalTransition) else None)


def install(app) -> None:
    """Register the handlers that turn every failure into the Vertex error shape."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return JSONResponse(body_for(request.url.path, exc.http, exc.message, exc.status_name, exc.code),
                            status_code=exc.http)

    @app.exception_handler(TuneryError)
    async def _tunery(request: Request, exc: TuneryError):
        e = _from_tunery(exc, request.url.path)
        return JSONResponse(body_for(request.url.path, e.http, e.message, e.status_name), status_code=e.http)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        skip = ("body", "query", "path", "form") if openai_path(request.url.path) else ("body",)  # OpenAI: the bare name
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in skip) or "request body"
        return JSONResponse(body_for(request.url.path, 400, f"{where}: {first.get('msg', 'invalid request')}"),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 404 and openai_path(request.url.path):
            message = f"no such route: {request.method} {request.url.path}"
        return JSONResponse(body_for(request.url.path, exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        """A bug, never a user's error: the traceback goes to the log under an incident id the answer names."""
        incident = secrets.token_hex(6)
        log.error("incident %s: %s %s failed", incident, request.method, request.url.path, exc_info=exc)
        return JSONResponse(body_for(request.url.path, 500,
                                     f"internal error (incident {incident}; the server log has its traceback)"),
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
            return await self._refuse(send, length.decode(errors="replace")[:20], scope["path"])
        seen, refused = 0, False

        async def guarded_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not refused:
                    refused = True  # answer now; the app sees the client go away and its answer is dropped
                    await self._refuse(send, f"more than {self.limit}", scope["path"])
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

    async def _refuse(self, send, found: str, path: str) -> None:
        response = JSONResponse(body_for(path, 413, f"request body: expected at most {self.limit:,} bytes, found "
                                                    f"{found} (the server's --max-request-mb)"), status_code=413)
        await response({"type": "http"}, None, send)
