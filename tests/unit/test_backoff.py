from app.backoff import Backoff


def test_the_wait_doubles_with_each_failure_up_to_the_maximum() -> None:
    backoff = Backoff(base=1.0, maximum=10.0)

    assert [backoff.after(failures) for failures in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_with_jitter_each_wait_is_drawn_below_the_exponential_one() -> None:
    backoff = Backoff(base=1.0, maximum=10.0, jitter=True)

    waits = [[backoff.after(failures) for _ in range(200)] for failures in (1, 3, 6)]

    for ceiling, drawn in zip((1, 4, 10), waits, strict=True):
        assert all(0 <= w <= ceiling for w in drawn)
        assert len(set(drawn)) > 100  # drawn, not one fixed wait
        assert max(drawn) > ceiling / 2
