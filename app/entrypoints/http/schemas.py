"""The wire format: request bodies as validated models, answers as plain models."""

from datetime import date, datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from app.entrypoints.http import problems
from app.wire import ID_RULES, Eta, HoldSeconds, Identifier, NewQuantity, Quantity

# Examples that work as they stand, in this order: "Try it out" in /docs sends them.
# FastAPI leaves nulls out of /openapi.json, so /docs shows the first without "eta".
BATCH_EXAMPLE: JsonDict = {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20, "eta": None}
SHIPMENT_EXAMPLE: JsonDict = {
    "ref": "batch-002",
    "sku": "SMALL-TABLE",
    "qty": 50,
    "eta": "2031-06-30",
}
LINE_EXAMPLE: JsonDict = {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}
QUANTITY_EXAMPLE: JsonDict = {"qty": 10}
CANCEL_EXAMPLE: JsonDict = {"orderid": "order-001", "sku": "SMALL-TABLE"}
HOLD_EXAMPLE: JsonDict = {"holdid": "hold-001", "lines": [{"sku": "SMALL-TABLE", "qty": 2}]}


def _no_default(schema: JsonDict) -> None:
    # Absent, not null: a default of null beside a type without it contradicts it.
    schema.pop("default", None)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchIn(Request):
    ref: Identifier = Field(description="Batch reference, unique across skus. " + ID_RULES)
    sku: Identifier = Field(description="The product the batch holds. " + ID_RULES)
    qty: Quantity = Field(description="Units purchased.")
    eta: Eta = Field(
        None,
        description="Expected arrival, 1970-01-01 to 2199-12-31; null or left out for "
        "stock in the warehouse.",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [BATCH_EXAMPLE, SHIPMENT_EXAMPLE]})


class AllocateIn(Request):
    orderid: Identifier = Field(description="The order the line belongs to. " + ID_RULES)
    sku: Identifier = Field(description="The product ordered. " + ID_RULES)
    qty: Quantity = Field(description="Units ordered.")

    model_config = ConfigDict(json_schema_extra={"examples": [LINE_EXAMPLE]})


class Reason(StrEnum):
    """Why a batch changes: the ledger keeps it with the change."""

    received = "received"
    damaged = "damaged"
    lost = "lost"
    counted = "count"  # (str has a method count)
    correction = "correction"
    other = "other"


class BatchChange(Request):
    qty: NewQuantity | None = Field(None, description="The batch's new purchased quantity.")
    eta: Eta = Field(
        None,
        description="Its new arrival, `YYYY-MM-DD`, or null: in the warehouse now. Left "
        "out, the arrival stays as it is; set, the batch takes its new place in the order "
        "later allocations use.",
    )
    reason: Reason = Field(Reason.correction, description="Why: `other` wants a `note`.")
    note: str | None = Field(
        None,
        max_length=500,
        # Text a database stores: no NUL, no control character but tab and line breaks.
        pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$",
        description="What happened, in a few words (with `other`).",
    )

    # What the validator below asks, said in the schema too: something to change, and
    # with `other` a note of at least a letter.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [QUANTITY_EXAMPLE],
            "anyOf": [
                {"required": ["qty"], "properties": {"qty": {"type": "integer"}}},
                {"required": ["eta"]},
            ],
            "if": {"properties": {"reason": {"const": "other"}}, "required": ["reason"]},
            "then": {
                "required": ["note"],
                "properties": {"note": {"type": "string", "pattern": "[^ ]"}},
            },
        }
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if self.qty is None and "eta" not in self.model_fields_set:  # qty null is none given
            raise ValueError("give the batch's new qty, its new eta, or both")
        if self.reason is Reason.other and not (self.note or "").strip():
            raise ValueError("reason other wants a note saying what happened")
        return self


class LineIn(Request):
    orderid: Identifier = Field(description="The order the line belongs to. " + ID_RULES)
    sku: Identifier = Field(description="The product of the line. " + ID_RULES)

    model_config = ConfigDict(json_schema_extra={"examples": [CANCEL_EXAMPLE]})


class HoldLineIn(Request):
    sku: Identifier = Field(description="The product to hold. " + ID_RULES)
    qty: Quantity = Field(description="Units to hold.")


class HoldIn(Request):
    holdid: Identifier = Field(description="The hold's id, the caller's choice. " + ID_RULES)
    lines: list[HoldLineIn] = Field(
        min_length=1,
        max_length=100,
        description="Its lines; two of one sku are one line of their sum.",
    )
    ttl_s: HoldSeconds = Field(600, description="Seconds it lasts, 1 to 3,600.")

    model_config = ConfigDict(json_schema_extra={"examples": [HOLD_EXAMPLE]})

    def units(self) -> tuple[tuple[str, int], ...]:
        """(sku, qty) of each sku the lines name: lines of one sku are one line, of their sum."""
        summed: dict[str, int] = {}
        for line in self.lines:
            summed[line.sku] = summed.get(line.sku, 0) + line.qty
        return tuple(summed.items())


class HoldTime(Request):
    ttl_s: HoldSeconds = Field(600, description="Seconds from now it lasts, 1 to 3,600.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"ttl_s": 900}]})


class HoldConfirm(Request):
    orderid: Identifier = Field(description="The order the lines become. " + ID_RULES)

    model_config = ConfigDict(json_schema_extra={"examples": [{"orderid": "order-003"}]})


def _answers(*examples: JsonDict) -> ConfigDict:
    """What the Try-it-out examples, run in order, get: the examples of an answer."""
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class BatchCreated(BaseModel):
    ref: str

    model_config = _answers({"ref": "batch-001"})


class AllocationAccepted(BaseModel):
    orderid: str

    model_config = _answers({"orderid": "order-001"})


class BatchAccepted(BaseModel):
    ref: str

    model_config = _answers({"ref": "batch-001"})


class Allocation(BaseModel):
    sku: str
    batchref: str

    model_config = _answers({"sku": "SMALL-TABLE", "batchref": "batch-001"})


class LineState(StrEnum):
    """`allocated` to `batchref`; `out_of_stock`: accepted, but no batch could take it
    (sending the same line again once stock is added allocates it); or `cancelled`
    (`POST /deallocate`)."""

    allocated = "allocated"
    out_of_stock = "out_of_stock"
    cancelled = "cancelled"


class OrderLine(BaseModel):
    sku: str
    state: LineState
    batchref: str | None


class Order(BaseModel):
    orderid: str
    lines: list[OrderLine]

    model_config = _answers(
        {
            "orderid": "order-001",
            "lines": [{"sku": "SMALL-TABLE", "state": "allocated", "batchref": "batch-001"}],
        },
        {
            "orderid": "order-002",
            "lines": [{"sku": "SMALL-TABLE", "state": "out_of_stock", "batchref": None}],
        },
    )


class BatchOut(BaseModel):
    reference: str
    sku: str
    eta: date | None
    purchased: int
    allocated: int
    held: int = Field(description="Units active holds keep.")
    available: int = Field(description="What an allocation or a hold may take.")

    model_config = _answers(
        {
            "reference": "batch-001",
            "sku": "SMALL-TABLE",
            "eta": None,
            "purchased": 20,
            "allocated": 2,
            "held": 0,
            "available": 18,
        }
    )


class HoldState(StrEnum):
    """`held` until `expires_at`; then `expired`, its units free; or `confirmed` into an
    order, or `released` (`DELETE`) before."""

    held = "held"
    confirmed = "confirmed"
    released = "released"
    expired = "expired"


class HeldLine(BaseModel):
    sku: str
    qty: int
    batchref: str | None = Field(
        description="The batch keeping the units; null if the batch's quantity fell below "
        "what it kept (confirming then places the line as any new one)."
    )


class Hold(BaseModel):
    holdid: str
    state: HoldState
    expires_at: datetime = Field(description="When it expires, in UTC.")
    orderid: str | None = Field(description="The order a confirmed hold's lines went to.")
    lines: list[HeldLine]

    model_config = _answers(
        {
            "holdid": "hold-001",
            "state": "held",
            "expires_at": "2026-12-08T12:10:00.123456+00:00",
            "orderid": None,
            "lines": [{"sku": "SMALL-TABLE", "qty": 2, "batchref": "batch-001"}],
        }
    )


class BatchStock(BaseModel):
    reference: str
    eta: date | None
    available: int


class ProductOut(BaseModel):
    sku: str
    available_now: int = Field(description="Units in the warehouse (batches with no eta).")
    incoming: int = Field(description="Units still to arrive in shipments.")
    batches: list[BatchStock] = Field(description="In the order allocation uses them.")

    model_config = _answers(
        {
            "sku": "SMALL-TABLE",
            "available_now": 18,
            "incoming": 50,
            "batches": [
                {"reference": "batch-001", "eta": None, "available": 18},
                {"reference": "batch-002", "eta": "2031-06-30", "available": 50},
            ],
        }
    )


class Health(BaseModel):
    status: str = Field(description="`ok`: the process answers.")

    model_config = _answers({"status": "ok"})


class Readiness(BaseModel):
    status: str = Field(description="`ready`.", examples=["ready"])
    checks: dict[str, str] = Field(
        description="Each dependency's state: `ok`, `off` (not configured), `degraded: ...` "
        "(the replica, which reads do without) or `error: ...`.",
    )

    model_config = _answers(
        {
            "status": "ready",
            "checks": {"database": "ok", "replica": "off", "redis": "off", "nats": "off"},
        }
    )


class FieldError(BaseModel):
    loc: list[str | int] = Field(
        description="Where: `body`, `path`, `query` or `header`, then the field's name."
    )
    message: str = Field(description="What is wrong with it, for a person to read.")


# Every problem type, a constant each: what /openapi.json lists as ProblemType's values,
# with the constants' names beside them (openapi.install adds ``x-enum-varnames``).
ProblemType = StrEnum(  # type: ignore[misc]
    "ProblemType",
    [(kind.constant, kind.uri) for kind in problems.TYPES.values()]
    + [("ABOUT_BLANK", "about:blank")],
)


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (`application/problem+json`): `type` names its
    cause, and the *errors* section lists every one."""

    type: ProblemType = Field(
        description="The cause: a URI that names it, the same wherever the service runs. "
        "Compare it, do not fetch it. One of the registry's types (a generated client has "
        "a constant for each), or `about:blank` for an HTTP error with nothing to add."
    )
    title: str = Field(description="The cause in a few words: the same for every answer of it.")
    status: int = Field(description="The HTTP status of the answer.")
    detail: str = Field(description="What went wrong this time, for a person to read.")
    message: str = Field(description="The same as `detail`: the book's name for it.")
    # Members of one type each: not "null" when absent, as a generated client would have it.
    errors: list[FieldError] | SkipJsonSchema[None] = Field(
        None,
        description="`invalid-input` only: each invalid field, with its own message.",
        json_schema_extra=_no_default,
    )
    checks: dict[str, str] | SkipJsonSchema[None] = Field(
        None,
        description="`not-ready` only: each dependency's state, as when ready.",
        json_schema_extra=_no_default,
    )
    short: list[str] | SkipJsonSchema[None] = Field(
        None,
        description="`hold-short` only: each sku that has not the units asked for.",
        json_schema_extra=_no_default,
    )


class BatchPage(BaseModel):
    items: list[BatchOut]
    next: str | None = Field(description="The next page, or null: this is the last.")


class ListedLine(BaseModel):
    orderid: str
    sku: str
    state: LineState
    batchref: str | None
    qty: int


class LinePage(BaseModel):
    items: list[ListedLine]
    next: str | None = Field(description="The next page, or null: this is the last.")


class HistoryEntry(BaseModel):
    """One change, as the stock ledger recorded it in the change's own transaction."""

    at: datetime = Field(description="When, in UTC.")
    kind: str = Field(
        description="`added`, `changed` (the batch's purchased units); `allocated`, "
        "`reallocated` (placed again after its batch shrank), `deallocated` (taken off a "
        "batch that shrank), `cancelled` (the line's units); `refused` (no batch had stock); "
        "`held` (kept for a hold), then `released`, `expired`, `confirmed` (allocated to "
        "the order next) or `lost` (its batch shrank)."
    )
    sku: str
    batchref: str | None
    orderid: str | None
    holdid: str | None = Field(description="A hold's entry: the hold.")
    qty: int = Field(
        description="The change to the batch's available units: a product's entries add "
        "up to what it has available."
    )
    line_qty: int | None = Field(description="An order line's entry: the line's units.")
    reason: str | None = Field(description="A batch's change: why (`received`, `count`, ...).")
    note: str | None
    request_id: str | None = Field(description="The `X-Request-ID` the write answered.")
    idempotency_key: str | None = Field(description="The write's `Idempotency-Key`, if any.")
    version: int = Field(description="The product's version after the change.")


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next: str | None = Field(description="The next page, or null: this is the last.")


# The models whose examples /openapi.json shows (app.entrypoints.http.openapi.install).
EXAMPLED = (
    HoldIn,
    HoldTime,
    HoldConfirm,
    Hold,
    BatchIn,
    AllocateIn,
    BatchChange,
    LineIn,
    BatchCreated,
    AllocationAccepted,
    BatchAccepted,
    Allocation,
    Order,
    BatchOut,
    ProductOut,
    Health,
    Readiness,
)
