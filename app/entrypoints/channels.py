"""The book's names for the events that cross the service's edge, on every broker."""

# In: {"batchref", "qty"}, a change of a batch's purchased quantity.
CHANGE_BATCH_QUANTITY = "change_batch_quantity"
# Out: {"orderid", "sku", "qty", "batchref", "event_id", "request_id"}.
LINE_ALLOCATED = "line_allocated"
