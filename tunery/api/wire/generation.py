"""GenerateContentRequest parsed into a prompt and a generation config; GenerateContentResponse rendered."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from tunery.api.errors import ApiError
from tunery.api.wire.common import float_field, get, int_field
from tunery.data import media as md
from tunery.data.schema import Media, Turn
from tunery.jobs.store import now
from tunery.serve.generate import Generation, GenerationConfig, Prompt

MAX_OUTPUT_TOKENS = 8192
MAX_CANDIDATES = 8

@dataclass(frozen=True)
class GenerateRequest:
    """A GenerateContentRequest (or CountTokensRequest), parsed once."""

    prompt: Prompt
    config: GenerationConfig
    candidate_count: int


def _text_of(content: Any, where: str) -> str:
    text, media = _content_of(content, where)
    if media:
        raise ApiError(400, f"{media[0].pointer}: a system instruction takes text parts only")
    return text


def _media(kind: str, value: Any, where: str) -> Media:
    """An inlineData (base64) or fileData (a path, checked against the allowed roots later) part."""
    def fail(pointer: str, code: str, message: str, hint: str) -> None:
        raise ApiError(400, f"{pointer}: {message}" + (f" ({hint})" if hint else ""))

    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: expected an object with mimeType and {'data' if kind == 'inlineData' else 'fileUri'}")
    mime = get(value, "mimeType")
    payload = get(value, "data" if kind == "inlineData" else "fileUri")
    for name, v in (("mimeType", mime), ("data" if kind == "inlineData" else "fileUri", payload)):
        if not isinstance(v, str) or not v:
            raise ApiError(400, f"{where}.{name}: expected a non-empty string, found {type(v).__name__}")
    if kind == "inlineData":
        m = md.decode_inline(mime.lower(), payload, where, lambda p, c, msg, h: fail(p.replace("/", "."), c, msg, h))
    else:
        m = md.parse_uri(mime.lower(), payload, where, lambda p, c, msg, h: fail(p.replace("/", "."), c, msg, h))
    assert m is not None  # a failure raised
    return m


def _content_of(content: Any, where: str) -> tuple[str, tuple[Media, ...]]:
    if not isinstance(content, dict):
        raise ApiError(400, f"{where}: expected a Content object, found {type(content).__name__}")
    parts = get(content, "parts")
    if not isinstance(parts, list) or not parts:
        raise ApiError(400, f"{where}.parts: expected a non-empty list of parts")
    texts: list[str] = []
    media: list[Media] = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise ApiError(400, f"{where}.parts[{j}]: expected a part object, found {type(part).__name__}")
        if get(part, "thought"):
            continue
        if (kind := next((k for k in ("inlineData", "fileData", "inline_data", "file_data") if k in part), None)):
            canonical = "inlineData" if kind.startswith("inline") else "fileData"
            media.append(_media(canonical, part[kind], f"{where}.parts[{j}].{canonical}"))
            continue
        if "text" not in part:
            kind = next(iter(part), "empty part")
            raise ApiError(400, f"{where}.parts[{j}]: {kind} parts are not supported; send text, inlineData or fileData")
        if not isinstance(part["text"], str):
            raise ApiError(400, f"{where}.parts[{j}].text: expected a string, found {type(part['text']).__name__}")
        texts.append(part["text"])
    return "".join(texts), tuple(media)


def _system(body: dict) -> str | None:
    """systemInstruction, where an empty object (the vertexai SDK's countTokens sends `{}`) means none."""
    system = get(body, "systemInstruction")
    if system is None or system == {}:
        return None
    return _text_of(system, "systemInstruction")


def _prompt(body: dict, *, allow_empty: bool = False) -> Prompt:
    contents = get(body, "contents")
    if allow_empty and contents in (None, []):
        return Prompt((), _system(body))
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "contents: expected at least one Content")
    turns = []
    for i, c in enumerate(contents):
        role = get(c, "role", "user") if isinstance(c, dict) else None
        if role not in ("user", "model"):
            raise ApiError(400, f"contents[{i}].role: expected \"user\" or \"model\", found {role!r}")
        text, media = _content_of(c, f"contents[{i}]")
        if media and role == "model":
            raise ApiError(400, f"{media[0].pointer}: a model turn takes text parts only")
        turns.append(Turn(role, text, media))
    if turns[-1].role != "user" and not allow_empty:
        raise ApiError(400, f"contents[{len(turns) - 1}].role: the last turn must be from the user")
    return Prompt(tuple(turns), _system(body))


def _config(gc: Any) -> tuple[GenerationConfig, int]:
    if not isinstance(gc, dict):
        raise ApiError(400, f"generationConfig: expected an object, found {type(gc).__name__}")
    where = "generationConfig"
    stops = get(gc, "stopSequences")
    stops = [] if stops is None else stops
    if not isinstance(stops, list) or len(stops) > 5 or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"{where}.stopSequences: expected at most 5 strings, found {stops!r:.80}")
    temperature = get(gc, "temperature")
    config = GenerationConfig(
        max_output_tokens=int_field(get(gc, "maxOutputTokens"), f"{where}.maxOutputTokens", 1, MAX_OUTPUT_TOKENS) or 256,
        temperature=0.0 if temperature in (None, 0) else float_field(temperature, f"{where}.temperature", 0, 2),
        top_p=float_field(get(gc, "topP"), f"{where}.topP", 0, 1),
        top_k=int_field(get(gc, "topK"), f"{where}.topK", 1, 1000),
        stop_sequences=tuple(stops), seed=int_field(get(gc, "seed"), f"{where}.seed", -(2**31), 2**31 - 1))
    n = int_field(get(gc, "candidateCount"), f"{where}.candidateCount", 1, MAX_CANDIDATES) or 1
    return config, n


def parse_generate(body: Any) -> GenerateRequest:
    """A GenerateContentRequest: every field's type and range checked, errors naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, found {type(body).__name__}")
    gc = get(body, "generationConfig")  # null is unset (proto3 JSON); [], false, "" are not objects
    config, n = _config({} if gc is None else gc)
    return GenerateRequest(_prompt(body), config, n)


def parse_count_tokens(body: Any) -> Prompt:
    """A CountTokensRequest / ComputeTokensRequest: contents (possibly empty) and an optional system instruction."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, found {type(body).__name__}")
    return _prompt(body, allow_empty=True)


def response_json(gens: list[Generation], model_version: str) -> dict:
    prompt_tokens = gens[0].prompt_tokens
    out_tokens = sum(g.output_tokens for g in gens)
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": g.text}]}, "finishReason": g.finish_reason,
                            "index": i} for i, g in enumerate(gens)],
            "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                              "totalTokenCount": prompt_tokens + out_tokens, "trafficType": "ON_DEMAND"},
            "modelVersion": model_version, "responseId": secrets.token_hex(11), "createTime": now()}


def chunk_json(text: str, model_version: str, response_id: str) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
            "modelVersion": model_version, "responseId": response_id, "createTime": now()}
