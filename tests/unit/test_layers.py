"""The import picture of app/: each layer imports only those below it.

The container is the composition root: app.bootstrap builds and opens it for
every process; the CLI alone starts the worker and the commands, and nothing
imports app.main or the CLI.
"""

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def _imports() -> dict[str, set[str]]:
    """Each module of app/, and the app modules it imports (``from app import x`` as app.x)."""
    found: dict[str, set[str]] = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("app")}
        found[name] = names
    return found


IMPORTS = _imports()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def importers_of(prefix: str) -> set[str]:
    return {
        module
        for module, names in IMPORTS.items()
        if not _within(module, prefix) and any(_within(n, prefix) for n in names)
    }


def test_the_modules_are_found() -> None:
    assert {"app.main", "app.container", "app.domain.model", "app.views"} <= set(IMPORTS)


# app.bootstrap builds and runs the container; the worker's and the commands'
# builders take it, built, to get what they need of it.
BUILDERS = {"app.bootstrap", "app.entrypoints.messaging.worker", "app.entrypoints.cli.maintenance"}


def test_only_what_builds_the_service_imports_the_container() -> None:
    assert importers_of("app.container") == BUILDERS


@pytest.mark.parametrize("top", ["app.main", "app.entrypoints.cli"])
def test_nothing_imports_what_builds_the_service(top: str) -> None:
    assert importers_of(top) == set()


def test_only_the_cli_starts_the_worker_and_the_commands() -> None:
    assert importers_of("app.entrypoints.messaging.worker") == {
        "app.entrypoints.cli",
        "app.entrypoints.cli.maintenance",  # a replay applies a letter as the worker would
    }
    assert importers_of("app.entrypoints.cli.maintenance") == {"app.entrypoints.cli"}


@pytest.mark.parametrize(
    ("layer", "above"),
    [
        ("app.domain", ["app.adapters", "app.service_layer", "app.entrypoints", "app.views"]),
        ("app.adapters", ["app.service_layer", "app.entrypoints", "app.views"]),
        ("app.service_layer", ["app.entrypoints", "app.views"]),
        ("app.views", ["app.service_layer", "app.entrypoints"]),
    ],
)
def test_a_layer_imports_nothing_above_it(layer: str, above: list[str]) -> None:
    for upper in above:
        assert not {m for m in importers_of(upper) if _within(m, layer)}, f"{layer} imports {upper}"


def test_the_container_binds_what_is_below_the_entrypoints() -> None:
    """The composition root builds the model, the service layer and the adapters;
    what an entrypoint needs of them (the HTTP layer's idempotency, say) it builds itself."""
    above = [n for n in IMPORTS["app.container"] if _within(n, "app.entrypoints")]
    assert above == [], f"app.container imports {above}"
    assert not [n for n in IMPORTS["app.container"] if _within(n, "app.main")]
