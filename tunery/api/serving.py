"""Vertex generation calls on a target the job service resolved: generateContent, streamGenerateContent (SSE or a
JSON array), countTokens and computeTokens. The generation routes, the OpenAI chat route and the console's
playground call these; none of them calls another's route."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from tunery import models
from tunery.api.errors import ApiError, error_body
from tunery.api.services import Services
from tunery.api.wire import generation as wg
from tunery.data import media as md
from tunery.errors import TuneryError
from tunery.jobs.service import Target
from tunery.serve.generate import Generation

log = logging.getLogger("tunery")
METHODS = ("generateContent", "streamGenerateContent", "countTokens", "computeTokens")
DEFAULT_MAX_GENERATION_REQUESTS = 64
_END = object()


@dataclass
class Stream:
    """A streamed answer: its pieces (a blocking iterator) and their media type."""

    pieces: Iterator[str]
    media_type: str


class GenerationGate:
    """Generation never runs on the threads the server's other routes use. Each generation request (generate,
    stream, count, chat) runs on a thread of its own pool, at most `limit` requests in flight (a stream counts until
    its last piece is sent); one more is refused at once with 429 RESOURCE_EXHAUSTED. So with any number of clients
    generating, getting a job, cancelling it and the console still get a thread at once, and threads never pile up.
    Each admitted request holds at most one of the pool's `limit` threads at a time, so a stream waiting for the
    model can never starve the stream that holds it."""

    def __init__(self, limit: int = DEFAULT_MAX_GENERATION_REQUESTS) -> None:
        self.limit, self.in_flight = limit, 0
        self._lock = threading.Lock()
        self._threads = None  # an anyio CapacityLimiter, made on the event loop at first use

    def _admit(self) -> None:
        with self._lock:
            if self.in_flight >= self.limit:
                raise ApiError(429, f"{self.limit} generation requests are in flight already, this server's limit "
                                    "(--max-generation-requests); retry in a moment", "RESOURCE_EXHAUSTED")
            self.in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def run(self, fn, *args):
        """`fn(*args)` on a generation thread; a `Stream` it returns is sent from generation threads as well."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(self.limit)
        self._admit()
        try:
            result = await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)
        except BaseException:
            self._release()
            raise
        if not isinstance(result, Stream):
            self._release()
            return result
        once = _Once(self._release)
        pieces = self._drain(result.pieces, once)
        weakref.finalize(pieces, once)  # a stream the client left before it began still gives its place back
        return StreamingResponse(pieces, media_type=result.media_type)

    async def _drain(self, pieces: Iterator[str], release: "_Once"):
        try:
            while (piece := await anyio.to_thread.run_sync(next, pieces, _END, limiter=self._threads)) is not _END:
                yield piece
        finally:
            release()
            close = getattr(pieces, "close", None)
            if close is not None:
                close()


class _Once:
    def __init__(self, fn) -> None:
        self._fn, self._lock = fn, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            fn, self._fn = self._fn, None
        if fn is not None:
            fn()


def call(svc: Services, method: str, target: Target | Callable[[], Target], body: Any, *, sse: bool = True):
    """One of METHODS on a target (the job service's endpoint_target, model_target, base_target, or a function that
    resolves one): the answer, or a Stream (SSE, or with `sse=False` the JSON array Vertex REST sends without
    `alt=sse`). Blocking: run it through the GenerationGate."""
    target = target() if callable(target) else target
    spec, adapter, version = target.base, target.adapter, target.version
    if method not in METHODS:
        raise ApiError(404, f"unknown method :{method}; expected one of {', '.join(METHODS)}")
    template = models.load_template(spec)
    if method in ("countTokens", "computeTokens"):
        prompt = wg.parse_count_tokens(body)
        if not prompt.turns:  # as Vertex answers
            raise ApiError(400, "contents: required (at least one Content to count)")
        _not_far_too_long(prompt, spec, "contents")
        check_media(svc, prompt, spec)
        ids = template.render_prompt(prompt.turns, prompt.system)
        if method == "countTokens":
            return {"totalTokens": len(ids)}
        return {"tokensInfo": [{"role": "user", "tokenIds": [str(i) for i in ids],
                                "tokens": [base64.b64encode(template.decode([i]).encode()).decode() for i in ids]}]}
    req = wg.parse_generate(body)
    check_media(svc, req.prompt, spec)
    req = fit_context(req, template, spec)
    if method == "generateContent":
        gens = svc.registry.generate(spec, adapter, [req.prompt] * req.candidate_count, req.config)
        return wg.response_json(gens, version)
    chunks = _chunks(svc, spec, adapter, req, version)
    if sse:  # google-genai asks with ?alt=sse
        return Stream((f"data: {json.dumps(c)}\n\n" for c in chunks), "text/event-stream")
    return Stream(_json_array(chunks), "application/json")  # Vertex REST without alt=sse


def check_media(svc: Services, prompt, spec: models.BaseModelSpec) -> None:
    """Images, documents and audio in a prompt: a modality the model has, files only under the allowed roots."""
    media = tuple(m for t in prompt.turns for m in t.media)
    if not media:
        return

    def fail(pointer: str, code: str, message: str, hint: str) -> None:
        raise ApiError(400, f"{pointer.replace('/', '.')}: {message}" + (f" ({hint})" if hint else ""))

    md.check(media, models.media_policy(spec, svc.settings.allowed_roots), fail)


def fit_context(req: wg.GenerateRequest, template, spec: models.BaseModelSpec, field: str = "contents"
                ) -> wg.GenerateRequest:
    """A prompt that leaves no room in the model's context is refused with its size (naming `field`), before any
    model work (a huge one before it is even tokenized); the output budget is cut to the room left."""
    limit = spec.max_tokens
    _not_far_too_long(req.prompt, spec, field)
    count = len(template.render_prompt(req.prompt.turns, req.prompt.system))
    if count >= limit:
        raise ApiError(400, f"{field}: the prompt has {count:,} tokens; the model's context is {limit:,} tokens "
                            f"({spec.name}), which must also hold the answer")
    room = min(req.config.max_output_tokens, limit - count)
    return dataclasses.replace(req, config=dataclasses.replace(req.config, max_output_tokens=room))


def _not_far_too_long(prompt, spec: models.BaseModelSpec, field: str) -> None:
    """A prompt of far more text than any tokenizer packs into the model's context is refused before it is
    tokenized (a 20 MB prompt would take the tokenizer seconds)."""
    chars = sum(len(t.text) for t in prompt.turns) + len(prompt.system or "")
    if chars > spec.max_tokens * 64:
        raise ApiError(400, f"{field}: the prompt has {chars:,} characters, far over the model's context of "
                            f"{spec.max_tokens:,} tokens ({spec.name})")


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
