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
MAX_SESSIONS_PER_CLIENT = 32  # a client's oldest sessions are dropped beyond this: one cannot push others' out
IDLE_SECONDS = 12 * 3600  # a session unused this long is gone (sign in again)
MAX_AGE_SECONDS = 7 * 24 * 3600  # and any session after this long


class CsrfError(Exception):
    """A state-changing console request without this session's token or from another origin."""


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    signed_in: bool = False
    flash: str | None = None  # a message shown once on the next page
    created: float = field(default_factory=time.monotonic)
    used: float = field(default_factory=time.monotonic)
    client: str = ""  # the address it was made for (sessions are capped per client)


class Sessions:
    """Sessions by id, in memory: a restarted server asks for the key again. A session expires after IDLE_SECONDS
    unused and MAX_AGE_SECONDS in all; a client holds at most MAX_SESSIONS_PER_CLIENT (its oldest go first), so
    one client making sessions in a loop cannot sign everyone else out."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_age_seconds: float = MAX_AGE_SECONDS,
                 per_client: int = MAX_SESSIONS_PER_CLIENT) -> None:
        self.idle_seconds, self.max_age_seconds, self.per_client = idle_seconds, max_age_seconds, per_client
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()  # pages are served from a thread pool

    def get(self, sid: str | None) -> Session | None:
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(sid) if sid else None
            if session is None:
                return None
            if now - session.used > self.idle_seconds or now - session.created > self.max_age_seconds:
                self._remove(sid)  # type: ignore[arg-type]
                return None
            session.used = now
            return session

    def new(self, signed_in: bool = False, client: str = "") -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = session = Session(signed_in=signed_in, client=client)
            mine = self._by_client.setdefault(client, OrderedDict())
            mine[sid] = None
            while len(mine) > self.per_client:
                self._remove(next(iter(mine)))
            while len(self._by_id) > MAX_SESSIONS:
                self._remove(next(iter(self._by_id)))
        return sid, session

    def _remove(self, sid: str) -> None:
        session = self._by_id.pop(sid, None)
        if session is not None:
            mine = self._by_client.get(session.client)
            if mine is not None:
                mine.pop(sid, None)
                if not mine:
                    del self._by_client[session.client]

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._remove(sid or "")

    def __len__(self) -> int:
        return len(self._by_id)


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
        sid, session = store.new(client=request.client.host if request.client else "")
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
