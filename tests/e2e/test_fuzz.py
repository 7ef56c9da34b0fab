"""Generated requests against the service's own /openapi.json (schemathesis).

Every operation is sent valid and invalid requests, examples and boundary
values first. Whatever is sent, the service never answers 5xx, and each answer
is one the document lists: its status, content type, headers and body. A
request the document says is invalid is refused with a 4xx. A state machine
then follows the document's links (add a batch, allocate a line of its sku,
read the batch and the allocation), and must have followed each of them.

FUZZ_EXAMPLES sets the examples per operation and FUZZ_STEPS the state
machine's runs; `make fuzz` raises both.
"""

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.python.asgi import shutdown_lifespans
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.adapters import orm
from app.config import Settings
from app.main import create_app
from tests.databases import postgres_database

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
STEPS = int(os.environ.get("FUZZ_STEPS", "20"))
# By default the state machine plays the same scenarios every run, so which
# links it follows does not depend on luck; `make fuzz` explores afresh.
REPLAYED = "FUZZ_STEPS" not in os.environ
TOKEN = "fuzzing-token"

# Left out: positive_data_acceptance, because JSON Schema cannot say what the
# service rightly refuses among "valid" values (an id that is not printable
# text, a quantity sent as 5.0); use_after_free and the like, for want of a
# DELETE. The auth checks run where a token is set.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
    "ensure_resource_availability",
]
AUTH_CHECKS = ["ignored_auth", "missing_required_header"]
# What invalid input may meet: no route for it (a "/" in an id), the body
# limit, or validation. Never a 5xx, which schemathesis would allow here.
REFUSED = ["400", "401", "404", "405", "413", "422"]


def config(token: str | None, mode: str = "all") -> schemathesis.Config:
    checks: dict[str, Any] = {name: {"enabled": True} for name in CHECKS}
    checks["negative_data_rejection"]["expected-statuses"] = REFUSED
    settings: dict[str, Any] = {
        "checks": {"enabled": False, **checks},
        "generation": {
            "mode": mode,
            "max-examples": EXAMPLES,
            "with-security-parameters": token is not None,
            "database": "none",
        },
        "base-url": "http://testserver",
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}},
    }
    if token is not None:
        settings["checks"].update({name: {"enabled": True} for name in AUTH_CHECKS})
        settings["auth"] = {"openapi": {"API token": {"bearer": token}}}
    return schemathesis.Config.from_dict(settings)


def document() -> dict[str, Any]:
    """What /openapi.json serves; building the app connects to nothing."""
    return create_app(Settings(database_url="sqlite+aiosqlite://")).openapi()


open_schema = schemathesis.openapi.from_dict(document(), config=config(token=None))


def serving(database_url: str, token: str | None = None) -> Iterator[FastAPI]:
    app = create_app(Settings(database_url=database_url, api_token=token))
    try:
        yield app
    finally:
        # Schemathesis enters the app's lifespan on its first request to it.
        shutdown_lifespans()


@pytest.fixture
def open_app(database_url: str) -> Iterator[FastAPI]:
    yield from serving(database_url)


@pytest.fixture
def guarded_app(sqlite_url: str) -> Iterator[FastAPI]:
    yield from serving(sqlite_url, token=TOKEN)


# The app is one per test, not per example: examples use random ids of their own.
ONE_APP_PER_TEST = hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)


@open_schema.parametrize()
@ONE_APP_PER_TEST
def test_every_answer_is_one_the_document_lists(
    case: schemathesis.Case[Any], open_app: FastAPI
) -> None:
    case.call_and_validate(app=open_app)


def test_with_a_token_set_a_write_without_it_gets_a_documented_401(guarded_app: FastAPI) -> None:
    api = schemathesis.openapi.from_asgi("/openapi.json", guarded_app, config=config(token=TOKEN))
    writes = api.include(method=["POST", "PATCH"])
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

    @hypothesis.given(case=st.one_of(*(writes.as_strategy(mode) for mode in modes)))
    @hypothesis.settings(max_examples=EXAMPLES * 2, deadline=None, database=None)
    def writing(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate()

    writing()


@pytest.fixture
async def own_database_url(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A database of the test's own, which it may empty: SQLite's already is one."""
    if database_url.startswith("sqlite"):
        yield database_url
        return
    async with postgres_database(request.getfixturevalue("postgres_server_url")) as url:
        yield url


def emptied(url: str) -> None:
    async def delete_everything() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for table in reversed(orm.metadata.sorted_tables):
                    await conn.execute(table.delete())
        finally:
            await engine.dispose()

    # On a loop of its own: the test's thread has pytest's, not running.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, delete_everything()).result()


def test_the_documents_links_lead_from_a_batch_to_its_allocations(own_database_url: str) -> None:
    app = create_app(Settings(database_url=own_database_url))
    # Valid requests only: the links are what is under test here, invalid input
    # above. The routes that only add more ways to go leave the chain likelier.
    api = (
        schemathesis.openapi.from_asgi(
            "/openapi.json", app, config=config(token=None, mode="positive")
        )
        .exclude(tag="operations")
        .exclude(path="/add_batch")
        .exclude(path="/products/{sku}")
    )
    followed: Counter[tuple[str, int]] = Counter()
    machine: Any = api.as_state_machine()

    class Following(machine):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts from an empty service, so that Hypothesis,
            # replaying one, gets the answers it got the first time.
            emptied(own_database_url)

        def step(self, input: StepInput) -> StepOutput:
            output: StepOutput = super().step(input)
            if input.transition is not None and input.is_applied:
                followed[input.case.operation.label, output.response.status_code] += 1
            return output

    try:
        Following.run(
            settings=hypothesis.settings(
                max_examples=STEPS,
                stateful_step_count=10,
                derandomize=REPLAYED,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
        )
    finally:
        shutdown_lifespans()

    # Linked calls that found what the write before them made.
    assert followed["GET /batches/{ref}", 200], followed
    assert followed["PATCH /batches/{ref}", 202], followed
    assert followed["POST /allocate", 202], followed
    assert followed["GET /allocations/{orderid}", 200], followed
    assert followed["GET /allocations/{orderid}/{sku}", 200], followed
