"""The wire format: request bodies as validated models, answers as plain models."""

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.entrypoints.fields import ID_RULES, Eta, Identifier, NewQuantity, Quantity

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


class QuantityIn(Request):
    qty: NewQuantity = Field(description="The batch's new purchased quantity.")

    model_config = ConfigDict(json_schema_extra={"examples": [QUANTITY_EXAMPLE]})


class BatchCreated(BaseModel):
    ref: str


class AllocationAccepted(BaseModel):
    orderid: str


class BatchAccepted(BaseModel):
    ref: str


class Allocation(BaseModel):
    sku: str
    batchref: str


class OrderLineState(BaseModel):
    sku: str
    state: Literal["allocated", "out_of_stock"] = Field(
        description="`allocated` to `batchref`; or `out_of_stock`: accepted, but no batch "
        "could take it (sending the same line again once stock is added allocates it)."
    )
    batchref: str | None


class Order(BaseModel):
    orderid: str
    lines: list[OrderLineState]


class BatchOut(BaseModel):
    reference: str
    sku: str
    eta: date | None
    purchased: int
    allocated: int
    available: int


class BatchStock(BaseModel):
    reference: str
    eta: date | None
    available: int


class ProductOut(BaseModel):
    sku: str
    available_now: int = Field(description="Units in the warehouse (batches with no eta).")
    incoming: int = Field(description="Units still to arrive in shipments.")
    batches: list[BatchStock] = Field(description="In the order allocation uses them.")


class Health(BaseModel):
    status: str = Field(description="`ok`: the process answers.", examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(description="`ready`.", examples=["ready"])
    checks: dict[str, str] = Field(
        description="Each dependency's state: `ok`, `off` (not configured), `degraded: ...` "
        "(the replica, which reads do without) or `error: ...`.",
        examples=[{"database": "ok", "replica": "off", "redis": "ok"}],
    )


class Error(BaseModel):
    """The body of every error answer but a 422's."""

    message: str = Field(description="What went wrong, for a person to read.")


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `path` or `header`, then the field.")
    msg: str
    type: str


class InvalidInput(Error):
    """The body of a 422: the first invalid field in ``message``, each in ``detail``."""

    detail: list[ErrorDetail] | None = Field(
        None, description="Each invalid field; absent when the body is not JSON at all."
    )


class NotReady(Error):
    checks: dict[str, str] = Field(description="Each dependency's state, as when ready.")
