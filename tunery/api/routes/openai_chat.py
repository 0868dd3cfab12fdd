"""OpenAI-compatible chat completions and models under /v1, served by the same registry (base model loaded once,
adapters attached on demand) as Vertex's generateContent. `model` selects a base model, a tuned model by its ft:
name (or id) or one of its checkpoints (`...:ckpt-step-N`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Body

from tunery import models
from tunery.api.errors import ApiError, openai_body
from tunery.api.serving import Stream, check_media, fit_context
from tunery.api.services import Services, Svc
from tunery.api.wire import openai as wire
from tunery.api.wire import openai_objects as objects
from tunery.api.wire.generation import GenerateRequest
from tunery.config import load_settings
from tunery.errors import ModelNotFoundError, TuneryError
from tunery.jobs.store import Model
from tunery.serve.generate import Generation

log = logging.getLogger("tunery")
router = APIRouter()


def _not_found(name: str) -> ApiError:
    """OpenAI's answer for a model it does not know: 404 model_not_found."""
    return ApiError(404, f"model: the model `{name:.200}` does not exist on this server (GET /v1/models lists them)",
                    code="model_not_found")


def tuned_model(svc: Services, name: str) -> tuple[Model, int | None] | None:
    """The tuned model (and checkpoint step) an ft: name, id or Vertex model name selects; None for other names.
    An ft: name must be the one this server issued, whole: the id alone never selects a model under another name."""
    found = wire.split_name(name)
    if found is None:
        return None
    model_id, step = found
    model = svc.store.get_model(model_id)
    job = svc.store.get_job(model.job_id) if model else None
    issued = objects.tuned_name(job) if job else None
    if model is None or (name.startswith("ft:") and name.removesuffix(f":ckpt-step-{step}") != issued):
        raise _not_found(name)
    if step is not None and step not in {int(c["step"]) for c in model.checkpoints}:
        raise _not_found(name)
    return model, step


def target(svc: Services, name: str) -> tuple[models.BaseModelSpec, str | None]:
    """(base model, adapter directory or None) that `model` names."""
    tuned = tuned_model(svc, name)
    if tuned is not None:
        model, step = tuned
        paths = {int(c["step"]): c["path"] for c in model.checkpoints}
        return models.resolve(model.base_model), paths[step] if step is not None else model.adapter_dir
    try:
        return models.resolve_allowed(name, svc.settings.allowed_roots), None
    except ModelNotFoundError as exc:
        raise _not_found(name) from exc


@router.post("/chat/completions")
async def chat_completions(svc: Svc, body: Any = Body(...)):
    """On the generation gate's threads, as Vertex's generateContent (tunery/api/serving.py)."""
    return await svc.generation.run(_chat, svc, body)


def _chat(svc: Services, body: Any):
    req = wire.parse_chat(body)
    spec, adapter = target(svc, req.model)
    check_media(svc, req.prompt, spec)
    gen = fit_context(GenerateRequest(req.prompt, req.config, req.n), models.load_template(spec), spec, "messages")
    if req.stream:
        return Stream(_sse(svc, spec, adapter, gen, req), "text/event-stream")
    gens = svc.registry.generate(spec, adapter, [gen.prompt] * gen.candidate_count, gen.config)
    return objects.completion(gens, req.model)


def _sse(svc: Services, spec: models.BaseModelSpec, adapter: str | None, gen: GenerateRequest,
         req: wire.ChatRequest) -> Iterator[str]:
    """chat.completion.chunk events, `data: [DONE]` last. Text that might begin a stop sequence is held back until
    it is known not to; an error becomes an event in OpenAI's error shape (the SDK raises it), never a cut stream."""
    cid, created = objects.completion_id(), int(time.time())

    def event(delta: dict | None, finish: str | None = None, use: dict | None = None) -> str:
        return f"data: {json.dumps(objects.chunk(cid, created, req.model, delta, finish, use))}\n\n"

    stops = gen.config.stop_sequences
    hold = max((len(s) for s in stops), default=1) - 1  # characters that could be the start of a stop sequence
    text, sent, stopped, final = "", 0, False, None
    try:
        yield event({"role": "assistant", "content": ""})
        for item in svc.registry.stream(spec, adapter, gen.prompt, gen.config):
            if isinstance(item, Generation):
                final = item
                continue
            if stopped:
                continue  # read to the end all the same: the stream holds the model until generation finishes
            text += item
            cut = min((text.index(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, stopped = text[:cut], True
            upto = len(text) if stopped else max(sent, len(text) - hold)
            if upto > sent:
                yield event({"content": text[sent:upto]})
                sent = upto
        if len(text) > sent:
            yield event({"content": text[sent:]})
        assert final is not None  # the registry's stream always ends with the Generation
        yield event({}, "stop" if stopped else objects.FINISH.get(final.finish_reason, "stop"))
        if req.include_usage:
            yield event(None, use=objects.usage(final.prompt_tokens, final.output_tokens))
    except TuneryError as exc:
        yield f"data: {json.dumps(openai_body(400, exc.message))}\n\n"
    except Exception:  # a bug: logged with its traceback; the client gets the error shape
        log.exception("chat completion stream failed")
        yield f"data: {json.dumps(openai_body(500, 'internal error while generating; see the server log'))}\n\n"
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- models

def _tuned_entries(svc: Services) -> list[dict]:
    """A model object for every tuned model and each of its checkpoints, newest model first."""
    out = []
    for model in svc.store.all_models():
        job = svc.store.get_job(model.job_id)
        name = objects.tuned_name(job) if job else None
        if name:
            created = objects.unix(model.create_time)
            out.append(objects.model_json(name, created, wire.ORG))
            out += [objects.model_json(wire.checkpoint_name(name, int(c["step"])), created, wire.ORG)
                    for c in model.checkpoints]
    return out


@router.get("/models")
def list_models(svc: Svc) -> dict:
    """Base models (the registry's and the server owner's aliases), then every tuned model and its checkpoints."""
    bases = sorted(set(models.REGISTRY) | set(load_settings().aliases))
    return {"object": "list", "data": [objects.model_json(b, 0, "system") for b in bases] + _tuned_entries(svc)}


@router.get("/models/{model:path}")
def retrieve_model(model: str, svc: Svc) -> dict:
    tuned = tuned_model(svc, model)
    if tuned is None:
        target(svc, model)  # a base model, or 404
        return objects.model_json(model, 0, "system")
    return objects.model_json(model, objects.unix(tuned[0].create_time), wire.ORG)


@router.delete("/models/{model:path}")
def delete_model(model: str, svc: Svc) -> dict:
    """A tuned model goes with its checkpoints, adapters and endpoints (as the Vertex models.delete route)."""
    tuned = tuned_model(svc, model)
    if tuned is None:
        target(svc, model)  # 404 unless it is a base model
    if tuned is None or tuned[1] is not None:
        raise ApiError(400, f"model: only a fine-tuned model (not a base model or a checkpoint) can be deleted, "
                            f"found {model!r:.200}")
    found = tuned[0]
    svc.jobs.delete_model(found.id)
    return {"id": model, "object": "model", "deleted": True}
