"""Tables: the write model's, the read side's projections, the outbox's.

The domain knows nothing of them: the repository reads and writes the
aggregate with Core statements on these tables (app.adapters.repository).
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite

REF = 255  # longest reference, sku or order id, in characters

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

products = Table(
    "products",
    metadata,
    Column("sku", String(REF), primary_key=True),
    Column("version_number", Integer, nullable=False, server_default="0"),
    # Since a line of the sku could not be allocated, until stock is added.
    Column("out_of_stock", Boolean, nullable=False, server_default=false()),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reference", String(REF), nullable=False, unique=True),
    Column("sku", ForeignKey("products.sku"), nullable=False, index=True),
    Column("purchased_quantity", Integer, nullable=False),
    Column("allocated_quantity", Integer, nullable=False, server_default="0"),
    Column("held_quantity", Integer, nullable=False, server_default="0"),  # kept for holds
    Column("eta", Date, nullable=True),
    # The product's version when the batch last changed: its quantity, eta or
    # allocations (its ETag, which If-Match compares).
    Column("version", Integer, nullable=False, server_default="0"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("orderid", String(REF), nullable=False),
    Column("sku", String(REF), nullable=False),
    Column("qty", Integer, nullable=False),
    # An order holds at most one line of a sku: the database says so too.
    UniqueConstraint("orderid", "sku"),
)

allocations = Table(
    "allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("orderline_id", ForeignKey("order_lines.id"), nullable=False, unique=True),
    Column("batch_id", ForeignKey("batches.id"), nullable=False),
    Index("ix_allocations_batch_id", "batch_id"),
)

# The units each hold keeps of its sku, in one batch: its Product's part of the hold.
hold_lines = Table(
    "hold_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # in the order placed
    Column("holdid", String(REF), nullable=False),
    Column("sku", String(REF), nullable=False),
    Column("batch_id", ForeignKey("batches.id"), nullable=False, index=True),
    Column("qty", Integer, nullable=False),
    UniqueConstraint("holdid", "sku"),
)

# Each hold as a whole: its state, its deadline, its lines as asked for (``lines``,
# [{sku, qty, batchref}]) and the order it was confirmed into. The deadline loop
# finds the holds due by the partial index.
holds = Table(
    "holds",
    metadata,
    Column("holdid", String(REF), primary_key=True),
    Column("state", String(16), nullable=False),  # held, confirmed, released, expired
    Column("expires_at", DateTime, nullable=False),
    Column("orderid", String(REF), nullable=True),
    Column("lines", JSON, nullable=False),
    Column("version", Integer, nullable=False, server_default="0"),  # one more each change
)
Index(
    "ix_holds_due",
    holds.c.expires_at,
    postgresql_where=holds.c.state == "held",
    sqlite_where=holds.c.state == "held",
)

# Per batch, when the change that set its quantity last came (milliseconds,
# then a sequence: a stream entry's id, when a pub/sub message was received,
# or when a change over HTTP was applied), written in the same transaction:
# an older change, redelivered, claimed or replayed after a newer one was
# applied, finds it here and changes nothing.
batch_change_positions = Table(
    "batch_change_positions",
    metadata,
    Column("reference", ForeignKey("batches.reference"), primary_key=True),
    Column("position_ms", BigInteger, nullable=False),
    Column("position_seq", BigInteger, nullable=False),
)

# Projections: the read side. Their rows carry the product version they
# reflect, so that a late or repeated event never overwrites a newer state.
# A deallocated line stays as a row with no batchref (a tombstone) for the
# same reason.
allocations_view = Table(
    "allocations_view",
    metadata,
    Column("orderid", String(REF), primary_key=True),
    Column("sku", String(REF), primary_key=True),
    Column("batchref", String(REF), nullable=True),
    Column("version", Integer, nullable=False),
)

# Every line the service accepted, and what became of it: ``allocated`` to
# ``batchref``, ``out_of_stock`` (no batch could take it, or it lost its batch
# and none other could), or ``cancelled``. The write model keeps only the
# lines batches hold; the rest is in the ledger, which rebuild-views reads.
order_lines_view = Table(
    "order_lines_view",
    metadata,
    Column("orderid", String(REF), primary_key=True),
    Column("sku", String(REF), primary_key=True),
    Column("qty", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("batchref", String(REF), nullable=True),
    Column("version", Integer, nullable=False),
    Index("ix_order_lines_view_sku_orderid", "sku", "orderid"),
    Index("ix_order_lines_view_state_orderid", "state", "orderid"),
)

# The stock ledger: one row per change of a batch's purchased or allocated
# units (and per line refused or cancelled), written in the change's own
# transaction and never updated. ``qty`` is the change to the batch's
# available units: a product's rows add up to what it has available.
# The kinds of rows whose units are purchased ones, those whose units are held ones;
# every other kind's are allocated ones.
PURCHASED = ("added", "changed")
HELD = ("held", "released", "expired", "confirmed", "lost")
LEDGER_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite's rowid is an INTEGER
stock_ledger = Table(
    "stock_ledger",
    metadata,
    Column("id", LEDGER_ID, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    # added, changed (purchased); held, released, expired, confirmed, lost (held);
    # allocated, reallocated, deallocated, cancelled (allocated); refused (none)
    Column("kind", String(16), nullable=False),
    Column("sku", String(REF), nullable=False),
    Column("batchref", String(REF), nullable=True),
    Column("orderid", String(REF), nullable=True),
    Column("holdid", String(REF), nullable=True),  # a hold's row: the hold
    Column("qty", Integer, nullable=False),
    Column("line_qty", Integer, nullable=True),  # a line's row: the units the line is of
    Column("reason", String(32), nullable=True),
    Column("note", Text, nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("idempotency_key", String(REF), nullable=True),
    Column("version", Integer, nullable=False),
    Index("ix_stock_ledger_orderid_id", "orderid", "id"),
    Index("ix_stock_ledger_sku_id", "sku", "id"),
    # None by batch: only `allocation reconcile` reads by batch, in one pass of all rows.
)

batches_view = Table(
    "batches_view",
    metadata,
    Column("reference", String(REF), primary_key=True),
    Column("sku", String(REF), nullable=False, index=True),
    Column("eta", Date, nullable=True),
    Column("purchased", Integer, nullable=False),
    Column("allocated", Integer, nullable=False),
    Column("held", Integer, nullable=False, server_default="0"),
    Column("version", Integer, nullable=False),
)

# The transactional outbox: every event, written in the transaction that
# raised it, until all its handlers have run. Times are naive UTC.
outbox = Table(
    "outbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("sku", String(REF), nullable=True),
    Column("version", Integer, nullable=True),
    Column("created_at", DateTime, nullable=False),
    # Until then the event belongs to whoever wrote or claimed it last.
    Column("available_at", DateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("completed_at", DateTime, nullable=True),
)
Index(
    "ix_outbox_pending",
    outbox.c.available_at,
    postgresql_where=outbox.c.completed_at.is_(None),
    sqlite_where=outbox.c.completed_at.is_(None),
)
Index("ix_outbox_completed_at", outbox.c.completed_at)
# A product's undelivered events, by version: what comes before one (app.adapters.outbox).
Index(
    "ix_outbox_undelivered_by_product",
    outbox.c.sku,
    outbox.c.version,
    postgresql_where=outbox.c.completed_at.is_(None),
    sqlite_where=outbox.c.completed_at.is_(None),
)

# Which handler has processed which event, written in the handler's own
# transaction: a redelivered event finds its finished handlers here.
processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", String(32), primary_key=True),
    Column("handler", String(100), primary_key=True),
    Column("processed_at", DateTime, nullable=False),
)

# Idempotency-Key of a write, and its answer once there is one (NULL status:
# the request is still running). ``fingerprint`` is a sha256 of the method,
# path and validated body.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("idempotency_key", String(REF), primary_key=True),
    Column("request", String(100), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=True),
    Column("body", Text, nullable=True),
    Column("location", Text, nullable=True),
    # Who reserved it (app.adapters.liveness): a dead owner's reservation is taken over.
    Column("owner", String(100), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
)


def insert_on_conflict(table: Table, dialect_name: str) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` that takes ON CONFLICT clauses, in the dialect's construct."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
