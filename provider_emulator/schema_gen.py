"""Deterministic JSON documents from a JSON Schema (pure functions, no I/O).

`generate` builds a document valid against the schema, for the keywords structured-output
schemas use: ``type`` (one or a list; ``null`` is chosen last), ``properties`` (all of them
are filled), ``required``, ``additionalProperties``, ``enum`` and ``const`` (the first
value), ``$ref`` to ``#/...`` pointers (``$defs``, ``definitions``), ``oneOf`` / ``anyOf``
(the first branch), ``allOf`` (objects merged), arrays (``items``, ``prefixItems``,
``minItems`` / ``maxItems``; items differ from one another so ``uniqueItems`` holds), strings
(``minLength`` / ``maxLength``, formats ``email``, ``date-time``, ``date``, ``time``,
``uuid``, ``uri``, ``hostname``, ``ipv4``), numbers and integers (``minimum``, ``maximum``,
their exclusive forms, ``multipleOf``). ``pattern`` and ``not`` are not supported: a schema
that needs them may get a document that breaks them.

`violate` builds valid JSON that breaks the schema, for the emulator's schema-violation
fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaGenError", "generate", "violate"]

_MAX_DEPTH = 32
_FORMATS: dict[str, str] = {
    "email": "user{n}@example.com",
    "date-time": "2024-01-{day}T12:00:00Z",
    "date": "2024-01-{day}",
    "time": "12:00:{sec}Z",
    "uuid": "00000000-0000-4000-8000-{n12}",
    "uri": "https://example.com/item/{n}",
    "hostname": "host{n}.example.com",
    "ipv4": "192.0.2.{octet}",
}
_TYPE_ORDER = ("object", "array", "string", "integer", "number", "boolean", "null")


class SchemaGenError(ValueError):
    """The schema cannot be followed (an unresolvable ``$ref``, or nesting too deep)."""


def generate(schema: Any) -> Any:
    """A document valid against ``schema`` (deterministic: the same schema, the same one)."""
    return _Generator(schema).value(schema, 0, 0)


def violate(schema: Any) -> Any:
    """Valid JSON that ``schema`` rejects: a required property missing, an extra property
    where none is allowed, a value outside an enum or const, or a value of another type."""
    gen = _Generator(schema)
    node = gen.resolve(schema, 0)
    if not isinstance(node, Mapping):
        return None if node is False else _other_type()  # nothing can break `true`
    if "const" in node or "enum" in node:
        return _other_type()
    valid = gen.value(node, 0, 0)
    if isinstance(valid, dict):
        required = [name for name in node.get("required", ()) if name in valid]
        if required:
            del valid[required[0]]
            return valid
        if node.get("additionalProperties") is False:
            valid["unexpected_property"] = 1
            return valid
    return {"unexpected": "document"} if not isinstance(valid, dict) else _other_type()


def _other_type() -> list[Any]:
    """Never valid where an object, string, number or boolean is expected (for an array
    schema `violate` returns an object instead); a fresh list for each caller."""
    return [["not", "expected"]]


class _Generator:
    def __init__(self, root: Any) -> None:
        self.root = root

    def resolve(self, schema: Any, depth: int) -> Any:
        """Follow ``$ref`` chains (with sibling keywords merged over the target)."""
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            if depth > _MAX_DEPTH:
                raise SchemaGenError("$ref chain too deep")
            target = self._pointer(schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, Mapping) else target
            depth += 1
        return schema

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaGenError(f"only local $ref is supported: {ref!r}")
        node = self.root
        for raw in ref[1:].split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaGenError(f"unresolvable $ref {ref!r}")
        return node

    def value(self, schema: Any, depth: int, n: int) -> Any:
        """A valid value; ``n`` makes siblings (array items) differ."""
        if depth > _MAX_DEPTH:
            raise SchemaGenError("schema nested too deep")
        schema = self.resolve(schema, depth)
        if schema is True or schema is None:
            return f"value{n}"
        if not isinstance(schema, Mapping):
            raise SchemaGenError("a schema must be an object or a boolean")
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            enum = schema["enum"]
            return enum[n % len(enum)]
        for combiner in ("oneOf", "anyOf"):
            branches = schema.get(combiner)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k != combiner}
                branch = self.resolve(branches[0], depth)
                merged = {**rest, **branch} if isinstance(branch, Mapping) else branch
                return self.value(merged, depth + 1, n)
        if isinstance(schema.get("allOf"), list):
            return self.value(self._merge_all(schema, depth), depth + 1, n)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth, n)
        if kind == "array":
            return self._array(schema, depth, n)
        if kind == "string":
            return _string(schema, n)
        if kind == "integer":
            return _integer(schema, n)
        if kind == "number":
            return _number(schema, n)
        if kind == "boolean":
            return n % 2 == 0
        return None

    def _merge_all(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.resolve(part, depth)
            if not isinstance(part, Mapping):
                continue
            for key, item in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **item}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *item]
                else:
                    merged.setdefault(key, item)
        return merged

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> str:
        declared = schema.get("type")
        if isinstance(declared, str):
            return declared
        if isinstance(declared, list) and declared:
            return min(declared, key=lambda t: _TYPE_ORDER.index(t) if t in _TYPE_ORDER else 99)
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: Mapping[str, Any], depth: int, n: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        result = {name: self.value(sub, depth + 1, n) for name, sub in properties.items()}
        extra = schema.get("additionalProperties", True)
        for name in schema.get("required", ()):
            if name not in result:
                result[name] = self.value(extra if extra is not False else True, depth + 1, n)
        minimum = schema.get("minProperties", 0)
        index = 0
        while len(result) < minimum and extra is not False:
            result[f"extra_{index}"] = self.value(extra, depth + 1, index)
            index += 1
        return result

    def _array(self, schema: Mapping[str, Any], depth: int, n: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", True)
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        count = max(low, len(prefix), 1 if items is not False else 0)
        if high is not None:
            count = min(count, high)
        result = [self.value(sub, depth + 1, i) for i, sub in enumerate(prefix[:count])]
        result += [self.value(items, depth + 1, n + i) for i in range(len(result), count)]
        return result


def _string(schema: Mapping[str, Any], n: int) -> str:
    fmt = schema.get("format")
    if fmt in _FORMATS:
        text = _FORMATS[fmt].format(
            n=n,
            day=f"{n % 28 + 1:02d}",
            sec=f"{n % 60:02d}",
            n12=f"{n:012d}",
            octet=n % 254 + 1,
        )
    else:
        text = "text" if n == 0 else f"text{n}"
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if high is not None and len(text) > high:
        # Keep the end, where the distinguishing digits are.
        text = text[len(text) - high :] if high else ""
    return text


def _bounds(schema: Mapping[str, Any]) -> tuple[float, float, bool]:
    """The lowest and highest allowed values, and whether either bound is exclusive."""
    low, high, exclusive = -math.inf, math.inf, False
    if isinstance(schema.get("minimum"), int | float):
        low = schema["minimum"]
    if isinstance(schema.get("maximum"), int | float):
        high = schema["maximum"]
    if (
        isinstance(schema.get("exclusiveMinimum"), int | float)
        and schema["exclusiveMinimum"] >= low
    ):
        low, exclusive = schema["exclusiveMinimum"], True
    if (
        isinstance(schema.get("exclusiveMaximum"), int | float)
        and schema["exclusiveMaximum"] <= high
    ):
        high, exclusive = schema["exclusiveMaximum"], True
    return low, high, exclusive


def _integer(schema: Mapping[str, Any], n: int) -> int:
    low, high, _ = _bounds(schema)
    if schema.get("exclusiveMinimum") == low:
        low = math.floor(low) + 1
    if schema.get("exclusiveMaximum") == high:
        high = math.ceil(high) - 1
    multiple = schema.get("multipleOf")
    step = int(multiple) if isinstance(multiple, int) and multiple > 0 else 1
    start = (
        math.ceil(low) if low > -math.inf else min(1, math.floor(high) if high < math.inf else 1)
    )
    value = math.ceil(start / step) * step + n * step
    if value > high:  # back down to the largest multiple inside the range
        value = math.floor(high / step) * step
    return int(value)


def _number(schema: Mapping[str, Any], n: int) -> int | float:
    if isinstance(schema.get("multipleOf"), int):
        return _integer(schema, n)
    low, high, exclusive = _bounds(schema)
    if low > -math.inf and high < math.inf:
        if high == low and not exclusive:
            return low
        return low + (high - low) * (n % 3 + 1) / 4  # strictly inside the range
    if low > -math.inf:
        return low + 1 + n
    if high < math.inf:
        return high - 1 - n
    return 1.5 + n
