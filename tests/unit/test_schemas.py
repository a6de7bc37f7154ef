"""Every schema version: its examples, its JSON Schema, and evolution side by side."""

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from schemas import (
    TOUCHPOINT_TYPES,
    SchemaError,
    Touchpoint,
    decode_touchpoint,
    encode_touchpoint,
    validate,
)
from schemas.examples import EXAMPLES
from schemas.jsonschema import JSON_DIR, export, json_schema
from schemas.properties import LATEST, SCHEMAS

T = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
CASES_VALID = [(t, v, p) for (t, v), ex in EXAMPLES.items() for p in ex["valid"]]
CASES_INVALID = [(t, v, p, f) for (t, v), ex in EXAMPLES.items() for p, f in ex["invalid"]]


def event(type_: str, version: int, props: dict) -> Touchpoint:
    return Touchpoint(event_id="e-1", type=type_, version=version, occurred_at=T,
                      customer_id="c-1", anonymous_id="a-1", properties=props)


def test_every_type_has_a_v1_and_every_schema_has_examples() -> None:
    assert {t for t, v in SCHEMAS if v == 1} == set(TOUCHPOINT_TYPES)
    assert set(EXAMPLES) == set(SCHEMAS)
    for key, ex in EXAMPLES.items():
        assert ex["valid"], key
        assert ex["invalid"] or key == ("account_created", 1), key


@pytest.mark.parametrize(("type_", "version", "props"), CASES_VALID)
def test_valid_examples_pass(type_: str, version: int, props: dict) -> None:
    assert validate(event(type_, version, props)).properties == props


@pytest.mark.parametrize(("type_", "version", "props", "field"), CASES_INVALID)
def test_invalid_examples_fail_on_their_field(type_: str, version: int, props: dict,
                                              field: str) -> None:
    with pytest.raises(SchemaError) as info:
        validate(event(type_, version, props))
    assert info.value.field == field
    assert info.value.reason == "invalid_property"


def test_a_v2_is_accepted_beside_v1() -> None:
    v1 = EXAMPLES[("order_placed", 1)]["valid"][0]
    v2 = EXAMPLES[("order_placed", 2)]["valid"][0]
    assert validate(event("order_placed", 1, v1)).version == 1
    assert validate(event("order_placed", 2, v2)).version == 2
    assert LATEST["order_placed"] == 2
    with pytest.raises(SchemaError) as info:  # v1 payload declared as v2 lacks items
        validate(event("order_placed", 2, v1))
    assert info.value.field == "$.properties.items"


def test_unknown_version_names_the_known_ones() -> None:
    with pytest.raises(SchemaError, match=r"order_placed has no version 9 \(known: \[1, 2\]\)"):
        decode_touchpoint(b'{"event_id":"e","type":"order_placed","version":9,'
                          b'"occurred_at":"2026-01-01T00:00:00Z","customer_id":"c"}')


def test_identify_needs_the_customer() -> None:
    with pytest.raises(SchemaError) as info:
        validate(Touchpoint(event_id="e", type="identify", occurred_at=T, anonymous_id="a"))
    assert info.value.field == "$.customer_id"


def test_committed_json_schemas_are_current(tmp_path: Path) -> None:
    written = export(tmp_path)
    committed = sorted(p.name for p in JSON_DIR.glob("*.json"))
    assert committed == sorted(p.name for p in written), "run: journey schemas export"
    for path in written:
        assert path.read_text() == (JSON_DIR / path.name).read_text(), \
            f"{path.name} is stale: run `journey schemas export`"


def _wire(type_: str, version: int, props: dict) -> dict:
    return json.loads(encode_touchpoint(event(type_, version, props)))


@pytest.mark.parametrize(("type_", "version", "props"), CASES_VALID)
def test_json_schema_accepts_what_the_models_accept(type_: str, version: int,
                                                    props: dict) -> None:
    jsonschema.validate(_wire(type_, version, props), json_schema(type_, version))


@pytest.mark.parametrize(("type_", "version", "props", "field"), CASES_INVALID)
def test_json_schema_rejects_what_the_models_reject(type_: str, version: int, props: dict,
                                                    field: str) -> None:
    payload = {"event_id": "e-1", "type": type_, "version": version,
               "occurred_at": "2026-04-01T08:00:00Z", "customer_id": "c-1", "properties": props}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, json_schema(type_, version))
