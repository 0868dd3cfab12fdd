"""Vertex generation calls on a target the job service resolved: generateContent, streamGenerateContent (SSE or a
JSON array), countTokens and computeTokens. The generation routes, the OpenAI chat route and the console's
playground call these; none of them calls another's route."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

from fastapi.responses import StreamingResponse

from tunery import models
from tunery.api.errors import ApiError, error_body
from tunery.api.services import Services
from tunery.api.wire import generation as wg
from tunery.errors import TuneryError
from tunery.jobs.service import Target
from tunery.serve.generate import Generation

log = logging.getLogger("tunery")
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "computeTokens")


def call(svc: Services, method: str, target: Target, body: Any, *, sse: bool = True):
    """One of METHODS on a target (the job service's endpoint_target, model_target, base_target): the answer, or a
    streaming response (SSE, or with `sse=False` the JSON array Vertex REST sends without `alt=sse`)."""
    spec, adapter, version = target.base, target.adapter, target.version
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
