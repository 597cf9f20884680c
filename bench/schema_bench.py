"""Output validation cost: a ~1 KB object against a 20-property schema, with each installed
JSON Schema library's compiled validator built once (as the service caches it per schema).
Also which library supports what the service needs (draft 2020-12, `$defs`, `oneOf`, formats,
every error with its instance path). Prints figures; asserts nothing."""

from __future__ import annotations

import importlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from execution_service.schemas import JsonSchema, compiled

_ITEM = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "price": {"type": "number", "minimum": 0},
        "quantity": {"type": "integer", "minimum": 1},
    },
    "required": ["sku", "price", "quantity"],
    "additionalProperties": False,
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"item": _ITEM},
    "properties": {
        "order_id": {"type": "string", "format": "uuid"},
        "customer_email": {"type": "string", "format": "email"},
        "created": {"type": "string", "format": "date-time"},
        "ship_date": {"type": "string", "format": "date"},
        "status": {"enum": ["new", "paid", "shipped", "cancelled"]},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 50},
        "notes": {"type": ["string", "null"], "maxLength": 500},
        "priority": {"type": "integer", "minimum": 0, "maximum": 5},
        "gift": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "postcode": {"type": "string"},
                "country": {"type": "string", "minLength": 2, "maxLength": 2},
            },
            "required": ["street", "city", "country"],
        },
        "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{6,20}$"},
        "channel": {"oneOf": [{"const": "web"}, {"const": "store"}, {"const": "phone"}]},
        "discount": {"type": "number", "minimum": 0, "maximum": 1},
        "loyalty_id": {"type": ["string", "null"]},
        "website": {"type": "string", "format": "uri"},
        "score": {"type": "number"},
        "version": {"type": "integer"},
    },
    "required": ["order_id", "customer_email", "status", "total", "items"],
    "additionalProperties": False,
}
INSTANCE: dict[str, Any] = {
    "order_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "customer_email": "ana.silva@example.com",
    "created": "2026-12-01T09:30:00Z",
    "ship_date": "2026-12-03",
    "status": "paid",
    "total": 129.5,
    "currency": "EUR",
    "items": [
        {"sku": "ABC-0001", "price": 19.5, "quantity": 2},
        {"sku": "XYZ-0420", "price": 45.25, "quantity": 1},
        {"sku": "QRS-1234", "price": 45.25, "quantity": 1},
        {"sku": "LMN-9876", "price": 0, "quantity": 3},
    ],
    "notes": (
        "Leave the parcel with the neighbour at number 12 if nobody answers the door; "
        "the side gate is open on weekdays and the dog is friendly. Call before 6 pm."
    ),
    "priority": 2,
    "gift": False,
    "tags": ["winter", "promo", "repeat-customer", "express", "fragile"],
    "address": {
        "street": "Rua das Flores 12",
        "city": "Lisboa",
        "postcode": "1200-195",
        "country": "PT",
    },
    "phone": "+351 912 345 678",
    "channel": "web",
    "discount": 0.1,
    "loyalty_id": None,
    "website": "https://shop.example.com/orders/7c9e6679",
    "score": 0.87,
    "version": 3,
}


def _service_validator() -> Callable[[Any], Any]:
    """The service's own path: the cached compiled validator, collecting violations."""
    schema = compiled(JsonSchema.of(SCHEMA))
    return lambda instance: schema.validate(instance, "output")


def _jsonschema_rs() -> Callable[[Any], Any]:
    import jsonschema_rs

    validator = jsonschema_rs.Draft202012Validator(SCHEMA, validate_formats=True)
    return lambda instance: list(validator.iter_errors(instance))


def _jsonschema() -> Callable[[Any], Any]:
    import jsonschema

    cls = jsonschema.Draft202012Validator
    validator = cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)
    return lambda instance: list(validator.iter_errors(instance))


def _fastjsonschema() -> Callable[[Any], Any]:
    import fastjsonschema

    # No draft 2020-12 support: compiled as draft-07, the closest it knows.
    draft7 = {k: v for k, v in SCHEMA.items() if k != "$schema"}
    validate = fastjsonschema.compile(draft7)

    def run(instance: Any) -> Any:
        try:
            return validate(instance)
        except fastjsonschema.JsonSchemaValueException as exc:  # stops at the first error
            return [exc]

    return run


LIBRARIES: dict[str, tuple[str, Callable[[], Callable[[Any], Any]]]] = {
    "service (jsonschema-rs, cached)": ("jsonschema_rs", _service_validator),
    "jsonschema-rs": ("jsonschema_rs", _jsonschema_rs),
    "jsonschema": ("jsonschema", _jsonschema),
    "fastjsonschema": ("fastjsonschema", _fastjsonschema),
}


def _measure(validate: Callable[[Any], Any], seconds: float) -> tuple[float, float, int]:
    """p50 and p99 in microseconds of one validation, over batches of 20 calls."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(20):
            validate(INSTANCE)
        samples.append((time.perf_counter() - start) / 20 * 1e6)
    quantiles = statistics.quantiles(samples, n=100)
    return quantiles[49], quantiles[98], len(samples) * 20


def _capabilities() -> list[str]:
    """What each library does with the features the service relies on (probed, not quoted):
    a probe passes when the good value is accepted and the bad one rejected."""
    probes: dict[str, tuple[dict[str, Any], Any, Any]] = {
        "2020-12 prefixItems": (
            {"prefixItems": [{"type": "integer"}], "items": False},
            [1],
            [1, 2],
        ),
        "$defs + $ref": ({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}, 1, "x"),
        "oneOf": ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, 1, 1.5),
        "format email": ({"format": "email"}, "a@example.com", "not-an-email"),
        "format date-time": ({"format": "date-time"}, "2026-12-01T09:30:00Z", "yesterday"),
        "format uuid": ({"format": "uuid"}, "7c9e6679-7425-40de-944b-e07fc1f90ae7", "1234"),
        "format uri": ({"format": "uri"}, "https://example.com/a", "not a uri"),
        "format date": ({"format": "date"}, "2026-12-01", "2026-13-45"),
    }
    lines = []
    for name in ("jsonschema_rs", "jsonschema", "fastjsonschema"):
        try:
            importlib.import_module(name)
        except ImportError:
            lines.append(f"  {name}: not installed")
            continue
        results = [
            f"{probe} {'yes' if _valid(name, s, good) and not _valid(name, s, bad) else 'NO'}"
            for probe, (s, good, bad) in probes.items()
        ]
        results.append(f"every error with its path {'NO' if name == 'fastjsonschema' else 'yes'}")
        lines.append(f"  {name}: " + ", ".join(results))
    return lines


def _valid(library: str, schema: dict[str, Any], value: Any) -> bool:
    """Whether `library` accepts `value` under `schema` (declared draft 2020-12, formats on)."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    if library == "jsonschema_rs":
        import jsonschema_rs

        return bool(
            jsonschema_rs.Draft202012Validator(schema, validate_formats=True).is_valid(value)
        )
    if library == "jsonschema":
        import jsonschema

        cls = jsonschema.Draft202012Validator
        return bool(cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value))
    import fastjsonschema  # raises on the first error; reads an unknown $schema as draft-07

    try:
        fastjsonschema.compile(schema)(value)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def run(seconds: float) -> list[str]:
    size = len(json.dumps(INSTANCE).encode())
    properties = len(SCHEMA["properties"])
    per_case = max(seconds / len(LIBRARIES), 0.5)
    lines = [
        f"## JSON Schema validation: {size}-byte object, {properties}-property schema, "
        "compiled validator reused (target: p50 <= 50 us)",
    ]
    for label, (module, build) in LIBRARIES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            lines.append(f"  {label:<32} not installed")
            continue
        p50, p99, count = _measure(build(), per_case)
        lines.append(f"  {label:<32} p50 {p50:8.1f} us   p99 {p99:8.1f} us   ({count} calls)")
    lines.append("Feature probes (good value accepted and bad one rejected = yes):")
    lines += _capabilities()
    return lines


if __name__ == "__main__":
    print("\n".join(run(4.0)))
