"""Endpoints and long-running operations on the wire."""

from __future__ import annotations

from typing import Any

from tunery.api.errors import ApiError
from tunery.jobs.store import Endpoint, Model, new_id

EMPTY = "type.googleapis.com/google.protobuf.Empty"
UNDEPLOY_RESPONSE = "type.googleapis.com/google.cloud.aiplatform.v1.UndeployModelResponse"
EXPORT_RESPONSE = "type.googleapis.com/google.cloud.aiplatform.v1.ExportModelResponse"
EXPORT_METADATA = "type.googleapis.com/google.cloud.aiplatform.v1.ExportModelOperationMetadata"


def endpoint_json(ep: Endpoint, model: Model) -> dict:
    """Vertex's Endpoint: one deployed model (the tuned model's final adapter or one checkpoint) taking all traffic,
    or none once undeployed."""
    label = model.display_name or f"tuned-{model.id}"
    out: dict[str, Any] = {"name": ep.name, "displayName": label + (f" checkpoint {ep.checkpoint_id}" if ep.checkpoint_id else ""),
                           "createTime": ep.create_time, "updateTime": model.update_time,
                           "deployedModels": [], "trafficSplit": {}}
    if ep.deployed:
        out["deployedModels"] = [{"id": model.id, "model": model.name, "modelVersionId": "1", "displayName": label,
                                  "createTime": ep.create_time, "checkpointId": ep.checkpoint_id}]
        out["trafficSplit"] = {model.id: 100}
    return out


def deployed_model_id(body: Any, ep: Endpoint, model: Model) -> str:
    """The `deployedModelId` of an undeployModel request, checked against what the endpoint serves."""
    given = body.get("deployedModelId", body.get("deployed_model_id")) if isinstance(body, dict) else None
    if not isinstance(given, str) or not given:
        raise ApiError(400, f"deployedModelId: required, a string (this endpoint's is {model.id!r})")
    if not ep.deployed or given != model.id:
        raise ApiError(404, f"deployedModelId: endpoint {ep.id} has no deployed model {given!r:.40}"
                            + (f" (it serves {model.id!r})" if ep.deployed else " (it serves none)"))
    return given


def done_operation(place: str, response_type: str) -> dict:
    """A finished google.longrunning.Operation (tunery's deletes and undeploys complete before they answer)."""
    return {"name": f"{place}/operations/{new_id()}", "done": True, "response": {"@type": response_type}}
