"""The emulator's schema-driven documents, checked with an independent validator (jsonschema-rs):
valid for every supported keyword family, invalid when a violation is asked for."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider_emulator.schema_gen import SchemaGenError, generate, violate


def _valid(schema: Any, document: Any) -> bool:
    return bool(jsonschema_rs.validator_for(schema, validate_formats=True).is_valid(document))


STRICT_OBJECT = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
    "required": ["city", "temperature"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "strict object": STRICT_OBJECT,
    "types": {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "z": {"type": "null"},
            "nullable": {"type": ["null", "string"]},
        },
        "required": ["s", "i", "n", "b", "z", "nullable"],
    },
    "enum and const": {
        "type": "object",
        "properties": {
            "units": {"enum": ["c", "f"]},
            "kind": {"const": "reading"},
            "level": {"type": "integer", "enum": [3, 5]},
        },
        "required": ["units", "kind", "level"],
        "additionalProperties": False,
    },
    "formats": {
        "type": "object",
        "properties": {
            fmt: {"type": "string", "format": fmt}
            for fmt in ("email", "date-time", "date", "uuid", "uri", "hostname", "ipv4", "time")
        },
        "required": ["email", "date-time", "date", "uuid", "uri"],
    },
    "ranges and lengths": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 20},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "even": {"type": "integer", "multipleOf": 2, "minimum": 7},
            "negative": {"type": "number", "maximum": -10},
            "code": {"type": "string", "minLength": 8, "maxLength": 8},
            "short": {"type": "string", "maxLength": 2},
        },
        "required": ["age", "score", "even", "negative", "code", "short"],
    },
    "refs and defs": {
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "tags": {"$ref": "#/$defs/tags"}},
                "required": ["name", "tags"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}}},
        "required": ["items"],
        "additionalProperties": False,
    },
    "oneOf and anyOf": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"radius": {"type": "number"}},
                        "required": ["radius"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"side": {"type": "number"}},
                        "required": ["side"],
                        "additionalProperties": False,
                    },
                ]
            },
            "id": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["shape", "id"],
    },
    "nested arrays": {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}, "minItems": 3},
                "minItems": 2,
                "maxItems": 2,
            },
            "unique": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 4,
                "uniqueItems": True,
            },
            "empty": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        },
        "required": ["matrix", "unique", "empty", "pair"],
        "additionalProperties": False,
    },
    "allOf": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    },
    "required without properties": {"type": "object", "required": ["x"]},
    "top-level array": {"type": "array", "items": {"type": "integer"}},
    "top-level string": {"type": "string", "format": "email"},
}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_generated_document_is_valid(schema: dict[str, Any]) -> None:
    document = generate(schema)
    assert _valid(schema, document), json.dumps(document)
    assert generate(schema) == document  # deterministic


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_violation_is_valid_json_that_breaks_the_schema(schema: dict[str, Any]) -> None:
    document = violate(schema)
    json.dumps(document)  # plain JSON values only
    assert not _valid(schema, document), json.dumps(document)


def test_unique_array_items_differ() -> None:
    assert generate(SCHEMAS["nested arrays"])["unique"] == [1, 2, 3, 4]


def test_unresolvable_ref_is_an_error() -> None:
    with pytest.raises(SchemaGenError, match="unresolvable"):
        generate({"$ref": "#/$defs/missing"})
    with pytest.raises(SchemaGenError, match="local"):
        generate({"$ref": "https://example.com/schema.json"})


def test_recursive_schema_stops_with_an_error_not_a_crash() -> None:
    with pytest.raises(SchemaGenError):
        generate(
            {
                "$defs": {
                    "node": {"type": "array", "items": {"$ref": "#/$defs/node"}, "minItems": 1}
                },
                "$ref": "#/$defs/node",
            }
        )


# --- random schemas of the supported keywords ------------------------------------------------


def _strings() -> st.SearchStrategy[dict[str, Any]]:
    def build(fmt: str | None, low: int, extra: int | None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if fmt is not None:
            return {**schema, "format": fmt}
        schema["minLength"] = low
        if extra is not None:
            schema["maxLength"] = low + extra
        return schema

    formats = st.sampled_from(["email", "date-time", "date", "uuid", "uri"])
    return st.builds(build, st.none() | formats, st.integers(0, 20), st.none() | st.integers(0, 20))


def _numbers() -> st.SearchStrategy[dict[str, Any]]:
    def build(kind: str, low: int | None, width: int | None, exclusive: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": kind}
        if low is not None:
            schema["exclusiveMinimum" if exclusive else "minimum"] = low
        if width is not None:
            base = low if low is not None else 0
            # An exclusive integer range needs room for one integer inside it.
            gap = width + (2 if exclusive and kind == "integer" else 1 if exclusive else 0)
            schema["exclusiveMaximum" if exclusive else "maximum"] = base + gap
        return schema

    return st.builds(
        build,
        st.sampled_from(["integer", "number"]),
        st.none() | st.integers(-1000, 1000),
        st.none() | st.integers(0, 50),
        st.booleans(),
    )


_LEAVES = st.one_of(
    _strings(),
    _numbers(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
    st.integers().map(lambda value: {"const": value}),
)
_NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def obj(props: dict[str, Any], strict: bool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": props, "required": sorted(props)}
        if strict:
            schema["additionalProperties"] = False
        return schema

    def arr(items: dict[str, Any], low: int, extra: int) -> dict[str, Any]:
        return {"type": "array", "items": items, "minItems": low, "maxItems": low + extra}

    return st.one_of(
        st.builds(obj, st.dictionaries(_NAMES, children, max_size=4), st.booleans()),
        st.builds(arr, children, st.integers(0, 3), st.integers(0, 3)),
        st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches}),
    )


_SCHEMAS = st.recursive(_LEAVES, _containers, max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(_SCHEMAS)
def test_any_generated_schema_gets_a_valid_document(schema: dict[str, Any]) -> None:
    document = generate(schema)
    assert _valid(schema, document), (schema, document)


@settings(max_examples=100, deadline=None)
@given(_SCHEMAS)
def test_any_schema_behind_a_ref_gets_a_valid_document(schema: dict[str, Any]) -> None:
    wrapped = {"$defs": {"inner": schema}, "$ref": "#/$defs/inner"}
    assert _valid(wrapped, generate(wrapped))
