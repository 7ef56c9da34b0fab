"""What every route shares: its parameters' rules, and how it answers.

Routes translate a request into a command or a view query, nothing more:
one module per resource (``batches``, ``orders``, ``products``). Each route's
docstring is its description in /docs; the errors it documents are the
causes it lists (app.entrypoints.http.openapi.errors).
"""

from typing import Annotated, Any
from urllib.parse import quote, urlencode

import orjson
from fastapi import Depends, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, WithJsonSchema

from app import wire
from app.adapters.read_source import CONSISTENCY_TOKEN, POSITION
from app.entrypoints.http.dependencies import reads_of
from app.entrypoints.http.security import bearer

# With API_TOKEN set, writes need it: checked before the body is read
# (app.entrypoints.http.security); declared here for /openapi.json.
WRITER = [Depends(bearer)]


def _identifier(description: str, example: str) -> Any:
    return Path(
        min_length=1,
        max_length=wire.MAX_ID_LENGTH,
        description=f"{description} {wire.ID_RULES}",
        json_schema_extra={"pattern": wire.ID_PATTERN},
        openapi_examples={example: {"value": example}},
    )


Printable = AfterValidator(wire.printable)
BatchRef = Annotated[str, _identifier("The batch's reference.", "batch-001"), Printable]
OrderId = Annotated[str, _identifier("The order's id.", "order-001"), Printable]
Sku = Annotated[str, _identifier("The product's sku.", "SMALL-TABLE"), Printable]
HoldId = Annotated[str, _identifier("The hold's id.", "hold-001"), Printable]
OptionalSku = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=wire.MAX_ID_LENGTH,
        description=f"Only those of this sku. {wire.ID_RULES}",
    ),
    AfterValidator(lambda value: None if value is None else wire.printable(value)),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": wire.MAX_ID_LENGTH,
            "pattern": wire.ID_PATTERN,
        }
    ),
]
After = Annotated[
    str | None,
    Query(
        pattern=f"^{POSITION.pattern}$",
        description="A write's position, from its `Location` or its "
        f"`{CONSISTENCY_TOKEN}` header: the answer includes that write. Without it, "
        "a read is as fresh as the database it is served from (docs/scaling.md).",
        # No example: "Try it out" would fill it in, and send it, for every read.
    ),
    # Optional as a parameter, a string when given: not "string or null".
    WithJsonSchema({"type": "string", "pattern": f"^{POSITION.pattern}$"}),
]


def answer(request: Request, body: Any, headers: dict[str, str] | None = None) -> Response:
    """Every answer but an error's: JSON, with the status its route declares.

    A write's body is its route's response model; a read's is the plain,
    already-valid data of its view, which the model describes: orjson writes
    it several times faster than validating it again would (make bench: reads).
    """
    content = body.model_dump_json() if isinstance(body, BaseModel) else orjson.dumps(body)
    status_code: int = request.scope["route"].status_code or 200
    return Response(content, status_code, headers, media_type="application/json")


def positioned(location: str, position: str | None) -> str:
    # With one database every read sees every write: no position to give.
    return location if position is None else f"{location}?after={position}"


def headers_of(location: str) -> dict[str, str]:
    """A write's headers, all read from its ``Location``, as a replayed answer gets them too."""
    _, _, position = location.partition("?after=")  # ids in the path are quoted: no "?" there
    return (
        {"Location": location, CONSISTENCY_TOKEN: position} if position else {"Location": location}
    )


def order_headers_of(location: str) -> dict[str, str]:
    # The Link of before the Location named the order, kept for those who follow it.
    return {**headers_of(location), "Link": f'<{location}>; rel="order"'}


async def location(request: Request, name: str, **params: str) -> str:
    """Where to read what a write did, with the write's position when reads may lag."""
    # Ids may hold "?", "#", "%" or non-ASCII letters: each is quoted as one path segment.
    quoted = {key: quote(value, safe="") for key, value in params.items()}
    root_path: str = request.scope.get("root_path", "")
    location = root_path + str(request.app.url_path_for(name, **quoted))
    return positioned(location, await reads_of(request).position())


# Pages: a list or a history comes ``limit`` items at a time, each page naming
# the next by its cursor, the last key it holds (app.views): any value of the
# cursor's form starts a page, after it.
Limit = Annotated[int, Query(ge=1, le=1000, description="Items a page holds, 1 to 1,000.")]


def cursor(description: str, schema: dict[str, Any]) -> Any:
    return Query(alias="cursor", description=f"Where the page starts: {description}", **schema)


ID_CURSOR = {"max_length": 2 * wire.MAX_ID_LENGTH + 1, "pattern": r"^[^\x00]*$"}  # no NUL: text
SEQUENCE_CURSOR = {"pattern": r"^[0-9]{1,18}$"}


def page(request: Request, items: list[Any], last: str | None) -> Response:
    """A page: its items, and ``next``, the URL of the one after (null for the last), also
    as ``Link: <...>; rel="next"``; ``last`` is the cursor it starts from."""
    next_url = None
    headers = None
    if last is not None:
        query = urlencode({**request.query_params, "cursor": last})
        root_path: str = request.scope.get("root_path", "")
        path = quote(request.url.path.removeprefix(root_path))  # a header is ASCII
        next_url = f"{root_path}{path}?{query}"
        headers = {"Link": f'<{next_url}>; rel="next"'}
    return answer(request, {"items": items, "next": next_url}, headers)


HistoryCursor = Annotated[
    str | None, cursor("the `cursor` of the page before's `next`.", SEQUENCE_CURSOR)
]
