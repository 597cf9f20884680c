"""Agents: an agent is defined once per workspace (instructions, where it runs, the JSON
Schemas of its input and output) and run by name.

This module is the domain: immutable values and the pure update rules (masks, etags, the
check that an output schema fits every route's provider). `agent_store` applies them over the
SQL in `agent_repository`.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from execution_service.routing import Trigger
from execution_service.schemas import JsonSchema, structured_output_violations
from execution_service.validation import agent_id_violations
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.pagination import Cursor

# The fields UpdateAgent may change, in the order of the Agent message.
UPDATABLE_FIELDS = (
    "display_name",
    "description",
    "instructions",
    "routes",
    "input_schema",
    "output_schema",
    "labels",
    "fallback",
)
ETAG_BYTES = 12
# A refusal's violations travel in gRPC trailing metadata twice (the status message and the
# BadRequest detail, base64-encoded), and clients refuse metadata over 8 KB by default: past
# this many bytes of violations the rest are counted, not listed. A field path (which may
# quote a schema's property names) is cut to MAX_FIELD_BYTES.
MAX_VIOLATION_BYTES = 1500
MAX_FIELD_BYTES = 200


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """A provider (`openai` or `anthropic`) and model to run, with generation settings."""

    provider: str
    model: str
    generation: GenerationSettings = GenerationSettings()


@dataclass(frozen=True)
class AgentSpec:
    """What a caller sets on an agent (every updatable field)."""

    display_name: str = ""
    description: str = ""
    instructions: str = ""
    routes: tuple[Route, ...] = ()
    input_schema: JsonSchema | None = None
    output_schema: JsonSchema | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    fallback: frozenset[Trigger] | None = None  # None: routing.DEFAULT_TRIGGERS


@dataclass(frozen=True)
class Agent:
    workspace: str
    agent_id: str
    spec: AgentSpec
    create_time: dt.datetime
    update_time: dt.datetime
    etag: str

    @property
    def name(self) -> str:
        return agent_name(self.workspace, self.agent_id)


def agent_name(workspace: str, agent_id: str) -> str:
    return f"workspaces/{workspace}/agents/{agent_id}"


def new_etag(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """An opaque version token; a fresh one for every write."""
    return random_bytes(ETAG_BYTES).hex()


def _clip(text: str, limit: int) -> str:
    clipped = text.encode()[:limit].decode(errors="ignore")
    return clipped if clipped == text else clipped + "..."


def refused(violations: Sequence[FieldViolation]) -> InvalidArgument:
    """INVALID_ARGUMENT with the first violations that fit in MAX_VIOLATION_BYTES (at least
    one), and a last one that counts the others, so that any client can read the error."""
    kept: list[FieldViolation] = []
    used = 0
    for i, violation in enumerate(violations):
        field_ = _clip(violation.field, MAX_FIELD_BYTES)
        size = len(field_.encode()) + len(violation.description.encode())
        if kept and used + size > MAX_VIOLATION_BYTES:
            kept.append(FieldViolation(field_, f"and {len(violations) - i} more problems"))
            break
        kept.append(FieldViolation(field_, violation.description))
        used += size
    return InvalidArgument(kept)


def structured_output_fit(spec: AgentSpec, field_: str = "agent") -> list[FieldViolation]:
    """An output schema must suit the structured-output mode of every route's provider."""
    if spec.output_schema is None:
        return []
    providers = dict.fromkeys(r.provider for r in spec.routes)  # each once, in route order
    return [
        violation
        for provider in providers
        for violation in structured_output_violations(
            spec.output_schema.document, provider, f"{field_}.output_schema"
        )
    ]


@dataclass(frozen=True)
class AgentIdCursor:
    """A ListAgents page token carries the last agent id, checked like any agent id."""

    def encode(self, value: str) -> str:
        return value

    def decode(self, raw: object) -> str:
        if not isinstance(raw, str) or agent_id_violations(raw):
            raise ValueError("not an agent id")
        return raw


AGENT_CURSOR: Cursor = {"id": AgentIdCursor()}
