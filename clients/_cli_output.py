"""How the CLI shows things: aligned tables and key-value blocks for people, proto3 JSON for
scripts, exact dollar amounts from nano-dollars."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ._types import AgentRoute, AgentView, Delta, ExecuteEvent, Started
from .gen.execution.v1 import resources_pb2 as ex_res
from .gen.keyvault.v1 import resources_pb2 as kv_res

_NANOS_PER_DOLLAR = Decimal(10) ** 9


def as_json(message: Message) -> dict[str, Any]:
    """proto3 JSON as grpcurl prints it: the proto field names (`key_hint`), enum names,
    int64 as strings, RFC 3339 times, durations like `"0.120s"`; unlike grpcurl, fields
    without presence are included at their zero value too (an absent `cost_nanos` means the
    cost is unknown)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False)


def event_json(event: ExecuteEvent) -> dict[str, Any]:
    """One Execute event as the JSON of its `ExecuteResponse` (`"replayed": true` only on
    the events of a replay)."""
    document: dict[str, Any]
    if isinstance(event, Started):
        document = {"started": as_json(event.execution)}
    elif isinstance(event, Delta):
        document = {"delta": {"text": event.text}}
    else:
        document = {"completed": as_json(event.execution)}
    if event.replayed:
        document["replayed"] = True
    return document


def dollars(nanos: int) -> str:
    """Exact: 318000 -> `$0.000318`, 1_500_000_000 -> `$1.50`, 0 -> `$0.00`."""
    amount = (Decimal(nanos) / _NANOS_PER_DOLLAR).normalize()
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]  # int for finite values
        amount = amount.quantize(Decimal("0.01"))
    return f"${amount:f}"


def cost(execution: ex_res.Execution | ex_res.RouteAttempt) -> str:
    return dollars(execution.cost_nanos) if execution.HasField("cost_nanos") else "unknown"


def duration(value: Duration) -> str:
    millis = value.ToMilliseconds()
    return f"{millis} ms" if millis < 10_000 else f"{millis / 1000:.1f} s"


def time(message: Message, field: str) -> str:
    if not message.HasField(field):
        return "-"
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


def provider(value: int) -> str:
    return kv_res.Provider.Name(value).removeprefix("PROVIDER_").lower()  # type: ignore[arg-type]


def state(value: int) -> str:
    return ex_res.ExecutionState.Name(value).removeprefix("EXECUTION_STATE_")  # type: ignore[arg-type]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


# --- resources ------------------------------------------------------------------------------


def api_key_rows(keys: Sequence[kv_res.ApiKey]) -> str:
    return table(
        ["PROVIDER", "HINT", "FINGERPRINT", "BASE URL", "MASTER KEY", "UPDATED"],
        [
            [
                provider(k.provider),
                k.key_hint,
                k.fingerprint,
                k.base_url or "-",
                f"v{k.master_key_version}",
                time(k, "update_time"),
            ]
            for k in keys
        ],
    )


def api_key_fields(key: kv_res.ApiKey) -> str:
    return fields(
        [
            ("name", key.name),
            ("provider", provider(key.provider)),
            ("hint", key.key_hint),
            ("fingerprint", key.fingerprint),
            ("base url", key.base_url or "(provider default)"),
            ("master key", f"v{key.master_key_version}"),
            ("created", time(key, "create_time")),
            ("updated", time(key, "update_time")),
        ]
    )


def tokens(usage: ex_res.Usage) -> str:
    text = f"{usage.input_tokens} in / {usage.output_tokens} out"
    return text + (" (estimated)" if usage.estimated else "")


def summary(execution: ex_res.Execution, *, replayed: bool = False) -> str:
    """The one line `execute` prints to stderr when the stream ends; a replay (answered from
    the record of an earlier call with the same request id) says so."""
    parts = [
        f"{state(execution.state)}: {tokens(execution.usage)} tokens",
        f"cost {cost(execution)}",
        f"latency {duration(execution.latency)}",
    ]
    if execution.HasField("time_to_first_token"):
        parts.append(f"first token {duration(execution.time_to_first_token)}")
    parts.append(f"attempts {execution.attempts}")
    if execution.route_index:
        parts.append(f"served by route {execution.route_index + 1} ({fallbacks(execution)})")
    if execution.HasField("output_valid"):
        parts.append(f"output {'valid' if execution.output_valid else 'invalid'}")
    if execution.error.reason:
        parts.append(f"error {execution.error.reason}")
    if replayed:
        return ", ".join([*parts, f"replayed from {execution.name}"])
    return ", ".join(parts) + f" ({execution.name})"


def fallbacks(execution: ex_res.Execution) -> str:
    """Why the routes before the answering one were left: `anthropic PROVIDER_OVERLOADED`."""
    return "; ".join(
        f"{provider(a.provider)} {a.reason}"
        for a in execution.route_attempts
        if a.route_index < execution.route_index
    )


def execution_rows(executions: Sequence[ex_res.Execution]) -> str:
    return table(
        ["NAME", "AGENT", "PROVIDER", "MODEL", "STATE", "TOKENS", "COST", "LATENCY", "CREATED"],
        [
            [
                e.name,
                e.agent_id,
                provider(e.provider),
                e.model,
                state(e.state),
                tokens(e.usage),
                cost(e),
                duration(e.latency) if e.HasField("latency") else "-",
                time(e, "create_time"),
            ]
            for e in executions
        ],
    )


def execution_fields(e: ex_res.Execution) -> str:
    pairs = [
        ("name", e.name),
        ("agent", e.agent_id),
        ("provider", provider(e.provider)),
        ("model", e.model),
        ("state", state(e.state)),
        ("tokens", tokens(e.usage)),
        ("cache tokens", f"{e.usage.cache_read_tokens} read / {e.usage.cache_write_tokens} write"),
        ("cost", cost(e)),
        ("attempts", str(e.attempts)),
        *(
            (
                f"route {a.route_index + 1}",
                f"{provider(a.provider)} {a.model}: "
                + (a.reason or "answered")
                + (f" (HTTP {a.http_status})" if a.http_status else "")
                + f", {duration(a.latency)}, cost {cost(a)}",
            )
            for a in (e.route_attempts if len(e.route_attempts) > 1 else ())
        ),
        ("created", time(e, "create_time")),
        ("first token", time(e, "first_token_time")),
        ("ended", time(e, "end_time")),
        ("latency", duration(e.latency) if e.HasField("latency") else "-"),
        (
            "time to first token",
            duration(e.time_to_first_token) if e.HasField("time_to_first_token") else "-",
        ),
        ("finish reason", e.finish_reason or "-"),
        ("request id", e.request_id or "-"),
    ]
    if e.labels:
        pairs.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(e.labels.items()))))
    if e.agent:
        pairs.append(("agent version", f"{e.agent} (etag {e.agent_etag})"))
    if e.HasField("output_valid"):
        pairs.append(("output valid", "yes" if e.output_valid else "no"))
    if e.cancelled_by:
        pairs.append(("cancelled by", e.cancelled_by))
    if e.error.reason:
        pairs.append(("error", f"{e.error.reason}: {e.error.message}"))
        if e.error.provider_status:
            pairs.append(("provider status", str(e.error.provider_status)))
        pairs += [(f"  {v.pointer}", v.description) for v in e.error.violations]
    text = fields(pairs)
    if e.output_text:
        text += "\n\n" + e.output_text
    return text


def stats_fields(stats: ex_res.AgentStats, window: str) -> str:
    finished = stats.succeeded_count + stats.failed_count + stats.cancelled_count
    unknown = f" (+ {stats.unknown_cost_count} of unknown cost)" if stats.unknown_cost_count else ""
    return fields(
        [
            ("agent", stats.agent_id),
            ("window", window),
            (
                "executions",
                f"{stats.total_count} (running {stats.running_count}, succeeded "
                f"{stats.succeeded_count}, failed {stats.failed_count}, cancelled "
                f"{stats.cancelled_count})",
            ),
            ("success rate", f"{stats.success_rate:.1%}" if finished else "-"),
            (
                "tokens",
                f"{stats.input_tokens} in / {stats.output_tokens} out, cache "
                f"{stats.cache_read_tokens} read / {stats.cache_write_tokens} write",
            ),
            ("cost", dollars(stats.cost_nanos) + unknown),
            (
                "latency",
                f"p50 {duration(stats.latency_p50)}, p95 {duration(stats.latency_p95)}",
            ),
            (
                "first token",
                f"p50 {duration(stats.time_to_first_token_p50)}, "
                f"p95 {duration(stats.time_to_first_token_p95)}",
            ),
        ]
    )


def audit_rows(events: Sequence[kv_res.AuditEvent]) -> str:
    return table(
        ["TIME", "ACTION", "OUTCOME", "CALLER", "WORKSPACE", "PROVIDER", "REQUEST ID", "REASON"],
        [
            [
                time(e, "create_time"),
                kv_res.AuditAction.Name(e.action).removeprefix("AUDIT_ACTION_"),
                kv_res.AuditOutcome.Name(e.outcome).removeprefix("AUDIT_OUTCOME_"),
                e.caller or "-",
                e.workspace or "-",
                provider(e.provider) if e.provider else "-",
                e.request_id or "-",
                e.reason or "-",
            ]
            for e in events
        ],
    )


def route(r: AgentRoute) -> str:
    settings = [
        f"{name} {value}"
        for name, value in (
            ("max tokens", r.max_tokens),
            ("temperature", r.temperature),
            ("top p", r.top_p),
        )
        if value is not None
    ]
    if r.stop_sequences:
        settings.append(f"stop {list(r.stop_sequences)}")
    return f"{r.provider} {r.model}" + (f" ({', '.join(settings)})" if settings else "")


def _schema_summary(schema: dict[str, Any] | None) -> str:
    if schema is None:
        return "-"
    properties = schema.get("properties")
    return f"{len(properties)} properties" if isinstance(properties, dict) else "yes"


def agent_rows(agents: Sequence[AgentView]) -> str:
    return table(
        ["AGENT", "PROVIDER", "MODEL", "INPUT SCHEMA", "OUTPUT SCHEMA", "ETAG", "UPDATED"],
        [
            [
                a.agent_id,
                a.routes[0].provider if a.routes else "-",
                a.routes[0].model if a.routes else "-",
                _schema_summary(a.input_schema),
                _schema_summary(a.output_schema),
                a.etag,
                time(a.message, "update_time"),
            ]
            for a in agents
        ],
    )


def agent_fields(a: AgentView) -> str:
    pairs = [
        ("name", a.name),
        ("display name", a.display_name or "-"),
        ("description", a.description or "-"),
        *(
            (f"route {i + 1}" if len(a.routes) > 1 else "route", route(r))
            for i, r in enumerate(a.routes)
        ),
        (
            "fallback on",
            "defaults" if a.fallback_on is None else ", ".join(a.fallback_on) or "never",
        ),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())) or "-"),
        ("etag", a.etag),
        ("created", time(a.message, "create_time")),
        ("updated", time(a.message, "update_time")),
    ]
    text = fields(pairs)
    for title, body in (
        ("instructions", a.instructions or None),
        ("input schema", dumps(a.input_schema) if a.input_schema is not None else None),
        ("output schema", dumps(a.output_schema) if a.output_schema is not None else None),
    ):
        if body is not None:
            text += f"\n\n{title}:\n{body}"
    return text
