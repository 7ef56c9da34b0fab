"""What the README shows, as the tests run it."""

import re

from tests.support.databases import ROOT

_HTTPX_EXAMPLE = re.compile(r"<!-- httpx-example -->\n```python\n(.*?)```", re.DOTALL)


def httpx_example() -> str:
    """The README's httpx example, the code as it stands there."""
    match = _HTTPX_EXAMPLE.search((ROOT / "README.md").read_text())
    assert match is not None, "README.md has no httpx example"
    return match.group(1)


# What the example prints, run against a service with nothing in it yet.
HTTPX_EXAMPLE_PRINTS = [
    "[{'sku': 'SMALL-TABLE', 'state': 'allocated', 'batchref': 'batch-001'}]",
    "Order order-001 already has 2 of SMALL-TABLE allocated to batch batch-001",
]
