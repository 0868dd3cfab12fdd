"""Endpoints (list, get, undeployModel, delete) and the long-running operations those answer with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from tunery.api.errors import ApiError
from tunery.api.services import Services, Svc
from tunery.api.wire import endpoints as we
from tunery.api.wire.common import page

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"


def _operation(svc: Services, project: str, location: str, response_type: str) -> dict:
    op = we.done_operation(f"projects/{project}/locations/{location}", response_type)
    svc.store.add_operation(op["name"], op)
    return op


@router.get(PLACE + "/endpoints")
def list_endpoints(project: str, location: str, svc: Svc, pageSize: int | None = None, pageToken: str | None = None,
                   filter: str | None = None) -> dict:
    size, offset = page(pageSize, pageToken)
    found, nxt = svc.store.list_endpoints(project, location, size, offset)
    out: dict = {"endpoints": [we.endpoint_json(ep, svc.store.get_model(ep.model_id)) for ep in found]}
    if nxt is not None:
        out["nextPageToken"] = str(nxt)
    return out


@router.get(PLACE + "/endpoints/{endpoint_id}")
def get_endpoint(project: str, location: str, endpoint_id: str, svc: Svc) -> dict:
    return we.endpoint_json(*svc.jobs.endpoint(endpoint_id, project, location))


@router.post(PLACE + "/endpoints/{endpoint_id}:undeployModel")
def undeploy_model(project: str, location: str, endpoint_id: str, svc: Svc, body: Any = Body(...)) -> dict:
    """The endpoint stays and serves nothing; the tuned model stays (callable by model name)."""
    ep, model = svc.jobs.endpoint(endpoint_id, project, location)
    we.deployed_model_id(body, ep, model)
    svc.jobs.undeploy_endpoint(ep.id)
    return _operation(svc, project, location, we.UNDEPLOY_RESPONSE)


@router.delete(PLACE + "/endpoints/{endpoint_id}")
def delete_endpoint(project: str, location: str, endpoint_id: str, svc: Svc) -> dict:
    """Vertex refuses to delete an endpoint with a deployed model (undeploy first, as `delete(force=True)` does)."""
    svc.jobs.delete_endpoint(endpoint_id, project, location)
    return _operation(svc, project, location, we.EMPTY)


@router.get(PLACE + "/operations/{operation_id}")
def get_operation(project: str, location: str, operation_id: str, svc: Svc) -> dict:
    name = f"projects/{project}/locations/{location}/operations/{operation_id}"
    op = svc.store.get_operation(name)
    if op is None:
        raise ApiError(404, f"operation {name:.200} not found")
    return op


ui_router = APIRouter()  # the vertexai SDK polls unfinished operations at /ui/{operation name}
ui_router.add_api_route("/ui" + PLACE + "/operations/{operation_id}", get_operation, methods=["GET"])
