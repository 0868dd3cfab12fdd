"""generateContent, streamGenerateContent (SSE), countTokens and computeTokens on tuned-model endpoints, tuned
models and base models by publisher name; models.get/list for base models."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse

from tunery import models
from tunery.api.wire import generation as wg
from tunery.api.services import Services, Svc
from tunery.api.errors import ApiError, error_body
from tunery.errors import ModelNotFoundError, TuneryError
from tunery.serve.generate import Generation

log = logging.getLogger("tunery")
router = APIRouter()
PLACE = "/projects/{project}/locations/{location}"
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "computeTokens")


def endpoint_target(svc: Services, endpoint_id: str) -> tuple[models.BaseModelSpec, str, str]:
    ep = svc.store.get_endpoint(endpoint_id)
    model = svc.store.get_model(ep.model_id) if ep else None
    if ep is None or model is None:
        raise ApiError(404, f"endpoint {endpoint_id} not found (it, or its model, may have been deleted)")
    if not ep.deployed:
        raise ApiError(400, f"endpoint {endpoint_id} has no deployed model (it was undeployed); the tuned model "
                            f"{model.name} is still there: call it by model name, or tune again", "FAILED_PRECONDITION")
    paths = {c["checkpointId"]: c["path"] for c in model.checkpoints}
    adapter = paths[ep.checkpoint_id] if ep.checkpoint_id else model.adapter_dir
    return models.resolve(model.base_model), adapter, f"{model.name}@1"


def base_target(svc: Services, name: str) -> tuple[models.BaseModelSpec, None, str]:
    try:
        spec = models.resolve_allowed(name, svc.settings.allowed_roots)
    except ModelNotFoundError as exc:
        raise ApiError(404, f"publisher model {name} not found: {exc.message}") from exc
    return spec, None, spec.name


def call(svc: Services, method: str, target, body: Any, *, sse: bool = True):
    """One of METHODS on a target (endpoint_target / base_target): the answer, or a streaming response (SSE, or
    with `sse=False` the JSON array Vertex REST sends without `alt=sse`). The console calls this too."""
    spec, adapter, version = target
    if method not in METHODS:
        raise ApiError(404, f"unknown method :{method}; expected one of {', '.join(METHODS)}")
    template = models.load_template(spec)
    if method in ("countTokens", "computeTokens"):
        prompt = wg.parse_count_tokens(body)
        ids = template.render_prompt(prompt.turns, prompt.system) if prompt.turns else []
        if method == "countTokens":
            return {"totalTokens": len(ids)}
        return {"tokensInfo": [{"role": "user", "tokenIds": [str(i) for i in ids],
                                "tokens": [base64.b64encode(template.decode([i]).encode()).decode() for i in ids]}]}
    req = fit_context(wg.parse_generate(body), template, spec)
    if method == "generateContent":
        gens = svc.registry.generate(spec, adapter, [req.prompt] * req.candidate_count, req.config)
        return wg.response_json(gens, version)
    chunks = _chunks(svc, spec, adapter, req, version)
    if sse:  # google-genai asks with ?alt=sse
        return StreamingResponse((f"data: {json.dumps(c)}\n\n" for c in chunks), media_type="text/event-stream")
    return StreamingResponse(_json_array(chunks), media_type="application/json")  # Vertex REST without alt=sse


def fit_context(req: wg.GenerateRequest, template, spec: models.BaseModelSpec, field: str = "contents"
                ) -> wg.GenerateRequest:
    """A prompt that leaves no room in the model's context is refused with its size (naming `field`), before any
    model work (a huge one before it is even tokenized); the output budget is cut to the room left."""
    limit = spec.max_tokens
    chars = sum(len(t.text) for t in req.prompt.turns) + len(req.prompt.system or "")
    if chars > limit * 64:  # far more text than any tokenizer packs into `limit` tokens
        raise ApiError(400, f"{field}: the prompt has {chars:,} characters, far over the model's context of "
                            f"{limit:,} tokens ({spec.name})")
    count = len(template.render_prompt(req.prompt.turns, req.prompt.system))
    if count >= limit:
        raise ApiError(400, f"{field}: the prompt has {count:,} tokens; the model's context is {limit:,} tokens "
                            f"({spec.name}), which must also hold the answer")
    room = min(req.config.max_output_tokens, limit - count)
    return dataclasses.replace(req, config=dataclasses.replace(req.config, max_output_tokens=room))


def _sse(request: Request) -> bool:
    return request.query_params.get("alt") == "sse"


def _json_array(chunks: Iterator[dict]) -> Iterator[str]:
    """The non-SSE streamGenerateContent answer: one JSON array, its elements sent as they are generated."""
    yield "["
    for i, chunk in enumerate(chunks):
        yield ("," if i else "") + json.dumps(chunk)
    yield "]"


def _chunks(svc: Services, spec, adapter, req: wg.GenerateRequest, version: str) -> Iterator[dict]:
    """GenerateContentResponse chunks; finish reason and usage on the last one; an error becomes a last chunk in
    the error shape (the SDKs raise it), so a stream is never cut without a word."""
    response_id = secrets.token_hex(11)
    try:
        for item in svc.registry.stream(spec, adapter, req.prompt, req.config):
            if isinstance(item, Generation):
                last = wg.response_json([item], version)
                last["candidates"][0]["content"]["parts"] = [{"text": ""}]
                last["responseId"] = response_id
                yield last
            else:
                yield wg.chunk_json(item, version, response_id)
    except TuneryError as exc:
        yield error_body(400, exc.message)
    except Exception:  # a bug: logged with its traceback; the client gets the error shape, not a cut stream
        log.exception("stream failed")
        yield error_body(500, "internal error while generating; see the server log")


@router.post(PLACE + "/endpoints/{endpoint_id}:{method}")
def endpoint_method(project: str, location: str, endpoint_id: str, method: str, svc: Svc, request: Request,
                    body: Any = Body(...)):
    return call(svc, method, endpoint_target(svc, endpoint_id), body, sse=_sse(request))


@router.post(PLACE + "/models/{model_id}:{method}")
def tuned_model_method(project: str, location: str, model_id: str, method: str, svc: Svc, request: Request,
                       body: Any = Body(...)):
    """A tuned model by name serves its final adapter whether or not an endpoint is deployed."""
    model = svc.store.get_model(model_id.split("@")[0])
    if model is None:
        raise ApiError(404, f"tuned model {model_id} not found")
    target = models.resolve(model.base_model), model.adapter_dir, f"{model.name}@1"
    return call(svc, method, target, body, sse=_sse(request))


@router.post(PLACE + "/publishers/{publisher}/models/{model}:{method}")
def publisher_model_method(project: str, location: str, publisher: str, model: str, method: str, svc: Svc,
                           request: Request, body: Any = Body(...)):
    return call(svc, method, base_target(svc, model), body, sse=_sse(request))


def _base_model_json(name: str, spec: models.BaseModelSpec) -> dict:
    return {"name": f"publishers/google/models/{name}", "versionId": "001", "displayName": name,
            "description": f"served by tunery as {spec.name}", "labels": {"tunery-base-model": spec.name}}


@router.get("/publishers/{publisher}/models/{model}")
@router.get(PLACE + "/publishers/{publisher}/models/{model}")
def get_base_model(publisher: str, model: str, svc: Svc, project: str = "", location: str = "") -> dict:
    spec, _, _ = base_target(svc, model)
    return _base_model_json(model, spec)


@router.get("/publishers/{publisher}/models")
@router.get(PLACE + "/publishers/{publisher}/models")
def list_base_models(publisher: str, project: str = "", location: str = "") -> dict:
    return {"publisherModels": [_base_model_json(name, spec) for name, spec in models.REGISTRY.items()]}
