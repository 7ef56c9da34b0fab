import re
from datetime import date
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from app.entrypoints.http.schemas import AllocateIn, BatchChange, BatchIn
from app.wire import ETA_PATTERN, ID_PATTERN, MAX_ID_LENGTH, MAX_QTY

BATCH: dict[str, Any] = {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20, "eta": None}
ALLOCATION: dict[str, Any] = {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}

BAD_QUANTITIES = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(MAX_QTY + 1, id="above-max"),
    pytest.param(5.5, id="fraction"),
    pytest.param(float(MAX_QTY + 1), id="whole-float-above-max"),
    pytest.param(float("inf"), id="infinity"),
    pytest.param(float("nan"), id="nan"),
    pytest.param("5", id="string"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="null"),
]
BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="whitespace"),
    pytest.param("\t\n", id="blank-controls"),
    pytest.param("x" * (MAX_ID_LENGTH + 1), id="too-long"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a/b", id="slash"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("\u200b", id="zero-width-space"),
    pytest.param("a\u00a0b", id="no-break-space"),
    pytest.param("\ufeffa", id="byte-order-mark"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\x85b", id="c1-control"),
    pytest.param("a\ud800", id="lone-surrogate"),
    pytest.param(5, id="number"),
    pytest.param(None, id="null"),
]


@pytest.mark.parametrize(
    ("eta", "expected"), [(None, None), ("2011-01-01", date(2011, 1, 1))], ids=["null", "date"]
)
def test_accepts_a_valid_batch(eta: str | None, expected: date | None) -> None:
    batch = BatchIn.model_validate({**BATCH, "eta": eta})
    assert batch == BatchIn(ref="batch-001", sku="SMALL-TABLE", qty=20, eta=expected)


def test_eta_may_be_left_out() -> None:
    assert BatchIn.model_validate({k: v for k, v in BATCH.items() if k != "eta"}).eta is None


def test_accepts_a_valid_allocation() -> None:
    assert AllocateIn.model_validate(ALLOCATION) == AllocateIn(
        orderid="order-001", sku="SMALL-TABLE", qty=2
    )


@pytest.mark.parametrize("qty", [1, MAX_QTY])
def test_accepts_the_quantity_bounds(qty: int) -> None:
    assert BatchIn.model_validate({**BATCH, "qty": qty}).qty == qty
    assert AllocateIn.model_validate({**ALLOCATION, "qty": qty}).qty == qty


@pytest.mark.parametrize(
    "value",
    ["x" * MAX_ID_LENGTH, "Ünïcode table 3", "a-b_c.d:e", "...", ".a", " .", ". ", "a b", "🪑"],
)
def test_accepts_printable_ids_up_to_the_maximum_length(value: str) -> None:
    assert AllocateIn.model_validate({**ALLOCATION, "orderid": value}).orderid == value


@pytest.mark.parametrize("model", [BatchIn, AllocateIn, BatchChange])
@pytest.mark.parametrize(("sent", "qty"), [(573.0, 573), (1e3, 1000), (float(MAX_QTY), MAX_QTY)])
def test_a_whole_float_is_the_integer_json_schema_says_it_is(
    model: type[BaseModel], sent: float, qty: int
) -> None:
    body = {BatchIn: BATCH, AllocateIn: ALLOCATION, BatchChange: {}}[model]
    validated = model.model_validate({**body, "qty": sent})
    assert validated.qty == qty  # type: ignore[attr-defined, unused-ignore]
    assert type(validated.qty) is int  # type: ignore[attr-defined, unused-ignore]


@pytest.mark.parametrize("model", [BatchIn, AllocateIn])
@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_rejects_a_bad_quantity(model: type[BaseModel], qty: object) -> None:
    body = BATCH if model is BatchIn else ALLOCATION
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**body, "qty": qty})
    assert [e["loc"] for e in caught.value.errors()] == [("qty",)]


@pytest.mark.parametrize(
    ("model", "field"),
    [(BatchIn, "ref"), (BatchIn, "sku"), (AllocateIn, "orderid"), (AllocateIn, "sku")],
)
@pytest.mark.parametrize("value", BAD_IDS)
def test_rejects_a_bad_id(model: type[BaseModel], field: str, value: object) -> None:
    body = BATCH if model is BatchIn else ALLOCATION
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**body, field: value})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    "eta",
    [
        pytest.param("2011-13-01", id="no-such-month"),
        pytest.param("2011-02-30", id="no-such-day"),
        pytest.param("01/01/2011", id="not-iso"),
        pytest.param("", id="empty"),
        pytest.param(12345, id="number"),
        pytest.param(86400, id="whole-days-of-seconds"),  # pydantic alone takes this as 1970-01-02
        pytest.param(0, id="zero"),
        pytest.param(True, id="bool"),
    ],
)
def test_rejects_a_bad_eta(eta: object) -> None:
    with pytest.raises(ValidationError) as caught:
        BatchIn.model_validate({**BATCH, "eta": eta})
    assert [e["loc"] for e in caught.value.errors()] == [("eta",)]


@pytest.mark.parametrize("eta", ["0", "86400", "1293840000"])
def test_rejects_a_timestamp_in_a_string(eta: str) -> None:
    """A number is not a date, quoted or not: pydantic would read these as Unix times."""
    with pytest.raises(ValidationError) as caught:
        BatchIn.model_validate_json(f'{{"ref": "b", "sku": "s", "qty": 1, "eta": "{eta}"}}')
    assert [e["loc"] for e in caught.value.errors()] == [("eta",)]


@pytest.mark.parametrize(
    ("model", "body"),
    [(BatchIn, BATCH), (AllocateIn, ALLOCATION), (BatchChange, {"qty": 1})],
)
def test_rejects_unknown_fields(model: type[BaseModel], body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**body, "priority": "high"})
    assert [e["type"] for e in caught.value.errors()] == ["extra_forbidden"]


def test_a_batch_may_be_emptied_but_not_made_negative() -> None:
    assert BatchChange.model_validate({"qty": 0}).qty == 0
    assert BatchChange.model_validate({"qty": MAX_QTY}).qty == MAX_QTY


@pytest.mark.parametrize(
    "qty",
    [
        pytest.param(-1, id="negative"),
        pytest.param(MAX_QTY + 1, id="above-max"),
        pytest.param(5.5, id="fraction"),
        pytest.param(-1.0, id="negative-whole-float"),
        pytest.param("5", id="string"),
        pytest.param(True, id="bool"),
    ],
)
def test_rejects_a_bad_new_quantity(qty: object) -> None:
    with pytest.raises(ValidationError):
        BatchChange.model_validate({"qty": qty})


# What a JSON Schema validator reads the document's patterns as (ECMA 262).
_DOCUMENTED_ID = jsonschema_rs.validator_for({"type": "string", "pattern": ID_PATTERN})
_DOCUMENTED_ETA = jsonschema_rs.validator_for(
    {"type": "string", "format": "date", "pattern": ETA_PATTERN}, validate_formats=True
)
# Text from every plane, with the characters the rules are about drawn often.
_ID_TEXT = st.text(
    st.sampled_from(" ./a\t\x00\x7f\x85\u00a0\u00ad\u200b\u2028\u3000\ufeff\ufffa\U0001f600")
    | st.characters(exclude_categories=["Cs"]),
    min_size=1,
    max_size=8,
)


def _accepted_as_orderid(value: object) -> bool:
    try:
        AllocateIn.model_validate({**ALLOCATION, "orderid": value})
    except ValidationError:
        return False
    return True


@given(_ID_TEXT)
def test_the_documented_id_pattern_is_what_the_service_enforces(value: str) -> None:
    accepted = _accepted_as_orderid(value)
    assert accepted == _DOCUMENTED_ID.is_valid(value), value
    assert accepted == bool(re.fullmatch(ID_PATTERN, value)), value


@given(
    st.dates(date(1900, 1, 1), date(2400, 12, 31)).map(date.isoformat)
    | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True)
)
def test_the_documented_eta_is_what_the_service_enforces(eta: str) -> None:
    try:
        BatchIn.model_validate({**BATCH, "eta": eta})
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert accepted == _DOCUMENTED_ETA.is_valid(eta), eta
