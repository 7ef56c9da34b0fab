"""The messages the service publishes to other services, as they are validated and sent."""

from pydantic import BaseModel, ConfigDict, Field


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
    event_id: str = Field(
        description="The event's id, the same on every broker and every redelivery: "
        "de-duplicate by it."
    )
    request_id: str | None = Field(description="The id of the request that caused it.")
    # Added by the publisher, when tracing is on (app.tracing).
    traceparent: str | None = Field(
        None, description="The W3C trace context of the publish, when the service traces."
    )
