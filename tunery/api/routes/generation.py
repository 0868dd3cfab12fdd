"""generateContent, streamGenerateContent (SSE), countTokens and computeTokens on tuned-model endpoints, tuned
models and base models by publisher name; models.get/list for base models."""

from __future__ import annotations

import base64
import json
import secrets

from fastapi import APIRouter, Body
from fastapi.responses import StreamingResponse

from tunery import models
from tunery.api import wire
from tunery.api.app import Services, Svc
from tunery.api.errors import ApiError, error_body
from tunery.errors import ModelNotFoundError, TuneryError
from tunery.serve.generate import Generation

router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "computeTokens")


def _endpoint_target(svc: Services, endpoint_id: str) -> tuple[models.BaseModelSpec, str, str]:
    ep = svc.store.get_endpoint(endpoint_id)
    model = svc.store.get_model(ep.model_id) if ep else None
    if model is None:
        raise ApiError(404, f"endpoint {endpoint_id} not found (its model may have been deleted)")
    paths = {c["checkpointId"]: c["path"] for c in model.checkpoints}
    adapter = paths[ep.checkpoint_id] if ep.checkpoint_id else model.adapter_dir
    return models.resolve(model.base_model), adapter, f"{model.name}@1"


def _base_target(name: str) -> tuple[models.BaseModelSpec, None, str]:
    try:
        spec = models.resolve(name)
    except ModelNotFoundError as exc:
        raise ApiError(404, f"publisher model {name} not found: {exc.message}") from exc
    return spec, None, spec.name


def _dispatch(svc: Services, method: str, target, body: dict):
    spec, adapter, version = target
    if method not in METHODS:
        raise ApiError(404, f"unknown method :{method}; expected one of {', '.join(METHODS)}")
    template = models.load_template(spec)
    if method in ("countTokens", "computeTokens"):
        prompt, _, _ = wire.parse_generate({**body, "contents": body.get("contents") or []})
        ids = template.render_prompt(prompt.turns, prompt.system)
        if method == "countTokens":
            return {"totalTokens": len(ids)}
        return {"tokensInfo": [{"role": "user", "tokenIds": [str(i) for i in ids],
                                "tokens": [base64.b64encode(template.decode([i]).encode()).decode() for i in ids]}]}
    prompt, config, n = wire.parse_generate(body)
    if method == "generateContent":
        gens = svc.registry.generate(spec, adapter, [prompt] * n, config)
        return wire.response_json(gens, version)
    return StreamingResponse(_sse(svc, spec, adapter, prompt, config, version), media_type="text/event-stream")


def _sse(svc, spec, adapter, prompt, config, version):
    """Server-sent events: `data: {GenerateContentResponse}` + blank line per chunk; usage on the last one."""
    response_id = secrets.token_hex(11)
    try:
        for item in svc.registry.stream(spec, adapter, prompt, config):
            if isinstance(item, Generation):
                last = wire.response_json([item], version)
                last["candidates"][0]["content"]["parts"] = [{"text": ""}]
                last["responseId"] = response_id
                yield f"data: {json.dumps(last)}\n\n"
            else:
                yield f"data: {json.dumps(wire.chunk_json(item, version, response_id))}\n\n"
    except TuneryError as exc:
        yield f"data: {json.dumps(error_body(400, exc.message))}\n\n"


@router.post(PLACE + "/endpoints/{endpoint_id}:{method}")
def endpoint_method(project: str, location: str, endpoint_id: str, method: str, svc: Svc, body: dict = Body(...)):
    return _dispatch(svc, method, _endpoint_target(svc, endpoint_id), body)


@router.post(PLACE + "/models/{model_id}:{method}")
def tuned_model_method(project: str, location: str, model_id: str, method: str, svc: Svc, body: dict = Body(...)):
    model = svc.store.get_model(model_id.split("@")[0])
    if model is None:
        raise ApiError(404, f"tuned model {model_id} not found")
    ep = next(e for e in svc.store.endpoints_of(model.id) if e.checkpoint_id is None)
    return _dispatch(svc, method, _endpoint_target(svc, ep.id), body)


@router.post(PLACE + "/publishers/{publisher}/models/{model}:{method}")
def publisher_model_method(project: str, location: str, publisher: str, model: str, method: str, svc: Svc,
                           body: dict = Body(...)):
    return _dispatch(svc, method, _base_target(model), body)


def _base_model_json(name: str, spec: models.BaseModelSpec) -> dict:
    return {"name": f"publishers/google/models/{name}", "versionId": "001", "displayName": name,
            "description": f"served by tunery as {spec.name}", "labels": {"tunery-base-model": spec.name}}


@router.get("/publishers/{publisher}/models/{model}")
@router.get(PLACE + "/publishers/{publisher}/models/{model}")
def get_base_model(publisher: str, model: str, project: str = "", location: str = "") -> dict:
    spec, _, _ = _base_target(model)
    return _base_model_json(model, spec)


@router.get("/publishers/{publisher}/models")
@router.get(PLACE + "/publishers/{publisher}/models")
def list_base_models(publisher: str, project: str = "", location: str = "") -> dict:
    return {"publisherModels": [_base_model_json(name, spec) for name, spec in models.REGISTRY.items()]}
