"""JSON Schema for every touchpoint type and version, generated from the models.

Producers in other languages validate with these files; they are written to
``schemas/json/`` by ``journey schemas export`` and a test keeps them current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.properties import SCHEMAS, SURVEY_RANGES
from schemas.touchpoint import TOUCHPOINT_TYPES, Touchpoint

__all__ = ["JSON_DIR", "export", "json_schema"]

JSON_DIR = Path(__file__).parent / "json"


def json_schema(type_: str, version: int) -> dict[str, Any]:
    """The full event schema (envelope and properties) of one type and version."""
    model = SCHEMAS[(type_, version)]
    (_envelope_ref, props_ref), defs = msgspec.json.schema_components(
        [Touchpoint, model], ref_template="#/$defs/{name}")
    envelope = defs.pop("Touchpoint")
    envelope["properties"]["type"] = {"const": type_}
    envelope["properties"]["properties"] = props_ref
    if version == 1:  # omitted on the wire when 1
        envelope["properties"]["version"] = {"const": 1, "default": 1}
    else:
        envelope["properties"]["version"] = {"const": version}
        envelope["required"] = sorted({*envelope.get("required", []), "version"})
    identity = [{"required": ["customer_id"]}]
    if type_ != "identify":
        identity.append({"required": ["anonymous_id"]})
    envelope["anyOf"] = identity
    if type_ == "survey_response":
        defs[model.__name__]["allOf"] = [
            {"if": {"properties": {"survey": {"const": survey}}},
             "then": {"properties": {"score": {"minimum": low, "maximum": high}}}}
            for survey, (low, high) in SURVEY_RANGES.items()]
    return {
        **envelope,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"journey:touchpoint/{type_}/v{version}",
        "title": f"{type_} v{version}",
        "description": f"A {type_} touchpoint (journey stage: {TOUCHPOINT_TYPES[type_]}), "
                       f"version {version}. event_id is the client-made idempotency key.",
        "$defs": defs,
    }


def export(directory: Path = JSON_DIR) -> list[Path]:
    """Write ``<type>.v<version>.json`` for every schema; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for type_, version in sorted(SCHEMAS):
        path = directory / f"{type_}.v{version}.json"
        path.write_text(json.dumps(json_schema(type_, version), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
