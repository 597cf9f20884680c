"""Pure tests of execution_service.schemas: every keyword family the validator checks, the
save-time refusals (meta-schema, compilation, bounds, provider structured-output limits) and
the validator cache. No I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from execution_service import schemas
from execution_service.schemas import (
    JsonSchema,
    SchemaViolation,
    compiled,
    output_schema_violations,
    schema_violations,
    structured_output_violations,
    validate,
)


def pointers(schema: dict[str, Any], instance: Any, prefix: str = "input") -> list[str]:
    return [v.pointer for v in validate(JsonSchema.of(schema), instance, prefix)]


def closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object schema as strict structured output wants it: closed, everything required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


# --- run time: keyword families -----------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "good", "bad", "where"),
    [
        ({"type": "integer"}, 3, 3.5, "input"),
        ({"type": ["string", "null"]}, None, 1, "input"),
        ({"type": "boolean"}, True, "true", "input"),
        ({"type": "object", "required": ["a"]}, {"a": 1}, {"b": 1}, "input"),
        ({"enum": ["red", "green"]}, "red", "blue", "input"),
        ({"const": 7}, 7, 8, "input"),
        ({"type": "string", "minLength": 2, "maxLength": 3}, "abc", "abcd", "input"),
        ({"type": "number", "minimum": 0, "exclusiveMaximum": 1}, 0.5, 1, "input"),
        ({"type": "string", "pattern": "^[A-Z]{3}$"}, "ABC", "abc", "input"),
        ({"format": "email"}, "ana@example.com", "ana-at-example", "input"),
        ({"format": "date-time"}, "2026-12-01T09:30:00Z", "yesterday", "input"),
        ({"format": "date"}, "2026-12-01", "2026-13-40", "input"),
        ({"format": "uuid"}, "7c9e6679-7425-40de-944b-e07fc1f90ae7", "7c9e6679", "input"),
        ({"format": "uri"}, "https://example.com/x", "no scheme here", "input"),
        (
            {"$defs": {"price": {"type": "number", "minimum": 0}}, "$ref": "#/$defs/price"},
            1.5,
            -1,
            "input",
        ),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "a", 1.5, "input"),
        # oneOf means exactly one: a value matching both branches is refused.
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 1.5, 2, "input"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, None, 2, "input"),
        ({"allOf": [{"minimum": 1}, {"maximum": 3}]}, 2, 4, "input"),
        ({"not": {"type": "null"}}, 0, None, "input"),
        ({"prefixItems": [{"type": "string"}], "items": False}, ["a"], ["a", 1], "input/1"),
        ({"type": "array", "uniqueItems": True}, [1, 2], [1, 1], "input"),
        ({"type": "array", "minItems": 1, "maxItems": 2}, [1], [], "input"),
    ],
)
def test_each_keyword_family_accepts_the_good_and_points_at_the_bad(
    schema: dict[str, Any], good: Any, bad: Any, where: str
) -> None:
    assert schema_violations(schema, "input_schema") == []
    assert pointers(schema, good) == []
    assert pointers(schema, bad) == [where]


def test_pointers_reach_into_nested_objects_and_arrays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {"email": {"type": "string", "format": "email"}},
                "required": ["email"],
                "additionalProperties": False,
            },
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "price": {"type": "number"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }
    instance = {
        "customer": {"email": "nope", "nickname": "x"},
        "items": [{"price": 1}, {"price": "free", "tags": ["ok", 3]}],
    }
    found = validate(JsonSchema.of(schema), instance, "input")
    assert sorted(v.pointer for v in found) == [
        "input/customer",  # additionalProperties: false (the unexpected `nickname`)
        "input/customer/email",
        "input/items/1/price",
        "input/items/1/tags/1",
    ]
    by_pointer = {v.pointer: v.description for v in found}
    assert "nickname" in by_pointer["input/customer"]
    assert "email" in by_pointer["input/customer/email"]


def test_one_violation_per_error_and_the_root_is_the_prefix() -> None:
    schema = closed({"a": {"type": "integer"}, "b": {"type": "string"}})
    assert pointers(schema, {"a": "x", "b": 1}, "output") == ["output/a", "output/b"]
    assert validate(JsonSchema.of(schema), [], "output") == [
        SchemaViolation("output", '[] is not of type "object"')
    ]
    assert pointers(schema, {"a": 1}, "output") == ["output"]  # `b` is required


def test_pointer_segments_are_escaped() -> None:
    schema = {"properties": {"a/b": {"type": "integer"}, "c~d": {"type": "integer"}}}
    assert sorted(pointers(schema, {"a/b": "x", "c~d": "y"})) == ["input/a~1b", "input/c~0d"]


def test_the_number_of_reported_errors_is_bounded() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    found = validate(JsonSchema.of(schema), ["x"] * 500, "input")
    assert len(found) == schemas.MAX_REPORTED_ERRORS


def test_long_offending_values_are_not_echoed_in_full() -> None:
    found = validate(JsonSchema.of({"type": "integer"}), "x" * 10_000, "input")
    assert len(found) == 1 and len(found[0].description) <= schemas.MAX_DESCRIPTION_CHARS


def test_validators_are_compiled_once_per_schema_and_cached_by_digest() -> None:
    a = JsonSchema.of({"type": "object", "properties": {"n": {"type": "integer"}}})
    same = JsonSchema.of(json.loads(a.text))  # another dict, same canonical text
    assert same.digest == a.digest
    assert compiled(a) is compiled(same)
    stored = JsonSchema.parse(a.text)  # as read back from the database
    assert stored.document == a.document and compiled(stored) is compiled(a)
    other = JsonSchema.of({"type": "object", "properties": {"n": {"type": "string"}}})
    assert compiled(other) is not compiled(a)


def test_the_cache_evicts_the_least_recently_used() -> None:
    cache = schemas._ValidatorCache(2)
    one, two, three = (JsonSchema.of({"const": i}) for i in range(3))
    first = cache.get(one)
    cache.get(two)
    assert cache.get(one) is first  # one is now the most recent
    cache.get(three)  # evicts two
    assert len(cache) == 2
    assert cache.get(one) is first
    assert cache.get(two) is not None and len(cache) == 2


# --- save time: general checks ------------------------------------------------------------


def test_a_good_schema_has_no_violations() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"email": {"type": "string", "format": "email"}},
        "properties": {"to": {"$ref": "#/$defs/email"}},
    }
    assert schema_violations(schema, "agent.input_schema") == []
    assert schema_violations(schema, "agent.output_schema", output=True) == []


@pytest.mark.parametrize(
    ("schema", "fields", "fragment"),
    [
        ({"type": "strin"}, ["f.type"], ""),
        ({"properties": {"a": {"minimum": "zero"}}}, ["f.properties.a.minimum"], "number"),
        ({"required": "a"}, ["f.required"], ""),
        ({"type": "string", "pattern": "(("}, ["f.pattern"], "regex"),
        (
            {"type": "bogus", "properties": {"a": {"type": 3}}},
            ["f.properties.a.type", "f.type"],
            "",
        ),
        ({"$ref": "#/$defs/missing"}, ["f"], "does not compile"),
        # A schema is never fetched from the network: an external $ref is refused.
        ({"$ref": "https://example.com/schema.json"}, ["f"], "does not compile"),
        (
            {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
            ["f.$schema"],
            "2020-12",
        ),
    ],
)
def test_invalid_schemas_are_refused_with_the_path_of_each_problem(
    schema: dict[str, Any], fields: list[str], fragment: str
) -> None:
    found = schema_violations(schema, "f")
    assert sorted(v.field for v in found) == fields
    assert all(fragment in v.description for v in found)


def test_absurd_schemas_are_refused_before_anything_else() -> None:
    huge = {"type": "object", "description": "x" * (schemas.MAX_SCHEMA_BYTES + 1)}
    [too_big] = schema_violations(huge, "f")
    assert too_big.field == "f" and "bytes" in too_big.description

    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(schemas.MAX_SCHEMA_DEPTH):
        deep = {"type": "array", "items": deep}
    [too_deep] = schema_violations(deep, "f")
    assert too_deep.field == "f" and "nests deeper" in too_deep.description


def test_an_output_schema_must_have_an_object_root() -> None:
    assert schema_violations({"type": "array"}, "f", output=True)[0].field == "f.type"
    assert schema_violations({"type": "array"}, "f") == []


# --- save time: provider structured-output limits ----------------------------------------


def test_a_closed_schema_suits_both_providers() -> None:
    item = closed({"sku": {"type": "string"}, "price": {"type": "number"}})
    schema = closed(
        {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "note": {"type": ["string", "null"]},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"enum": ["a", "b"]},
            "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
        **{"$defs": {"item": item}},
    )
    assert schema_violations(schema, "f", output=True) == []
    for provider in ("openai", "anthropic"):
        assert structured_output_violations(schema, provider, "f") == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_every_object_must_be_closed(provider: str) -> None:
    schema = closed({"items": {"type": "array", "items": {"type": "object", "properties": {}}}})
    [found] = structured_output_violations(schema, provider, "agent.output_schema")
    assert found.field == "agent.output_schema.properties.items.items.additionalProperties"
    assert "must be false" in found.description


def test_openai_wants_every_property_required() -> None:
    schema = closed({"a": {"type": "string"}, "b": {"type": "string"}}, required=["a"])
    [found] = structured_output_violations(schema, "openai", "o")
    assert found.field == "o.required" and "b" in found.description
    assert structured_output_violations(schema, "anthropic", "o") == []


@pytest.mark.parametrize(
    ("keyword", "value", "refused_by"),
    [
        ("oneOf", [{"type": "string"}, {"type": "integer"}], {"openai", "anthropic"}),
        ("not", {"type": "null"}, {"openai", "anthropic"}),
        ("allOf", [{"type": "string"}], {"openai"}),
        ("minLength", 1, {"openai", "anthropic"}),
        ("minimum", 0, {"anthropic"}),
        ("maxItems", 3, {"anthropic"}),
        ("if", {"type": "string"}, {"openai", "anthropic"}),
    ],
)
def test_unsupported_keywords_are_named(keyword: str, value: Any, refused_by: set[str]) -> None:
    schema = closed({"v": {keyword: value}})
    for provider in ("openai", "anthropic"):
        found = structured_output_violations(schema, provider, "o")
        fields = [v.field for v in found]
        if provider in refused_by:
            assert fields == [f"o.properties.v.{keyword}"], provider
            assert provider in found[0].description
        else:
            assert fields == [], provider


def test_pattern_properties_on_the_root_are_refused_by_both() -> None:
    schema = closed({"a": {"type": "string"}}, patternProperties={"^x-": {"type": "string"}})
    for provider in ("openai", "anthropic"):
        fields = [v.field for v in structured_output_violations(schema, provider, "o")]
        assert fields == ["o.patternProperties"]


def test_formats_outside_a_providers_list_are_refused() -> None:
    schema = closed({"site": {"type": "string", "format": "uri"}})
    [found] = structured_output_violations(schema, "openai", "o")
    assert found.field == "o.properties.site.format" and "'uri'" in found.description
    assert structured_output_violations(schema, "anthropic", "o") == []


def test_openai_object_nesting_limit() -> None:
    schema: dict[str, Any] = closed({"leaf": {"type": "string"}})
    for _ in range(10):  # 11 object levels in all
        schema = closed({"child": schema})
    found = structured_output_violations(schema, "openai", "o")
    assert [v.field for v in found] == ["o" + ".properties.child" * 10]
    assert "11 levels" in found[0].description
    assert structured_output_violations(schema, "anthropic", "o") == []


def test_openai_property_count_limit() -> None:
    limit = schemas.STRUCTURED_OUTPUT_LIMITS["openai"].max_properties
    assert limit is not None
    group = closed({f"p{i}": {"type": "integer"} for i in range(100)})
    schema = closed({f"g{i}": group for i in range(limit // 100)})  # 100 x 50 + 50 > 5000
    [found] = structured_output_violations(schema, "openai", "o")
    assert found.field == "o" and str(limit) in found.description


def test_anthropic_refuses_recursion_and_compound_enums_and_large_min_items() -> None:
    node = closed({"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}})
    schema = closed(
        {
            "head": {"$ref": "#/$defs/node"},
            "pick": {"enum": [{"a": 1}, "b"]},
            "some": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        },
        **{"$defs": {"node": node}},
    )
    assert schema_violations(schema, "o", output=True) == []
    fields = sorted(v.field for v in structured_output_violations(schema, "anthropic", "o"))
    assert fields == ["o.$defs.node", "o.properties.pick.enum", "o.properties.some.minItems"]
    # OpenAI allows recursion, compound enum values and any minItems.
    assert structured_output_violations(schema, "openai", "o") == []


def test_openai_enum_limits() -> None:
    many = closed({f"e{i}": {"enum": list(range(100))} for i in range(11)})  # 1,100 values
    [found] = structured_output_violations(many, "openai", "o")
    assert found.field == "o" and "1100 enum values" in found.description
    long_values = [f"{i:03d}-" + "x" * 56 for i in range(251)]  # 251 x 60 > 15,000 characters
    large = closed({"pick": {"enum": long_values}})
    [found] = structured_output_violations(large, "openai", "o")
    assert found.field == "o.properties.pick.enum" and "15000" in found.description
    assert (
        structured_output_violations(closed({"pick": {"enum": long_values[:250]}}), "openai", "o")
        == []
    )


def test_anthropic_optional_and_union_property_limits() -> None:
    optional = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(25)},
        "additionalProperties": False,
    }
    [found] = structured_output_violations(optional, "anthropic", "o")
    assert found.field == "o" and "25 optional properties" in found.description
    unions = closed({f"u{i}": {"type": ["string", "null"]} for i in range(17)})
    [found] = structured_output_violations(unions, "anthropic", "o")
    assert found.field == "o" and "17 union properties" in found.description
    assert structured_output_violations(unions, "openai", "o") == []


def test_output_schema_violations_runs_the_general_checks_then_each_provider_once() -> None:
    assert [v.field for v in output_schema_violations({"type": "array"}, "f", ["openai"])] == [
        "f.type"
    ]
    open_object = {"type": "object", "properties": {"a": {"type": "string"}}}
    fields = [v.field for v in output_schema_violations(open_object, "f", ["openai", "openai"])]
    assert fields == ["f.additionalProperties", "f.required"]
    good = closed({"a": {"type": "string"}})
    assert output_schema_violations(good, "f", ["openai", "anthropic"]) == []
