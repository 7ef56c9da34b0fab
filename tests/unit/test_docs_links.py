"""The README is a front page: short, and every link it or the docs hold leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_that_exists(document: Path) -> None:
    for target, _ in LINK.findall(document.read_text()):
        if "://" in target:
            continue
        assert (document.parent / target).exists(), f"{document.name}: {target}"


def test_the_readme_links_every_document_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    for document in DOCUMENTS[1:]:
        assert f"(docs/{document.name})" in readme, document.name
    assert len(readme) < 12_000
    assert "CDN" not in readme  # Swagger UI's files are served by the service itself


def test_the_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run " in readme
    assert "make test " in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_module_and_test_a_document_names_exists(document: Path) -> None:
    named = re.findall(r"\b(?:app|tests|bench)/[\w/]+\.\w+", document.read_text())
    assert named or document.name in {"settings.md", "api.md"}
    assert [path for path in named if not (ROOT / path).exists()] == []
