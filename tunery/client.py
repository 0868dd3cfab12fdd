"""A small client for a tunery server, used by the `jobs`, `models` and `generate` commands."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from tunery.errors import TuneryError

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ServerError(TuneryError):
    """The server answered with an error (its message is passed through)."""

    code = "server_error"


@dataclass(frozen=True)
class Client:
    server: str = os.environ.get("TUNERY_SERVER", DEFAULT_SERVER)
    project: str = "local"
    location: str = "us-central1"
    api_key: str | None = os.environ.get("TUNERY_API_KEY")
    version: str = "v1beta1"

    @property
    def place(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def name(self, kind: str, name_or_id: str) -> str:
        """Full resource name from a bare id (`123` -> projects/../tuningJobs/123)."""
        return name_or_id if name_or_id.startswith("projects/") else f"{self.place}/{kind}/{name_or_id}"

    def model_path(self, model: str) -> str:
        """What generateContent is called on: a full resource name as is, a bare id as an endpoint, anything else as
        a base model name (`smollm2-135m-instruct`, `gemini-2.0-flash-001`)."""
        if model.startswith("projects/"):
            return model
        if model.isdigit():
            return self.name("endpoints", model)
        return f"{self.place}/publishers/google/models/{model}"

    def call(self, method: str, path: str, json: Any = None, params: dict | None = None) -> Any:
        r = self._request(method, path, json, params)
        return r.json() if r.content else {}

    def call_text(self, method: str, path: str, params: dict | None = None) -> str:
        return self._request(method, path, None, params).text

    def _request(self, method: str, path: str, json: Any, params: dict | None) -> httpx.Response:
        headers = {"x-goog-api-key": self.api_key} if self.api_key else {}
        try:
            r = httpx.request(method, f"{self.server.rstrip('/')}/{self.version}/{path}", json=json, params=params,
                              headers=headers, timeout=600)
        except httpx.TransportError as exc:
            raise TuneryError(f"cannot reach the tunery server at {self.server}: {exc}",
                              hint="start one with `tunery serve`, or pass --server URL") from exc
        if r.status_code != 200:
            body = r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else {}
            err = body.get("error", {}) if isinstance(body, dict) else {}
            raise ServerError(f"{err.get('status', r.status_code)}: {err.get('message', r.text)}")
        return r
