"""Who may write: with API_TOKEN set, every write route wants it as a bearer token.

Reads stay open. Without API_TOKEN, writes are open too, and the service
says so in its log at startup.
"""

import secrets
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from app.entrypoints.api.dependencies import ServiceSettings

MISSING = "This route needs `Authorization: Bearer <token>`"
INVALID = "The bearer token is not valid"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="API token",
    description="The service's `API_TOKEN`, when it has one set. Only writes need it.",
)


async def require_writer(
    settings: ServiceSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if settings.api_token is None:
        return
    if credentials is None:
        raise _unauthorized(MISSING)
    expected = settings.api_token.get_secret_value().encode()
    # Constant time: how much of a guess was right must not show in the timing.
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise _unauthorized(INVALID, error="invalid_token")


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="allocation"'
    if error is not None:
        challenge += f', error="{error}"'
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": challenge})
