"""docs/settings.md, .env.example and the code name the same settings, with the same defaults.

But for compose.yaml's own variables, `.env.example` gives each setting its default.
"""

import re
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Read by others from the process environment (prometheus-client),
# or by compose.yaml only: documented, but not fields of Settings.
NOT_FIELDS = {
    "PROMETHEUS_MULTIPROC_DIR",
    "POSTGRES_PASSWORD",
    "API_ADDRESS",
    "API_PORT",
}
ROW = re.compile(r"^\| `([A-Z_]+)` \| (.*?) \| (.*) \|$", re.M)


def documented() -> dict[str, str]:
    """Each variable of docs/settings.md's table, with its default as written there."""
    rows = ROW.findall((ROOT / "docs" / "settings.md").read_text())
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), "a setting documented twice"
    return {name: default for name, default, _ in rows}


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))


def in_env_example() -> set[str]:
    return set(env_example())


def fields() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def test_every_setting_is_documented_once_and_listed_in_env_example() -> None:
    assert set(documented()) == fields() | NOT_FIELDS
    assert in_env_example() == fields() | NOT_FIELDS


def test_no_other_document_keeps_a_table_of_settings() -> None:
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        if path.name != "settings.md":
            assert "| variable | default |" not in path.read_text(), path


@pytest.mark.parametrize("name", sorted(fields()))
def test_the_documented_default_is_the_codes(name: str) -> None:
    default = Settings.model_fields[name.lower()].default
    written = documented()[name]
    if default is None:
        assert written == "unset"
    elif default is PydanticUndefined:  # pragma: no cover - every field has one
        pytest.fail(f"{name} has no default")
    elif default == "":
        assert written == "empty"
    else:
        assert_same(written.strip("`"), default)


@pytest.mark.parametrize("name", sorted(fields()))
def test_env_example_gives_the_codes_default(name: str) -> None:
    default = Settings.model_fields[name.lower()].default
    given = env_example()[name]
    if default is None or default == "":
        assert given == ""
    else:
        assert_same(given, default)


def assert_same(value: str, default: object) -> None:
    """``value`` as a setting's text is ``default``."""
    if isinstance(default, bool):
        assert value == str(default).lower()
    elif isinstance(default, int | float):
        assert float(value) == float(default)
    else:
        assert value == str(default)
