"""docs/api.md lists every problem type the service answers with, as the code names it."""

import re
from pathlib import Path

from app.entrypoints.http import problems

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([a-z-]+)` \| (\d{3}) \| ([^|]+) \| ([^|]+) \|$", re.M)


def documented() -> dict[str, tuple[int, str, str]]:
    """Each row of docs/api.md's table of types: its URI, status, title and when."""
    text = (ROOT / "docs" / "api.md").read_text()
    assert f"Each type is `{problems.TYPE_PREFIX}` and the name below" in text
    rows = ROW.findall(text)
    names = [name for name, *_ in rows]
    assert len(names) == len(set(names)), "a type documented twice"
    return {
        problems.TYPE_PREFIX + name: (int(status), title.strip(), when.strip())
        for name, status, title, when in rows
    }


def test_docs_api_lists_each_type_with_its_status_title_and_cause() -> None:
    assert documented() == {
        kind.uri: (kind.status, kind.title, kind.when) for kind in problems.TYPES.values()
    }


def test_a_type_is_one_uri_the_same_in_every_deployment() -> None:
    for kind in problems.TYPES.values():
        # An identifier under the service's own tag: no host, no path prefix, no site.
        assert re.fullmatch(r"tag:allocation-service,2026:problems/[a-z]+(-[a-z]+)*", kind.uri)
    titles = [kind.title for kind in problems.TYPES.values()]
    assert len(titles) == len(set(titles)), "two causes under one title"
