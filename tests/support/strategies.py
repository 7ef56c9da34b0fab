"""Hypothesis strategies for commands, drawn from few names so that they collide.

A handful of skus, batch references and order ids means that generated
sequences reuse a reference, allocate an order twice and lower batches that
hold lines, rather than only ever touching something new.
"""

from collections.abc import Iterable
from datetime import date, timedelta

from hypothesis import strategies as st

from app.domain import commands
from app.domain.model import Product

MAX_QTY = 15
_FIRST_ETA = date(2030, 1, 1)

skus = st.sampled_from(["LAMP", "TABLE"])
refs = st.sampled_from([f"batch-{n}" for n in range(5)])
orderids = st.sampled_from([f"order-{n}" for n in range(6)])
quantities = st.integers(0, MAX_QTY)
# lines smaller than batches, so that a batch holds several and another has room
line_quantities = st.integers(0, MAX_QTY // 3)
# few distinct dates, so that batches often share one
etas = st.none() | st.sampled_from([_FIRST_ETA + timedelta(days=n) for n in range(3)])

create_batch = st.builds(commands.CreateBatch, ref=refs, sku=skus, qty=quantities, eta=etas)
allocate = st.builds(commands.Allocate, orderid=orderids, sku=skus, qty=line_quantities)
# now and then a negative quantity, which the domain refuses
change_batch_quantity = st.builds(
    commands.ChangeBatchQuantity, ref=refs, qty=st.integers(-1, MAX_QTY)
)


def lowering(data: st.DataObject, products: Iterable[Product]) -> commands.ChangeBatchQuantity:
    """A batch that holds lines, lowered below what it holds so that some must move.

    Failing that (nothing allocated yet), any batch lowered.
    """
    batches = sorted((b for p in products for b in p.batches), key=lambda b: b.reference)
    holding = [b for b in batches if b.allocated_quantity > 0]
    batch = data.draw(st.sampled_from(holding or batches), label="batch")
    qty = data.draw(st.integers(0, max(batch.allocated_quantity - 1, 0)), label="qty")
    return commands.ChangeBatchQuantity(batch.reference, qty)
