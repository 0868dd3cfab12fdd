"""Console pages for tuned models and their endpoints: list, details, undeploy or delete an endpoint, and delete a
model, each after a confirmation that says what goes. Each action goes through the REST route's own function."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunery.api.errors import ApiError
from tunery.console.common import csrf, page_errors, render, svc
from tunery.jobs import states
from tunery.jobs.store import Endpoint, Model

router = APIRouter()


def all_models(request: Request) -> list[Model]:
    """Every tuned model, newest first (the models of every job that still has one)."""
    store = svc(request).store
    found = [store.get_model(j.model_id) for j in store.jobs_in(states.SUCCEEDED)[::-1] if j.model_id]
    return [m for m in found if m is not None]


def model_or_error(request: Request, model_id: str) -> Model:
    model = svc(request).store.get_model(model_id)
    if model is None:
        raise ApiError(404, f"tuned model {model_id!r} not found (it may have been deleted)")
    return model


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _details(request: Request, model: Model) -> dict:
    endpoints = svc(request).store.endpoints_of(model.id)
    adapter = Path(model.adapter_dir)
    checkpoints_dir = adapter.parent / "checkpoints"
    return {"model": model, "endpoints": endpoints, "adapter_dir": str(adapter), "adapter_bytes": _size(adapter),
            "checkpoints_dir": str(checkpoints_dir), "checkpoints_bytes": _size(checkpoints_dir)}


@router.get("/console/models")
@page_errors
def models_page(request: Request) -> HTMLResponse:
    rows = [{"model": m, "endpoints": svc(request).store.endpoints_of(m.id)} for m in all_models(request)]
    return render(request, "models.html", {"title": "Models and endpoints", "rows": rows})


@router.get("/console/models/{model_id}")
@page_errors
def model_page(request: Request, model_id: str) -> HTMLResponse:
    model = model_or_error(request, model_id)
    return render(request, "model.html", {"title": f"Model {model.display_name or model.id}",
                                          **_details(request, model), "confirm": False})


@router.get("/console/models/{model_id}/delete")
@page_errors
def confirm_delete(request: Request, model_id: str) -> HTMLResponse:
    model = model_or_error(request, model_id)
    return render(request, "model.html", {"title": f"Delete model {model.display_name or model.id}?",
                                          **_details(request, model), "confirm": True})


@router.post("/console/models/{model_id}/delete")
@page_errors
def delete(request: Request, model_id: str, csrf_token: str | None = Form(None, alias="csrf")) -> RedirectResponse:
    session = csrf(request, csrf_token)
    model = model_or_error(request, model_id)
    svc(request).jobs.delete_model(model.id)
    session.flash = f"Deleted model {model.display_name or model.id}, its endpoints and its files."
    return RedirectResponse("/console/models", status_code=303)


def _endpoint(request: Request, endpoint_id: str) -> tuple[Endpoint, Model]:
    ep = svc(request).store.get_endpoint(endpoint_id)
    model = svc(request).store.get_model(ep.model_id) if ep else None
    if ep is None or model is None:
        raise ApiError(404, f"endpoint {endpoint_id!r} not found (it may have been deleted)")
    return ep, model


ENDPOINT_ACTIONS = {"undeploy": "Undeploy", "delete": "Delete"}


@router.get("/console/endpoints/{endpoint_id}/{action}")
@page_errors
def confirm_endpoint_action(request: Request, endpoint_id: str, action: str) -> HTMLResponse:
    if action not in ENDPOINT_ACTIONS:
        raise ApiError(404, f"no such endpoint action {action!r}: expected undeploy or delete")
    ep, model = _endpoint(request, endpoint_id)
    return render(request, "endpoint_confirm.html", {"title": f"{ENDPOINT_ACTIONS[action]} endpoint {ep.id}?",
                                                     "ep": ep, "model": model, "action": action})


@router.post("/console/endpoints/{endpoint_id}/{action}")
@page_errors
def endpoint_action(request: Request, endpoint_id: str, action: str,
                    csrf_token: str | None = Form(None, alias="csrf")) -> RedirectResponse:
    """Undeploy (the endpoint stays, serving nothing) or delete (undeploying first, as endpoint.delete(force=True)
    does); the tuned model stays either way."""
    session = csrf(request, csrf_token)
    if action not in ENDPOINT_ACTIONS:
        raise ApiError(404, f"no such endpoint action {action!r}: expected undeploy or delete")
    ep, model = _endpoint(request, endpoint_id)
    if ep.deployed:
        svc(request).jobs.undeploy_endpoint(ep.id)
    if action == "delete":
        svc(request).jobs.delete_endpoint(ep.id)
    session.flash = f"{'Undeployed' if action == 'undeploy' else 'Deleted'} endpoint {ep.id}; the tuned model stays."
    return RedirectResponse(f"/console/models/{model.id}", status_code=303)
