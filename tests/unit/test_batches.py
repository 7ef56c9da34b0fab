from datetime import date, timedelta

from app.domain.model import Batch, OrderLine

today = date.today()
tomorrow = today + timedelta(days=1)
later = tomorrow + timedelta(days=10)


def make_batch_and_line(sku: str, batch_qty: int, line_qty: int) -> tuple[Batch, OrderLine]:
    return Batch("batch-001", sku, batch_qty, eta=None), OrderLine("order-123", sku, line_qty)


def test_allocating_to_a_batch_reduces_the_available_quantity() -> None:
    batch, line = make_batch_and_line("SMALL-TABLE", 20, 2)

    batch.allocate(line)

    assert batch.available_quantity == 18
    assert batch.allocated_quantity == 2


def test_can_allocate_if_available_greater_than_required() -> None:
    large_batch, small_line = make_batch_and_line("ELEGANT-LAMP", 20, 2)
    assert large_batch.can_allocate(small_line)


def test_can_allocate_if_available_equal_to_required() -> None:
    batch, line = make_batch_and_line("ELEGANT-LAMP", 2, 2)
    assert batch.can_allocate(line)


def test_cannot_allocate_if_available_smaller_than_required() -> None:
    small_batch, large_line = make_batch_and_line("ELEGANT-LAMP", 2, 20)
    assert not small_batch.can_allocate(large_line)


def test_cannot_allocate_once_earlier_lines_have_used_the_stock() -> None:
    batch, line = make_batch_and_line("ELEGANT-LAMP", 10, 6)
    batch.allocate(line)
    assert not batch.can_allocate(OrderLine("order-456", "ELEGANT-LAMP", 5))


def test_cannot_allocate_if_skus_do_not_match() -> None:
    batch = Batch("batch-001", "UNCOMFORTABLE-CHAIR", 100, eta=None)
    different_sku_line = OrderLine("order-123", "EXPENSIVE-TOASTER", 10)
    assert not batch.can_allocate(different_sku_line)


def test_deallocate_one_returns_a_line_and_restores_its_quantity() -> None:
    batch, line = make_batch_and_line("DECORATIVE-TRINKET", 20, 2)
    batch.allocate(line)

    assert batch.deallocate_one() == line

    assert batch.available_quantity == 20
    assert batch.allocations == set()


def test_sorting_puts_warehouse_stock_first_then_the_earliest_eta() -> None:
    latest = Batch("latest", "SPOON", 10, eta=later)
    in_stock = Batch("in-stock", "SPOON", 10, eta=None)
    earliest = Batch("earliest", "SPOON", 10, eta=tomorrow)

    assert sorted([latest, in_stock, earliest]) == [in_stock, earliest, latest]
    assert sorted([earliest, latest, in_stock]) == [in_stock, earliest, latest]
