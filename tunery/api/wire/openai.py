"""OpenAI request shapes parsed once at the edge: chat completions and fine-tuning job creation, every field's
type and range checked with the field named as OpenAI names it; and the `ft:` model names tunery hands out.

The objects OpenAI answers with (jobs, events, checkpoints, files, completions) are rendered in `openai_objects`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tunery.api.errors import ApiError
from tunery.api.wire.common import bool_field, float_field, int_field, object_field, str_field
from tunery.api.wire.generation import MAX_CANDIDATES, MAX_OUTPUT_TOKENS
from tunery.config import RANGES
from tunery.data import media as md
from tunery.data.schema import Media, Turn
from tunery.jobs.spec import JobRequest, OpenAIFields
from tunery.serve.generate import GenerationConfig, Prompt

ORG = "tunery"  # the organization segment of ft: names and organization_id
# Request fields that would change an answer in ways tunery cannot honour: refused, never silently ignored.
UNSUPPORTED_CHAT = ("tools", "tool_choice", "functions", "function_call", "audio", "prediction", "web_search_options")
SUFFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CKPT = re.compile(r"ckpt-step-([0-9]{1,9})")


@dataclass(frozen=True)
class ChatRequest:
    """A chat.completions.create request."""

    model: str
    prompt: Prompt
    config: GenerationConfig
    n: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: one last chunk with the usage


@dataclass(frozen=True)
class CreateJob:
    """A fine_tuning.jobs.create request: supervised, or DPO (method.type "dpo")."""

    model: str
    training_file: str
    validation_file: str | None
    n_epochs: int | None  # None: "auto"
    batch_size: int | None
    learning_rate_multiplier: float | None
    suffix: str | None
    seed: int | None
    metadata: dict[str, str] | None
    method: str = "supervised"  # or "dpo"
    beta: float | None = None  # DPO's beta; None: "auto"


def _body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, found {type(body).__name__}")
    return body


def _required(body: dict, key: str, max_chars: int = 512) -> str:
    value = str_field(body.get(key), key, max_chars)
    if not value:
        raise ApiError(400, f"{key}: required")
    return value


# ---------------------------------------------------------------- chat completions

def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined, as OpenAI reads them)."""
    return _content_media(value, where, images=False)[0]


def _content_media(value: Any, where: str, images: bool = True) -> tuple[str, tuple[Media, ...]]:
    """A message's text and images: a string, or a list of text and `image_url` parts (data URLs or paths)."""
    if isinstance(value, str):
        return value, ()
    if not isinstance(value, list):
        raise ApiError(400, f"{where}: expected a string or a list of content parts, found {type(value).__name__}")
    texts, media = [], []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url" and images:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else None
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{where}[{j}].image_url.url: expected a data URL or a path, found {url!r:.40}")

            def fail(pointer: str, code: str, message: str, hint: str, j=j) -> None:
                raise ApiError(400, f"{where}[{j}].image_url.url: {message}")

            media.append(md.parse_data_url(url, f"{where}[{j}].image_url.url", fail))
            continue
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}[{j}]: expected {{\"type\": \"text\", \"text\": \"...\"}}"
                                + (" or an image_url part" if images else "") + f", found {part!r:.80}")
        texts.append(part["text"])
    return "".join(texts), tuple(media)


def _prompt(messages: Any) -> Prompt:
    """System (or developer) messages first, then user and assistant turns ending with a user turn."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list of messages")
    system, turns = [], []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role: expected system, developer, user or assistant, found {role!r:.40}")
        text, media = _content_media(m.get("content"), f"messages[{i}].content", images=role == "user")
        if role in ("system", "developer"):
            if turns:  # the chat template has one system turn, before the conversation
                raise ApiError(400, f"messages[{i}].role: a {role} message must come before the user and assistant turns")
            system.append(text)
        else:
            turns.append(Turn("user" if role == "user" else "model", text, media))
    if not turns or turns[-1].role != "user":
        raise ApiError(400, f"messages[{len(messages) - 1}].role: the last message must be from the user")
    return Prompt(tuple(turns), "\n\n".join(system) if system else None)


def _stops(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop: expected a string or at most 4 non-empty strings, found {value!r:.80}")
    return tuple(stops)


def _unsupported(body: dict) -> None:
    for key in UNSUPPORTED_CHAT:
        if body.get(key) not in (None, [], {}):
            raise ApiError(400, f"{key}: not supported by tunery (text chat only)")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiError(400, "logprobs: not supported by tunery")
    fmt = object_field(body.get("response_format"), "response_format")
    if fmt and fmt.get("type") != "text":
        raise ApiError(400, f"response_format.type: expected \"text\", found {fmt.get('type')!r:.40}")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0):
            raise ApiError(400, f"{key}: not supported by tunery; leave it at 0")


def _temperature(value: Any) -> float:
    if value is None:
        return 1.0  # OpenAI's default: sampling
    if value == 0 and not isinstance(value, bool):
        return 0.0  # greedy
    return float_field(value, "temperature", 0, 2)  # type: ignore[return-value]


def parse_chat(body: Any) -> ChatRequest:
    """A chat completions request; OpenAI's defaults: temperature 1, as many tokens as the context leaves."""
    body = _body(body)
    model = _required(body, "model")
    _unsupported(body)
    prompt = _prompt(body.get("messages"))
    max_tokens = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    config = GenerationConfig(
        max_output_tokens=int_field(body.get(max_tokens), max_tokens, 1, MAX_OUTPUT_TOKENS) or MAX_OUTPUT_TOKENS,
        temperature=_temperature(body.get("temperature")),
        top_p=float_field(body.get("top_p"), "top_p", 0, 1), stop_sequences=_stops(body.get("stop")),
        seed=int_field(body.get("seed"), "seed", -(2**63), 2**63 - 1))
    n = int_field(body.get("n"), "n", 1, MAX_CANDIDATES) or 1
    stream = bool_field(body.get("stream"), "stream")
    if stream and n > 1:
        raise ApiError(400, "n: streaming answers one choice; send n=1 or stream=false")
    options = object_field(body.get("stream_options"), "stream_options") or {}
    return ChatRequest(model, prompt, config, n, stream,
                       bool_field(options.get("include_usage"), "stream_options.include_usage"))


# ---------------------------------------------------------------- fine-tuning jobs

def _auto_int(value: Any, field: str, lo: int, hi: int) -> int | None:
    """A hyperparameter that may be "auto" (None: tunery's default)."""
    return None if value == "auto" else int_field(value, field, lo, hi)


def _hyperparameters(body: dict) -> tuple[dict, str, str]:
    """method.{supervised,dpo}.hyperparameters, or the deprecated top-level hyperparameters; their field path; and
    the method."""
    method = object_field(body.get("method"), "method")
    kind = "supervised"
    if method is not None:
        kind = method.get("type")
        if kind not in ("supervised", "dpo"):
            raise ApiError(400, f"method.type: expected \"supervised\" or \"dpo\", found {kind!r:.40} (tunery tunes "
                                "LoRA adapters on examples or on preference pairs)")
        _known(method, ("type", kind), "method.")
        inner = object_field(method.get(kind), f"method.{kind}") or {}
        _known(inner, ("hyperparameters",), f"method.{kind}.")
        where = f"method.{kind}.hyperparameters"
    else:
        where = "hyperparameters"
    hp = object_field((inner if method is not None else body).get("hyperparameters"), where) or {}
    _known(hp, HP_FIELDS + (("beta",) if kind == "dpo" else ()), f"{where}.")
    return hp, where, kind


def _metadata(value: Any) -> dict[str, str] | None:
    meta = object_field(value, "metadata")
    if meta is not None and (len(meta) > 16 or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                                                       and len(v) <= 512 for k, v in meta.items())):
        raise ApiError(400, "metadata: expected at most 16 string keys (64 characters) with string values (512)")
    return meta


CREATE_FIELDS = ("model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
                 "metadata", "integrations")
HP_FIELDS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def _known(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    """Refuse a field OpenAI does not define (as its API does), with its path."""
    for key in obj:
        if key not in allowed:
            raise ApiError(400, f"{where}{key}: unknown parameter; expected one of {', '.join(allowed)}")


def parse_create_job(body: Any) -> CreateJob:
    """A fine-tuning job create request."""
    body = _body(body)
    _known(body, CREATE_FIELDS, "")
    if body.get("integrations"):
        raise ApiError(400, "integrations: not supported by tunery (its metrics are in the job's events, the "
                            "console and the Vertex TensorBoard routes)")
    hp, where, method = _hyperparameters(body)
    lr, beta = hp.get("learning_rate_multiplier"), hp.get("beta")
    suffix = str_field(body.get("suffix"), "suffix", 64)
    if suffix is not None and not SUFFIX.fullmatch(suffix):
        raise ApiError(400, f"suffix: expected 1 to 64 letters, digits, '_', '.' or '-', found {suffix!r}")
    return CreateJob(_required(body, "model"), _required(body, "training_file", 64),
                     str_field(body.get("validation_file"), "validation_file", 64),
                     _auto_int(hp.get("n_epochs"), f"{where}.n_epochs", *RANGES["epochs"]),
                     _auto_int(hp.get("batch_size"), f"{where}.batch_size", *RANGES["batch_size"]),
                     None if lr == "auto" else float_field(lr, f"{where}.learning_rate_multiplier",
                                                           *RANGES["learning_rate_multiplier"]),
                     suffix or None, int_field(body.get("seed"), "seed", 0, 2**31 - 1), _metadata(body.get("metadata")),
                     method, None if beta in (None, "auto") else float_field(beta, f"{where}.beta", *RANGES["beta"]))


def job_request(req: CreateJob, train_path: str, validation_path: str | None) -> JobRequest:
    """The job service's request for an OpenAI one: the datasets are the uploaded files' paths."""
    hp = {k: v for k, v in (("epochs", req.n_epochs), ("batch_size", req.batch_size),
                            ("learning_rate_multiplier", req.learning_rate_multiplier), ("seed", req.seed),
                            ("beta", req.beta)) if v is not None}
    if req.method == "dpo":
        hp["method"] = "preference"
    return JobRequest(door="openai", train=train_path, base_model=req.model, validation=validation_path,
                      hyperparameters=hp, display_name=req.suffix,
                      labels=dict(req.metadata or {}),  # Vertex's name for the same thing: the Vertex view shows them
                      openai=OpenAIFields(req.training_file, req.validation_file, req.suffix, req.seed, req.metadata))


# ---------------------------------------------------------------- model names

def ft_name(base: str, suffix: str | None, model_id: str) -> str:
    """OpenAI's fine-tuned model name, `ft:BASE:ORG:SUFFIX:ID` (the suffix may be empty). A base given as a path
    is named by its last segment; characters a name cannot hold become '-'."""
    label = base.rstrip("/").rsplit("/", 1)[-1] if base.startswith(("/", "~", ".")) else base
    return f"ft:{re.sub(r'[^A-Za-z0-9_./-]', '-', label)}:{ORG}:{suffix or ''}:{model_id}"


def checkpoint_name(model_name: str, step: int) -> str:
    """OpenAI's name of a checkpoint of a fine-tuned model."""
    return f"{model_name}:ckpt-step-{step}"


def split_name(name: str) -> tuple[str, int | None] | None:
    """(tuned model id, checkpoint step or None) of an ft: name, a tuned model's id or its Vertex resource name;
    None for anything else (a base model's name)."""
    if name.startswith("ft:"):
        parts = name.split(":")
        step = CKPT.fullmatch(parts[-1]) if len(parts) > 5 else None
        if step:
            parts = parts[:-1]
        return (parts[-1], int(step.group(1)) if step else None) if len(parts) >= 5 else None
    model_id = name.rsplit("/models/", 1)[-1].split("@")[0] if "/models/" in name else name
    return (model_id, None) if re.fullmatch(r"[0-9]{19}", model_id) else None
