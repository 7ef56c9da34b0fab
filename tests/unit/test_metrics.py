"""A scrape shows what was counted at once, and costs a render only when something was."""

from prometheus_client import Counter

from app import metrics

SCRAPED = Counter("test_scraped_things_total", "Things counted by this test")


def value(body: bytes) -> float:
    [line] = [x for x in body.decode().splitlines() if x.startswith("test_scraped_things_total ")]
    return float(line.split()[1])


def test_what_a_request_counts_is_in_the_next_scrape() -> None:
    before = value(metrics.exposition()[0])
    SCRAPED.inc()
    metrics.request_answered("GET", "/allocations/{orderid}", 200, 0.001)

    assert value(metrics.exposition()[0]) == before + 1


def test_scrapes_with_nothing_counted_between_them_are_one_render() -> None:
    metrics.changed()
    first, _ = metrics.exposition()
    SCRAPED.inc()  # counted outside a request or a loop of the service's: not yet shown
    metrics.request_answered("GET", metrics.SCRAPE_ROUTE, 200, 0.001)  # a scrape is no change

    assert metrics.exposition()[0] is first
    metrics.changed()
    assert value(metrics.exposition()[0]) == value(first) + 1
