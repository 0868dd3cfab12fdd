"""Console sessions: an HttpOnly, SameSite=Strict cookie naming a server-side session that holds a CSRF token and,
when the server has an API key, whether the key was given on the sign-in page. The key itself is never stored
in the cookie, a URL or a log.

Every state-changing request carries the session's CSRF token (a form field or the X-CSRF-Token header) and an
Origin (or Referer) equal to this server's own origin."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlparse

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

COOKIE = "tunery_console"
PREFIX = "/console"
PUBLIC = ("/", PREFIX + "/login")  # reachable without the key: the redirect and the sign-in page
MAX_SESSIONS = 10_000  # oldest sessions are dropped beyond this


class CsrfError(Exception):
    """A state-changing console request without this session's token or from another origin."""


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    signed_in: bool = False
    flash: str | None = None  # a message shown once on the next page
    created: float = field(default_factory=time.time)


class Sessions:
    """Sessions by id, in memory: a restarted server asks for the key again."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()  # pages are served from a thread pool

    def get(self, sid: str | None) -> Session | None:
        with self._lock:
            return self._by_id.get(sid) if sid else None

    def new(self, signed_in: bool = False) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = session = Session(signed_in=signed_in)
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return sid, session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def sessions(request: Request) -> Sessions:
    return request.app.state.console_sessions


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def admits(request: Request) -> bool:
    """For the server's API-key check: the console's public pages, its static files, and /console paths of a
    signed-in session (the cookie is accepted nowhere else)."""
    path = request.url.path
    if path in PUBLIC or path.startswith(PREFIX + "/static/"):
        return True
    session = sessions(request).get(request.cookies.get(COOKIE))
    return is_console(path) and session is not None and session.signed_in


def refusal(request: Request) -> Response | None:
    """What a console request without a signed-in session gets: pages redirect to the sign-in page."""
    if not is_console(request.url.path):
        return None
    if request.method == "GET" and not request.url.path.startswith(PREFIX + "/api/"):
        return RedirectResponse(PREFIX + "/login", status_code=303)
    return Response("sign in at /console/login first", status_code=401, media_type="text/plain")


def current(request: Request) -> tuple[str, Session, bool]:
    """This request's session id and session; a new anonymous one (True) when it has none yet."""
    store = sessions(request)
    sid = request.cookies.get(COOKIE)
    session = store.get(sid)
    if session is None:
        sid, session = store.new()
        return sid, session, True
    return sid, session, False  # type: ignore[return-value]


def set_cookie(request: Request, response: Response, sid: str) -> None:
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https")


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def check(request: Request, session: Session | None, token: str | None) -> None:
    """Raise CsrfError unless the token is this session's and the request comes from this server's pages."""
    origin = request.headers.get("origin")
    if origin is None and (referer := request.headers.get("referer")):
        parsed = urlparse(referer)
        origin = f"{parsed.scheme}://{parsed.netloc}"
    if origin != own_origin(request):
        raise CsrfError(f"refused: this form was sent from {origin or 'an unknown origin'}, not from "
                        f"{own_origin(request)}; open the console page and try again")
    if session is None or not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise CsrfError("refused: the form's security token is missing or out of date (the session may have "
                        "expired); reload the page and try again")


def key_matches(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())
