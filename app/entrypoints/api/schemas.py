"""The wire format: request bodies as validated models, answers as plain models."""

import re
from datetime import date
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

MAX_ID_LENGTH = 255
MAX_QTY = 1_000_000_000


def printable(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(value: Any) -> Any:
    # pydantic alone would also read numbers and digit strings as Unix times.
    if value is None or isinstance(value, date):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date as YYYY-MM-DD, or null")


Identifier = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH, strict=True),
    AfterValidator(printable),
]
Quantity = Annotated[int, Field(gt=0, le=MAX_QTY, strict=True)]
NewQuantity = Annotated[int, Field(ge=0, le=MAX_QTY, strict=True)]
# Shipments dated from the past (the book's are) to well beyond any real one.
EARLIEST_ETA, LATEST_ETA = date(1970, 1, 1), date(2199, 12, 31)


def _eta_in_range(value: date | None) -> date | None:
    if value is not None and not EARLIEST_ETA <= value <= LATEST_ETA:
        raise ValueError(f"must be between {EARLIEST_ETA} and {LATEST_ETA}")
    return value


Eta = Annotated[date | None, BeforeValidator(_iso_date), AfterValidator(_eta_in_range)]

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
    ref: Identifier = Field(description="Batch reference, unique across skus.")
    sku: Identifier = Field(description="The product the batch holds.")
    qty: Quantity = Field(description="Units purchased.")
    eta: Eta = Field(
        None,
        description="Expected arrival, 1970-01-01 to 2199-12-31; null or left out for "
        "stock in the warehouse.",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [BATCH_EXAMPLE, SHIPMENT_EXAMPLE]})


class AllocateIn(Request):
    orderid: Identifier = Field(description="The order the line belongs to.")
    sku: Identifier = Field(description="The product ordered.")
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


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Error(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    detail: list[ErrorDetail] | None = Field(
        None, description="Each invalid field, for 422 answers."
    )
