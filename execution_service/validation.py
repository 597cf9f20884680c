"""Everything a caller sends to the execution service is checked here, before any row."""

from __future__ import annotations

import datetime as dt
import math
import re

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from clients.gen.keyvault.v1 import resources_pb2 as kv_res
from service_kit.call_context import REQUEST_ID
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import WORKSPACE_PATTERN, has_control_characters, workspace_of

# Identifiers are matched whole (fullmatch): no trailing newline or other control character.
_AGENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MODEL = re.compile(r"[A-Za-z0-9._:/@-]{1,256}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_EXECUTION_NAME = re.compile(
    rf"workspaces/({WORKSPACE_PATTERN})/executions/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)

MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1000
MAX_OUTPUT_TOKENS = 200_000
MAX_STOP_SEQUENCES = 4
MAX_LABELS = 16
MAX_LABEL_VALUE_CHARS = 256

PROVIDERS = {kv_res.PROVIDER_OPENAI: "openai", kv_res.PROVIDER_ANTHROPIC: "anthropic"}
ROLES = {
    res.MESSAGE_ROLE_SYSTEM: "system",
    res.MESSAGE_ROLE_USER: "user",
    res.MESSAGE_ROLE_ASSISTANT: "assistant",
}
STATES = {
    res.EXECUTION_STATE_RUNNING: "RUNNING",
    res.EXECUTION_STATE_SUCCEEDED: "SUCCEEDED",
    res.EXECUTION_STATE_FAILED: "FAILED",
    res.EXECUTION_STATE_CANCELLED: "CANCELLED",
}


def agent_id_violations(agent_id: str, field: str = "agent_id") -> list[FieldViolation]:
    if _AGENT_ID.fullmatch(agent_id):
        return []
    return [FieldViolation(field, "must be 1-128 characters of letters, digits, '.', '_', '-'")]


def provider_violations(provider: int, field: str = "provider") -> list[FieldViolation]:
    if provider in PROVIDERS:
        return []
    return [FieldViolation(field, "must be PROVIDER_OPENAI or PROVIDER_ANTHROPIC")]


def model_violations(model: str, field: str = "model") -> list[FieldViolation]:
    if _MODEL.fullmatch(model):
        return []
    return [FieldViolation(field, "must be 1-256 characters of [A-Za-z0-9._:/@-]")]


def _message_violations(messages: list[res.Message]) -> list[FieldViolation]:
    if not messages:
        return [FieldViolation("messages", "at least one message is required")]
    if len(messages) > MAX_MESSAGES:
        return [FieldViolation("messages", f"at most {MAX_MESSAGES} messages")]
    violations = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            violations.append(
                FieldViolation(f"messages[{i}].role", "must be SYSTEM, USER or ASSISTANT")
            )
        if not message.content:
            violations.append(FieldViolation(f"messages[{i}].content", "must not be empty"))
    if all(m.role == res.MESSAGE_ROLE_SYSTEM for m in messages):
        violations.append(
            FieldViolation("messages", "needs at least one user or assistant message")
        )
    if sum(len(m.content) for m in messages) > MAX_PROMPT_CHARS:
        violations.append(
            FieldViolation("messages", f"total content over {MAX_PROMPT_CHARS} characters")
        )
    return violations


def generation_config_violations(config: res.GenerationConfig) -> list[FieldViolation]:
    violations = []
    if config.HasField("max_tokens") and not 1 <= config.max_tokens <= MAX_OUTPUT_TOKENS:
        violations.append(
            FieldViolation("generation_config.max_tokens", f"must be 1 to {MAX_OUTPUT_TOKENS}")
        )
    if config.HasField("temperature") and not (
        math.isfinite(config.temperature) and 0 <= config.temperature <= 2
    ):
        violations.append(FieldViolation("generation_config.temperature", "must be 0 to 2"))
    if config.HasField("top_p") and not (math.isfinite(config.top_p) and 0 <= config.top_p <= 1):
        violations.append(FieldViolation("generation_config.top_p", "must be 0 to 1"))
    stops = list(config.stop_sequences)
    if len(stops) > MAX_STOP_SEQUENCES or any(not s or len(s) > 256 for s in stops):
        violations.append(
            FieldViolation(
                "generation_config.stop_sequences",
                f"at most {MAX_STOP_SEQUENCES} non-empty sequences of up to 256 characters",
            )
        )
    return violations


def label_violations(labels: dict[str, str]) -> list[FieldViolation]:
    if len(labels) > MAX_LABELS:
        return [FieldViolation("labels", f"at most {MAX_LABELS} labels")]
    bad = [
        k
        for k, v in labels.items()
        if not _LABEL_KEY.fullmatch(k)
        or len(v) > MAX_LABEL_VALUE_CHARS
        or has_control_characters(v)
    ]
    if bad:
        return [
            FieldViolation(
                "labels",
                "keys are 1-63 of [a-z0-9_-] starting with a letter; values are up to "
                f"{MAX_LABEL_VALUE_CHARS} characters with no control characters",
            )
        ]
    return []


def request_id_violations(request_id: str) -> list[FieldViolation]:
    if not request_id or REQUEST_ID.fullmatch(request_id):
        return []
    return [FieldViolation("request_id", "must be 1-128 characters of [A-Za-z0-9._:-]")]


def execute_violations(request: pb.ExecuteRequest, *, route: bool = True) -> list[FieldViolation]:
    """What is wrong with an ad hoc Execute request's fields (its output schema aside, and
    its provider, model and generation config when `route` is False: routes are listed)."""
    violations: list[FieldViolation] = []
    try:
        workspace_of(request.parent)
    except InvalidArgument as exc:
        violations += exc.violations
    violations += agent_id_violations(request.agent_id)
    if route:
        violations += provider_violations(request.provider)
        violations += model_violations(request.model)
        violations += generation_config_violations(request.generation_config)
    violations += _message_violations(list(request.messages))
    violations += request_id_violations(request.request_id)
    violations += label_violations(dict(request.labels))
    return violations


def parse_execution_name(name: str) -> tuple[str, str]:
    match = _EXECUTION_NAME.fullmatch(name)
    if not match:
        raise InvalidArgument(
            [FieldViolation("name", "must be workspaces/{workspace}/executions/{uuid}")]
        )
    return match.group(1), match.group(2)


def agent_id_of(agent_id: str, *, required: bool) -> str | None:
    if not agent_id and not required:
        return None
    violations = agent_id_violations(agent_id)
    if violations:
        raise InvalidArgument(violations)
    return agent_id


def time_window(start: dt.datetime | None, end: dt.datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise InvalidArgument([FieldViolation("start_time", "must be before end_time")])
