"""Who may write: with API_TOKEN set, every write route wants it as a bearer token.

Reads stay open. Without API_TOKEN, writes are open too, and the service
says so in its log at startup.
"""

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

MISSING = "This route needs `Authorization: Bearer <token>`"
INVALID = "The bearer token is not valid"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="API token",
    description="The service's `API_TOKEN`, when it has one set. Only writes need it.",
)


async def require_writer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected: bytes | None = request.app.state.api_token
    if expected is None:
        return
    if credentials is None:
        raise _unauthorized(MISSING)
    # Constant time: how much of a guess was right must not show in the timing.
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise _unauthorized(INVALID, error="invalid_token")


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="allocation"'
    if error is not None:
        challenge += f', error="{error}"'
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": challenge})
