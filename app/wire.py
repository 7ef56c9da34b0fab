"""The wire contract: what crosses the service's edge, written once.

What an id, a quantity or a date may be is one rule wherever a message
comes from (the HTTP API's JSON Schema is made from the same types); and
the messages that cross by broker, under the book's channel names, as
both transports validate and send them and the AsyncAPI document describes
them (app.entrypoints.http.asyncapi).
"""

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

MAX_ID_LENGTH = 255
MAX_QTY = 1_000_000_000


# What an identifier may not contain, besides "/": control characters (C0, DEL,
# C1); spaces other than U+0020, and line and paragraph separators; and the
# invisible format characters of the Basic Multilingual Plane (soft hyphen,
# zero-width and direction marks, word joiners, the byte order mark...). The
# same list is the pattern /openapi.json gives, so the two cannot differ.
_REFUSED = (
    r"\x00-\x1f\x7f-\x9f/\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891"
    r"\u08e2\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ufeff\ufff9-\ufffb"
)
# Printable, not only spaces, and not "." or "..": in a URL those two are the
# path segments every client resolves away, and a Location naming one breaks.
# ECMA 262 and Python's re read it alike.
ID_PATTERN = rf"^(?!\.\.?$| *$)[^{_REFUSED}]+$"
ID_RULES = (
    "Printable: no control characters, no spaces but U+0020, no line separators or "
    "invisible format characters, and no `/`; not blank, and not `.` or `..`."
)
_ID = re.compile(ID_PATTERN)
_NOT_PRINTABLE = re.compile(f"[{_REFUSED.replace('/', '')}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(value: str) -> str:
    """``value``, if it matches ``ID_PATTERN``; the first rule it breaks, otherwise."""
    if _ID.fullmatch(value) and not _SURROGATE.search(value):
        return value  # every id but a refused one: two scans, not five
    if _SURROGATE.search(value):
        # JSON can spell a lone surrogate ("\ud800"), which no text encoding can store.
        raise ValueError("must be valid Unicode text (it holds an unpaired surrogate)")
    if not value.strip(" "):
        raise ValueError("must not be blank")
    if _NOT_PRINTABLE.search(value):
        raise ValueError("must contain printable characters only")
    if "/" in value:
        raise ValueError("must not contain '/'")
    if value in (".", ".."):
        raise ValueError(f"must not be {value!r}: a URL cannot name it as a path segment")
    raise ValueError(f"must match {ID_PATTERN}")  # pragma: no cover - each rule is above


def _integral(value: Any) -> Any:
    # JSON Schema calls 573.0 an integer, and so does the document: take it as 573.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def iso_date(value: Any) -> Any:
    # pydantic alone would also read numbers and digit strings as Unix times.
    if value is None or isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date as YYYY-MM-DD, or null")


Identifier = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        strict=True,
        json_schema_extra={"pattern": ID_PATTERN},
    ),
    AfterValidator(printable),
]
# The validator outside the constraints, so that they stay on the integer and in
# the JSON Schema: it runs first.
Quantity = Annotated[int, Field(gt=0, le=MAX_QTY, strict=True), BeforeValidator(_integral)]
HoldSeconds = Annotated[int, Field(ge=1, le=3600, strict=True), BeforeValidator(_integral)]
NewQuantity = Annotated[int, Field(ge=0, le=MAX_QTY, strict=True), BeforeValidator(_integral)]
# Shipments dated from the past (the book's are) to well beyond any real one.
EARLIEST_ETA, LATEST_ETA = date(1970, 1, 1), date(2199, 12, 31)


def eta_in_range(value: date | None) -> date | None:
    if value is not None and not EARLIEST_ETA <= value <= LATEST_ETA:
        raise ValueError(f"must be between {EARLIEST_ETA} and {LATEST_ETA}")
    return value


# The years of the range in a pattern, beside the format: JSON Schema has no
# bounds for dates.
ETA_PATTERN = "^(19[7-9][0-9]|2[01][0-9]{2})-[0-9]{2}-[0-9]{2}$"
Eta = Annotated[
    date | None,
    BeforeValidator(iso_date),
    AfterValidator(eta_in_range),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "format": "date", "pattern": ETA_PATTERN}, {"type": "null"}]}
    ),
]


# The book's channels, on every broker (Redis pub/sub and Streams, NATS JetStream).
CHANGE_BATCH_QUANTITY = "change_batch_quantity"  # in
LINE_ALLOCATED = "line_allocated"  # out
HOLD_CHANGED = "hold_changed"  # out
PREFIX_PATTERN = r"^[A-Za-z0-9_.:-]{0,64}$"


@dataclass(frozen=True)
class Names:
    """What one deployment calls each channel, stream, subject and consumer group on its
    brokers: the book's names after its ``CHANNEL_PREFIX`` (``staging.``, say), so that
    services sharing a Redis or a NATS account never take each other's messages."""

    prefix: str = ""

    def __call__(self, name: str) -> str:
        """``name`` (a channel, a stream, a subject, a group, a list) in this deployment."""
        return self.prefix + name

    @property
    def change_batch_quantity(self) -> str:
        return self(CHANGE_BATCH_QUANTITY)

    @property
    def line_allocated(self) -> str:
        return self(LINE_ALLOCATED)

    @property
    def hold_changed(self) -> str:
        return self(HOLD_CHANGED)

    def durable(self, name: str) -> str:
        """A JetStream durable consumer's name: letters, digits, ``_`` and ``-`` only."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.prefix) + name


class ChangeBatchQuantityMessage(BaseModel):
    """Set a batch's purchased quantity (change_batch_quantity)."""

    model_config = ConfigDict(extra="ignore", frozen=True, title="change_batch_quantity")

    batchref: Identifier = Field(description="The batch's reference.")
    qty: NewQuantity = Field(description="Its new purchased quantity.")
    # The sender's trace context (W3C), if it traces; one that does not parse starts a trace.
    traceparent: str | None = Field(
        None, max_length=128, description="The sender's W3C trace context, if it traces."
    )


# What every message the service publishes carries, after its own fields.
EventId = Annotated[
    str,
    Field(
        description="The event's id, the same on every broker and every redelivery: "
        "de-duplicate by it."
    ),
]
RequestId = Annotated[str | None, Field(description="The id of the request that caused it.")]
# Added by the publisher, when tracing is on (app.tracing).
Traceparent = Annotated[
    str | None,
    Field(description="The W3C trace context of the publish, when the service traces."),
]


class LineAllocatedMessage(BaseModel):
    """An order line was allocated to a batch (line_allocated)."""

    model_config = ConfigDict(frozen=True, title="line_allocated")

    orderid: str = Field(description="The order the line is of.")
    sku: str = Field(description="The line's product.")
    qty: int = Field(description="How many units were allocated.")
    batchref: str = Field(description="The batch the line was allocated to.")
    version: int = Field(
        description="Where the event stands among its product's events: a consumer keeps "
        "the highest it has seen."
    )
    event_id: EventId
    request_id: RequestId
    traceparent: Traceparent = None


class HeldLineMessage(BaseModel):
    sku: str = Field(description="The line's product.")
    qty: int = Field(description="How many units the hold keeps.")
    batchref: str | None = Field(
        description="The batch keeping them; null if it lost them (its quantity fell)."
    )


class HoldChangedMessage(BaseModel):
    """A hold was placed, extended, confirmed, released or expired, or a line of it lost its
    units to its batch's fall (hold_changed)."""

    model_config = ConfigDict(frozen=True, title="hold_changed")

    holdid: str = Field(description="The hold.")
    state: str = Field(description="held, confirmed, released or expired.")
    expires_at: datetime = Field(description="When it expires (expired), in UTC.")
    orderid: str | None = Field(description="The order a confirmed hold's lines went to.")
    lines: list[HeldLineMessage] = Field(description="Its lines.")
    version: int = Field(
        description="The hold's version, one more with each of its changes: a consumer "
        "keeps the highest it has seen."
    )
    event_id: EventId
    request_id: RequestId
    traceparent: Traceparent = None
