"""The web console at /console: create, watch, compare and clean up tuning jobs in a browser.

Server-rendered pages over the same library calls as the REST API (the store, the registry, the validator and
the REST routes' own functions); a little vanilla JavaScript polls for progress and streams answers. `mount`
adds it to an app; `admits` and `refusal` are what the app's API-key check asks about /console paths."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from tunery.console import auth
from tunery.console.auth import admits, refusal
from tunery.console.common import HERE, USER_ERRORS, message_of, render, svc

__all__ = ["mount", "admits", "refusal"]
router = APIRouter()


@router.get("/console/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", {"title": "Sign in", "error": None})


@router.post("/console/login")
def login(request: Request, key: str = Form(""), csrf_token: str | None = Form(None, alias="csrf")):
    """The API key, once, in a form body; a new session id (signed in) goes back in an HttpOnly cookie."""
    store = auth.sessions(request)
    old_sid = request.cookies.get(auth.COOKIE)
    try:
        auth.check(request, store.get(old_sid), csrf_token)
    except USER_ERRORS as exc:
        status, text = message_of(exc)
        return render(request, "login.html", {"title": "Sign in", "error": text}, status)
    api_key = svc(request).settings.api_key
    if api_key and not auth.key_matches(key, api_key):
        return render(request, "login.html", {"title": "Sign in", "error": "wrong API key"}, 401)
    store.drop(old_sid)
    sid, session = store.new(signed_in=True, client=request.client.host if request.client else "")
    session.flash = "Signed in."
    response = RedirectResponse("/console", status_code=303)
    auth.set_cookie(request, response, sid)
    return response


@router.post("/console/logout")
def logout(request: Request, csrf_token: str | None = Form(None, alias="csrf")):
    store = auth.sessions(request)
    try:
        auth.check(request, store.get(request.cookies.get(auth.COOKIE)), csrf_token)
    except USER_ERRORS as exc:
        status, text = message_of(exc)
        return render(request, "error.html", {"title": "Something went wrong", "error": text}, status)
    store.drop(request.cookies.get(auth.COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path=auth.PREFIX)
    return response


def mount(app: FastAPI) -> None:
    """Add the console's pages, its static files and its session store to the app."""
    from tunery.console import create, jobs, models, playground

    app.state.console_sessions = auth.Sessions()
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for r in (router, jobs.router, create.router, models.router, playground.router):
        app.include_router(r, include_in_schema=False)
