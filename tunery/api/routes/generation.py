"""generateContent, streamGenerateContent (SSE), countTokens and computeTokens on tuned-model endpoints, tuned
models and base models by publisher name; models.get/list for base models."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Body, Request

from tunery import models
from tunery.api.serving import call
from tunery.api.services import Svc

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"


def _sse(request: Request) -> bool:
    return request.query_params.get("alt") == "sse"


# async: each call runs on the generation gate's threads (tunery/api/serving.py), never the other routes' threads

@router.post(PLACE + "/endpoints/{endpoint_id}:{method}")
async def endpoint_method(project: str, location: str, endpoint_id: str, method: str, svc: Svc, request: Request,
                          body: Any = Body(...)):
    target = partial(svc.jobs.endpoint_target, endpoint_id, project, location)
    return await svc.generation.run(partial(call, svc, method, target, body, sse=_sse(request)))


@router.post(PLACE + "/models/{model_id}:{method}")
async def tuned_model_method(project: str, location: str, model_id: str, method: str, svc: Svc, request: Request,
                             body: Any = Body(...)):
    """A tuned model by name serves its final adapter whether or not an endpoint is deployed."""
    target = partial(svc.jobs.model_target, model_id, project, location)
    return await svc.generation.run(partial(call, svc, method, target, body, sse=_sse(request)))


@router.post(PLACE + "/publishers/{publisher}/models/{model}:{method}")
async def publisher_model_method(project: str, location: str, publisher: str, model: str, method: str, svc: Svc,
                                 request: Request, body: Any = Body(...)):
    target = partial(svc.jobs.base_target, model)
    return await svc.generation.run(partial(call, svc, method, target, body, sse=_sse(request)))


def _base_model_json(name: str, spec: models.BaseModelSpec) -> dict:
    return {"name": f"publishers/google/models/{name}", "versionId": "001", "displayName": name,
            "description": f"served by tunery as {spec.name}", "labels": {"tunery-base-model": spec.name}}


@router.get("/publishers/{publisher}/models/{model}")
@router.get(PLACE + "/publishers/{publisher}/models/{model}")
def get_base_model(publisher: str, model: str, svc: Svc, project: str = "", location: str = "") -> dict:
    return _base_model_json(model, svc.jobs.base_target(model).base)


@router.get("/publishers/{publisher}/models")
@router.get(PLACE + "/publishers/{publisher}/models")
def list_base_models(publisher: str, project: str = "", location: str = "") -> dict:
    return {"publisherModels": [_base_model_json(name, spec) for name, spec in models.REGISTRY.items()]}
