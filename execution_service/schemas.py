"""JSON Schema (draft 2020-12): the one module that checks schemas and validates documents.

Two jobs, two times:

- **Save time** (`schema_violations`, `structured_output_violations`): an agent's schema must be
  a valid draft 2020-12 schema (checked against the meta-schema), compile without fetching
  anything (external `$ref` is refused), stay within size and nesting bounds, and, for an
  output schema, have an object root and fit the structured-output mode of every provider the
  agent may run on. Each problem is one `FieldViolation` whose field is the path into the
  schema (`agent.output_schema.properties.items`).
- **Run time** (`compiled`, `CompiledSchema.validate`): a compiled validator, cached by the
  schema's digest in a bounded LRU, gives one `SchemaViolation` per error with its JSON
  pointer prefixed by the document's field (`input/customer/email`; the root is `input`).
  Formats (email, date-time, date, uuid, uri, ...) are checked.

The validator library is jsonschema-rs: it implements draft 2020-12 with formats built in and
reports every error with its instance path, and it is the fastest of the Python options we
measured (`bench/schema_bench.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema_rs

from service_kit.errors import FieldViolation

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
MAX_SCHEMA_BYTES = 64 * 1024  # serialized; a schema is configuration, not data
MAX_SCHEMA_DEPTH = 32  # JSON nesting of the schema document itself
MAX_REPORTED_ERRORS = 50  # per validated document: enough to act on, bounded in size
MAX_DESCRIPTION_CHARS = 300  # an error message may quote the (caller's) offending value
MAX_POINTER_CHARS = 200
VALIDATOR_CACHE_SIZE = 1024
MAX_JSON_INT = 2**1023  # a larger integer has no double (a Struct number)

# Keywords whose value is one subschema, a list of subschemas, or a name -> subschema map.
_ONE = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
)
_MANY = ("anyOf", "allOf", "oneOf", "prefixItems")
_NAMED = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "$schema", "$id", "$anchor"}
)


@dataclass(frozen=True)
class StructuredOutputLimits:
    """What a provider's structured-output mode accepts (its documented subset of JSON Schema).

    OpenAI (`response_format` json_schema, strict): every object closed and every property
    required, no `oneOf`/`allOf`/`not`/conditionals, at most 10 levels of object nesting,
    5,000 properties and 1,000 enum values, and an enum of more than 250 values at most
    15,000 characters. Anthropic (structured outputs, and the same schema as a forced tool's
    input): every object closed, no recursive `$ref`, no numeric or string-length bounds,
    `minItems` only 0 or 1, primitive `enum` values only, at most 24 optional properties and
    16 properties of a union type (`anyOf` or a list of types).
    """

    provider: str
    keywords: frozenset[str]
    formats: frozenset[str]
    all_properties_required: bool
    max_object_depth: int | None = None
    max_properties: int | None = None
    min_items_values: frozenset[int] | None = None  # None: any
    recursion_allowed: bool = True
    primitive_enums_only: bool = False
    max_enum_values: int | None = None  # across the schema
    large_enum: tuple[int, int] | None = None  # (values, characters): over values, at most chars
    max_optional_properties: int | None = None
    max_union_properties: int | None = None


_STRUCTURAL = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "const"}
)
_REFERENCES = frozenset({"$ref", "$defs", "definitions"})
STRUCTURED_OUTPUT_LIMITS: Mapping[str, StructuredOutputLimits] = {
    "openai": StructuredOutputLimits(
        provider="openai",
        keywords=_STRUCTURAL
        | _REFERENCES
        | _ANNOTATIONS
        | {"anyOf", "pattern", "format", "minimum", "maximum", "exclusiveMinimum"}
        | {"exclusiveMaximum", "multipleOf", "minItems", "maxItems"},
        formats=frozenset(
            {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
        ),
        all_properties_required=True,
        max_object_depth=10,
        max_properties=5000,
        max_enum_values=1000,
        large_enum=(250, 15_000),
    ),
    "anthropic": StructuredOutputLimits(
        provider="anthropic",
        keywords=_STRUCTURAL
        | _REFERENCES
        | _ANNOTATIONS
        | {"anyOf", "allOf", "pattern", "format", "minItems"},
        formats=frozenset(
            {
                "date-time",
                "time",
                "date",
                "duration",
                "email",
                "hostname",
                "uri",
                "ipv4",
                "ipv6",
                "uuid",
            }
        ),
        all_properties_required=False,
        min_items_values=frozenset({0, 1}),
        recursion_allowed=False,
        primitive_enums_only=True,
        max_optional_properties=24,
        max_union_properties=16,
    ),
}


@dataclass(frozen=True)
class JsonSchema:
    """A schema document with its canonical text and digest (the validator cache key).
    The document is shared, not copied: treat it as read-only."""

    document: dict[str, Any] = field(repr=False)
    text: str = field(repr=False)
    digest: str

    @classmethod
    def of(cls, document: dict[str, Any]) -> JsonSchema:
        text = canonical_json(document)
        return cls(document, text, hashlib.sha256(text.encode()).hexdigest())

    @classmethod
    def parse(cls, text: str) -> JsonSchema:
        """From stored JSON text, kept as the canonical text: PostgreSQL's jsonb output is
        already normalized, so a stored schema always reads back as the same text, and
        reading an agent (on the way to running it) skips re-serializing its schemas."""
        return cls(json.loads(text), text, hashlib.sha256(text.encode()).hexdigest())


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _in_range(text: str) -> int:
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise ValueError(f"the integer {text[:20]}... is out of range")
    return value


def parse_json(text: str) -> Any:
    """A JSON document as the service accepts it from a caller or a model: strict JSON (no
    NaN or Infinity), every number within a double's range (so that it survives a protobuf
    Struct and PostgreSQL's jsonb). Raises ValueError or RecursionError."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite, parse_int=_in_range)


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class SchemaViolation:
    """One way a document breaks its schema: a prefixed JSON pointer and what is wrong."""

    pointer: str
    description: str


# --- save time ------------------------------------------------------------------------------


def _depth(document: Any) -> int:
    """JSON nesting depth, iteratively (a hostile document must not exhaust the stack)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in value)
    return deepest


def _unstorable(document: Any) -> str | None:
    """Why `document` cannot be kept as JSON in PostgreSQL (None when it can): JSON has no NaN
    or infinity, and jsonb refuses NUL (U+0000) in any string or member name."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return "numbers must be finite (JSON has no NaN or infinity)"
        if isinstance(value, str) and "\x00" in value:
            return "must not contain NUL (U+0000) characters"
        if isinstance(value, dict):
            stack.extend(value)  # member names
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION_CHARS else text[: MAX_DESCRIPTION_CHARS - 3] + "..."


def _dotted(field_: str, path: Iterator[str | int] | list[str | int]) -> str:
    out = field_
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _meta_violations(document: Mapping[str, Any], field_: str) -> list[FieldViolation]:
    """Draft 2020-12 meta-schema errors, one per error, at the schema path they concern."""
    return [
        FieldViolation(_dotted(field_, list(error.instance_path)), _short(error.message))
        for error in _meta_validator().iter_errors(document)
    ][:MAX_REPORTED_ERRORS]


def _compile(document: dict[str, Any]) -> jsonschema_rs.Validator:
    import jsonschema_rs  # at first use: see _meta_validator

    # offline: a `$ref` to a URL is an error, never a fetch from the service's network.
    return jsonschema_rs.Draft202012Validator(document, validate_formats=True, offline=True)


def schema_violations(
    document: dict[str, Any], field_: str, *, output: bool = False
) -> list[FieldViolation]:
    """Why `document` cannot be saved as a schema ([] when it can). With `output`, the root
    must be an object schema (structured output is a JSON object)."""
    unstorable = _unstorable(document)
    if unstorable is not None:
        return [FieldViolation(field_, unstorable)]
    size = len(canonical_json(document).encode())
    if size > MAX_SCHEMA_BYTES:
        return [FieldViolation(field_, f"is {size} bytes; at most {MAX_SCHEMA_BYTES} allowed")]
    if _depth(document) > MAX_SCHEMA_DEPTH:
        return [FieldViolation(field_, f"nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    # Every `$schema`, a subschema's included: the validator would switch dialect there.
    other_dialects = [
        FieldViolation(
            _dotted(field_, [*path, "$schema"]), f"must be {DRAFT_2020_12} (or left out)"
        )
        for path, subschema, _ in _walk(document)
        if subschema.get("$schema", DRAFT_2020_12) not in (DRAFT_2020_12, DRAFT_2020_12 + "#")
    ]
    if other_dialects:
        return other_dialects[:MAX_REPORTED_ERRORS]
    violations = _meta_violations(document, field_)
    if violations:
        return violations
    import jsonschema_rs  # already loaded by _meta_violations

    try:
        _compile(document)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first_line = str(exc).split("\n", 1)[0]
        return [FieldViolation(field_, f"does not compile: {_short(first_line)}")]
    if output and document.get("type") != "object":
        return [FieldViolation(f"{field_}.type", 'must be "object": the output is a JSON object')]
    return []


def _subschemas(schema: Mapping[str, Any]) -> Iterator[tuple[list[str | int], Any]]:
    for key in _ONE:
        if key in schema:
            yield [key], schema[key]
    for key in _MANY:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield [key, i], sub
    for key in _NAMED:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield [key, name], sub


def _walk(
    root: Mapping[str, Any],
) -> Iterator[tuple[list[str | int], Mapping[str, Any], int]]:
    """Every subschema object with its path and its object-nesting level (root object = 1)."""
    stack: list[tuple[list[str | int], Any, int]] = [([], root, 0)]
    while stack:
        path, schema, level = stack.pop()
        if not isinstance(schema, dict):
            continue  # `true` / `false` schemas
        if schema.get("type") == "object" or "properties" in schema:
            level += 1
        yield path, schema, level
        for sub_path, sub in reversed(list(_subschemas(schema))):
            stack.append((path + sub_path, sub, level))


def _local_ref(ref: object) -> str | None:
    """`#/$defs/name` -> `name`; `#` -> `#` (the root); anything else -> None."""
    if ref == "#":
        return "#"
    for prefix in ("#/$defs/", "#/definitions/"):
        if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix) :]:
            return ref[len(prefix) :]
    return None


def _recursive_definitions(root: Mapping[str, Any]) -> list[str]:
    """Definitions that reach themselves through `$ref` (and `#` for a root that does)."""
    definitions: dict[str, Any] = {**root.get("definitions", {}), **root.get("$defs", {})}

    def refs(schema: Any) -> set[str]:
        found = set()
        for _, sub, _ in _walk(schema) if isinstance(schema, dict) else ():
            name = _local_ref(sub.get("$ref"))
            if name is not None:
                found.add(name)
        return found

    edges = {name: refs(schema) for name, schema in definitions.items()}
    edges["#"] = refs({k: v for k, v in root.items() if k not in ("$defs", "definitions")})
    recursive = []
    for start in edges:
        seen, stack = set(), list(edges[start])
        while stack:
            name = stack.pop()
            if name == start:
                recursive.append(start)
                break
            if name not in seen:
                seen.add(name)
                stack.extend(edges.get(name, ()))
    return recursive


def _is_object(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema


def _node_violations(
    schema: Mapping[str, Any], where: str, level: int, limits: StructuredOutputLimits
) -> Iterator[FieldViolation]:
    """What `limits` refuses in one subschema (not counting totals)."""
    mode = f"{limits.provider} structured output"
    for keyword in sorted(set(schema) - limits.keywords):
        yield FieldViolation(
            f"{where}.{keyword}", f"keyword {keyword!r} is not supported by {mode}"
        )
    if _is_object(schema):
        if schema.get("additionalProperties") is not False:
            yield FieldViolation(
                f"{where}.additionalProperties", f"must be false for every object in {mode}"
            )
        missing = [n for n in schema.get("properties", {}) if n not in schema.get("required", [])]
        if limits.all_properties_required and missing:
            yield FieldViolation(
                f"{where}.required",
                f"must list every property in {mode} (missing: {', '.join(missing)}); "
                "make an optional one nullable instead",
            )
        if limits.max_object_depth is not None and level > limits.max_object_depth:
            yield FieldViolation(
                where, f"objects nest {level} levels; {mode} allows {limits.max_object_depth}"
            )
    fmt = schema.get("format")
    if fmt is not None and "format" in limits.keywords and fmt not in limits.formats:
        yield FieldViolation(
            f"{where}.format",
            f"format {fmt!r} is not supported by {mode} "
            f"(supported: {', '.join(sorted(limits.formats))})",
        )
    min_items, allowed_min = schema.get("minItems"), limits.min_items_values
    if allowed_min is not None and min_items is not None and min_items not in allowed_min:
        allowed = " or ".join(str(v) for v in sorted(allowed_min))
        yield FieldViolation(f"{where}.minItems", f"must be {allowed} in {mode}")
    enum = schema.get("enum", [])
    if limits.primitive_enums_only and any(isinstance(v, dict | list) for v in enum):
        yield FieldViolation(
            f"{where}.enum", f"values must be strings, numbers, booleans or null in {mode}"
        )
    if limits.large_enum is not None and len(enum) > limits.large_enum[0]:
        chars = sum(len(v) for v in enum if isinstance(v, str))
        if chars > limits.large_enum[1]:
            yield FieldViolation(
                f"{where}.enum",
                f"{len(enum)} values of {chars} characters in all; {mode} allows at most "
                f"{limits.large_enum[1]} characters in an enum of over {limits.large_enum[0]}",
            )


def _is_union(schema: Any) -> bool:
    return isinstance(schema, dict) and ("anyOf" in schema or isinstance(schema.get("type"), list))


def structured_output_violations(
    document: Mapping[str, Any], provider: str, field_: str
) -> list[FieldViolation]:
    """Why `provider`'s structured-output mode would refuse `document` (a schema that already
    passed `schema_violations(..., output=True)`): one violation per problem."""
    limits = STRUCTURED_OUTPUT_LIMITS[provider]
    mode = f"{provider} structured output"
    violations: list[FieldViolation] = []
    totals = {"properties": 0, "enum values": 0, "optional properties": 0, "union properties": 0}
    for path, schema, level in _walk(document):
        violations += _node_violations(schema, _dotted(field_, path), level, limits)
        properties = schema.get("properties", {}) if _is_object(schema) else {}
        totals["properties"] += len(properties)
        totals["optional properties"] += len(set(properties) - set(schema.get("required", [])))
        totals["union properties"] += sum(_is_union(p) for p in properties.values())
        totals["enum values"] += len(schema.get("enum", []))
    for total, limit in (
        ("properties", limits.max_properties),
        ("enum values", limits.max_enum_values),
        ("optional properties", limits.max_optional_properties),
        ("union properties", limits.max_union_properties),
    ):
        if limit is not None and totals[total] > limit:
            violations.append(
                FieldViolation(field_, f"has {totals[total]} {total}; {mode} allows {limit}")
            )
    if not limits.recursion_allowed:
        for name in _recursive_definitions(document):
            where = field_ if name == "#" else _dotted(field_, ["$defs", name])
            violations.append(
                FieldViolation(where, f"is recursive; {mode} does not allow recursion")
            )
    return violations


def output_schema_violations(
    document: dict[str, Any], field_: str, providers: Iterable[str]
) -> list[FieldViolation]:
    """All save-time checks of an output schema that will be requested from `providers`
    (an ad hoc Execute's `output_schema`, for example): [] when it may be used."""
    violations = schema_violations(document, field_, output=True)
    if violations:
        return violations
    return [
        v
        for provider in dict.fromkeys(providers)
        for v in structured_output_violations(document, provider, field_)
    ]


# --- run time -------------------------------------------------------------------------------


def _pointer(prefix: str, path: list[str | int]) -> str:
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in path)
    pointer = "/".join([prefix, *escaped])
    # The document's keys are the caller's (or the model's): bound what an error repeats.
    if len(pointer) > MAX_POINTER_CHARS:
        return pointer[: MAX_POINTER_CHARS - 3] + "..."
    return pointer


class CompiledSchema:
    """A compiled validator for one schema. Thread-safe; share it."""

    def __init__(self, schema: JsonSchema) -> None:
        self.schema = schema
        self._validator = _compile(schema.document)

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def validate(self, instance: Any, prefix: str) -> list[SchemaViolation]:
        """One violation per error (at most MAX_REPORTED_ERRORS), each with its JSON pointer
        under `prefix` (`output/items/0/price`; the whole document is just `output`)."""
        if self._validator.is_valid(instance):  # the common case, without building errors
            return []
        violations = []
        for error in self._validator.iter_errors(instance):
            violations.append(
                SchemaViolation(_pointer(prefix, list(error.instance_path)), _short(error.message))
            )
            if len(violations) == MAX_REPORTED_ERRORS:
                break
        return violations


class _ValidatorCache:
    """Compiled validators by schema digest; least recently used evicted beyond `size`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, CompiledSchema] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, schema: JsonSchema) -> CompiledSchema:
        with self._lock:
            found = self._items.get(schema.digest)
            if found is not None:
                self._items.move_to_end(schema.digest)
                return found
        compiled = CompiledSchema(schema)  # outside the lock: compiling may take a while
        with self._lock:
            self._items[schema.digest] = compiled
            self._items.move_to_end(schema.digest)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        return len(self._items)


_CACHE = _ValidatorCache(VALIDATOR_CACHE_SIZE)


def compiled(schema: JsonSchema) -> CompiledSchema:
    """The cached compiled validator of a schema that passed `schema_violations`."""
    return _CACHE.get(schema)


def validate(schema: JsonSchema, instance: Any, prefix: str) -> list[SchemaViolation]:
    return compiled(schema).validate(instance, prefix)


@functools.cache
def _meta_validator() -> jsonschema_rs.Validator:
    """Compiled at first use, with jsonschema_rs itself: a process that is never sent a
    schema keeps neither in memory (~8 MB)."""
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(
        {"$ref": DRAFT_2020_12}, validate_formats=True, offline=True
    )
