"""The four GCE metadata-server routes google-auth asks when no credentials are given (vertex-api-contract.md §3.3).

With GCE_METADATA_HOST / GCE_METADATA_IP pointing here and GOOGLE_VERTEX_BASE_URL at this server, the notebooks'
literal `genai.Client(vertexai=True, project=..., location=...)` and `vertexai.init(...)` authenticate against
tunery. The token is a fixed local one: it grants nothing a keyless server does not already grant. With
`--api-key` these routes require the key like every other, so they cannot hand out access.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from tunery.api.errors import ApiError

router = APIRouter()
FLAVOR = {"Metadata-Flavor": "Google"}
LOCAL_TOKEN = "tunery-local"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
SERVICE_ACCOUNT = {"email": "tunery-local@tunery.invalid", "scopes": SCOPES, "aliases": ["default"]}


def _require_flavor(request: Request) -> None:
    if request.headers.get("metadata-flavor", "").lower() != "google":
        raise ApiError(403, "metadata requests need the header 'Metadata-Flavor: Google'")


@router.get("/", include_in_schema=False)
def root(request: Request) -> Response:
    """google-auth's metadata-server ping; a browser is sent to the console."""
    if request.headers.get("metadata-flavor", "").lower() == "google":
        return PlainTextResponse("ok", headers=FLAVOR)
    return RedirectResponse("/console")


@router.get("/computeMetadata/v1/project/project-id")
def project_id(request: Request) -> Response:
    _require_flavor(request)
    return PlainTextResponse("tunery-local", headers=FLAVOR)


@router.get("/computeMetadata/v1/instance/service-accounts/default/")
def service_account(request: Request) -> Response:
    _require_flavor(request)
    return JSONResponse(SERVICE_ACCOUNT, headers=FLAVOR)


@router.get("/computeMetadata/v1/instance/service-accounts/default/token")
def token(request: Request) -> Response:
    _require_flavor(request)
    return JSONResponse({"access_token": LOCAL_TOKEN, "expires_in": 3600, "token_type": "Bearer"}, headers=FLAVOR)
