"""The playground: a base model, a tuned model or a checkpoint (two side by side), answers streamed as they are
generated. Generation goes through the same calls as the REST routes (tunery/api/serving.py), so the stream is
Vertex's SSE."""

from __future__ import annotations

from fastapi import APIRouter, Body, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tunery.api.errors import ApiError
from tunery.api.serving import call
from tunery.console.common import USER_ERRORS, csrf, message_of, page_errors, render, svc
from tunery.console.create import base_choices
from tunery.console.models import all_models
from tunery.errors import RequestError

router = APIRouter()


def targets(request: Request) -> list[dict]:
    """What the pickers offer: base models by name, then each tuned model (by name: it answers whatever its
    endpoints' state) and its deployed endpoints, checkpoints' included."""
    out = [{"value": f"base:{b['value']}", "label": f"base · {b['value']} → {b['resolves']}"} for b in base_choices()]
    for model in all_models(request):
        label = model.display_name or model.id
        out.append({"value": f"model:{model.id}", "label": f"tuned · {label} (model {model.id})", "model_id": model.id,
                    "checkpoint": None})
        for ep in svc(request).store.endpoints_of(model.id):
            if not ep.deployed:
                continue
            what = f"checkpoint {ep.checkpoint_id}" if ep.checkpoint_id else "tuned"
            out.append({"value": f"endpoint:{ep.id}", "label": f"{what} · {label} (endpoint {ep.id})",
                        "model_id": model.id, "checkpoint": ep.checkpoint_id})
    return out


@router.get("/console/playground")
@page_errors
def playground_page(request: Request, left: str = "", right: str = "") -> HTMLResponse:
    options = targets(request)
    tuned = next((o["value"] for o in options if o["value"].startswith("endpoint:")), "")
    return render(request, "playground.html", {"title": "Playground", "options": options,
                                               "left": left or options[0]["value"], "right": right or tuned})


def _number(value, field: str, lo: float, hi: float, whole: bool = False) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not lo <= number <= hi or (whole and not number.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise ApiError(400, f"{field}: expected {kind} from {lo:g} to {hi:g}, found {value!r}")
    return int(number) if whole else number


@router.post("/console/api/generate")
async def generate(request: Request, body: dict = Body(...)) -> Response:
    """{target, prompt, system, temperature, maxOutputTokens, image?} -> the Vertex SSE stream of that model's answer, from
    the generation gate's threads (as the API's)."""
    try:
        return await svc(request).generation.run(_generate, request, body)
    except USER_ERRORS as exc:
        status, text = message_of(exc)
        return JSONResponse({"error": text}, status_code=status)


def _generate(request: Request, body: dict):
    csrf(request, request.headers.get("x-csrf-token"))
    target, prompt = str(body.get("target") or ""), body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "Prompt: write something for the model to answer")
    config = {"temperature": _number(body.get("temperature", 0), "Temperature", 0, 2),
              "maxOutputTokens": _number(body.get("maxOutputTokens", 64), "Max output tokens", 1, 8192, whole=True)}
    parts: list[dict] = [{"text": prompt}]
    if (image := body.get("image")) is not None:  # checked (type, size, the model's encoders) as the API checks it
        if not (isinstance(image, dict) and set(image) == {"mimeType", "data"}
                and all(isinstance(v, str) and v for v in image.values())):
            raise ApiError(400, "Image: expected a file (its type and bytes), found none")
        parts.insert(0, {"inlineData": {"mimeType": image["mimeType"], "data": image["data"]}})
    request_body: dict = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
    if isinstance(body.get("system"), str) and body["system"].strip():
        request_body["systemInstruction"] = {"parts": [{"text": body["system"]}]}
    kind, _, name = target.partition(":")
    jobs = svc(request).jobs
    resolve = {"base": jobs.base_target, "endpoint": jobs.endpoint_target, "model": jobs.model_target}.get(kind)
    if resolve is None or not name:
        raise ApiError(400, f"Model: expected base:NAME, model:ID or endpoint:ID, found {target!r}")
    try:
        target_ = resolve(name)
    except RequestError as exc:
        raise ApiError(404 if exc.status == "NOT_FOUND" else 400, f"Model: {exc.message}") from exc
    return call(svc(request), "streamGenerateContent", target_, request_body)
