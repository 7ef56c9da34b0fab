"""The diagrams of the README and docs/architecture.md name what the code has.

Each box names a module of app/ (``service_layer/handlers``), and may name
what in it is called (``handlers: publish_allocated_event``); each arrow's
label in code font (``"uow.commit()"``, ``COMMAND_HANDLERS[Allocate]``)
names a table or a method of the modules around it. A rename that the
diagram does not follow fails here.
"""

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWCHART = re.compile(r"```mermaid\nflowchart LR\n(.*?)```", re.S)
MODULE = re.compile(r"\b((?:entrypoints/\w+|service_layer|adapters|domain)/\w+|views\.py)")
NAMED = re.compile(r"\b(?:handlers|model):<br/>(\w+(?:\.\w+)?)")
TABLE = re.compile(r"\b([A-Z_]{2,}HANDLERS)\b")
CALL = re.compile(r'"(?:[\w.]+\.)?(\w+)\(')


def flowchart(document: str) -> str:
    found = FLOWCHART.search((ROOT / document).read_text())
    assert found, f"{document} has no flowchart"
    return found.group(1)


def modules(chart: str) -> list[str]:
    return sorted({m for m in MODULE.findall(chart)})


def module_of(name: str) -> ModuleType:
    dotted = "app.views" if name == "views.py" else "app." + name.replace("/", ".")
    return importlib.import_module(dotted)


@pytest.mark.parametrize("document", ["README.md", "docs/architecture.md"])
def test_every_box_is_a_module_of_the_code(document: str) -> None:
    chart = flowchart(document)
    assert len(modules(chart)) >= 6, chart
    for name in modules(chart):
        module_of(name)  # imports, or fails naming it


def test_what_the_architecture_diagram_calls_is_in_its_modules() -> None:
    chart = flowchart("docs/architecture.md")
    attributes: set[str] = set()
    for name in modules(chart):
        module = module_of(name)
        attributes |= set(dir(module))
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                attributes |= set(dir(value))
    named = {n.split(".")[-1] for n in NAMED.findall(chart)}
    called = set(CALL.findall(chart)) | set(TABLE.findall(chart))
    assert named, chart
    assert called, chart
    assert named | called <= attributes, (named | called) - attributes
