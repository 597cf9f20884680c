"""The budgets RPCs' requests, checked and decoded before any row is read or written; and the
Budget message the answers carry."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from clients.gen.execution.v1 import execution_service_pb2 as pb
from clients.gen.execution.v1 import resources_pb2 as res
from execution_service.agent_requests import MAX_DISPLAY_NAME_CHARS, MAX_ETAG_CHARS
from execution_service.agents import refused
from execution_service.budgets import (
    ALERT_ONLY,
    DAY,
    ENFORCE,
    MONTH,
    UPDATABLE_FIELDS,
    Budget,
    BudgetSpec,
)
from execution_service.field_masks import ResourceName, decode_fields, mask_fields
from execution_service.validation import agent_id_violations, label_violations
from service_kit import wellknown
from service_kit.errors import FieldViolation, InvalidArgument
from service_kit.names import has_control_characters, workspace_of

_BUDGET_NAME = ResourceName("budgets", "budget")
PERIODS: dict[int, str] = {res.BUDGET_PERIOD_DAY: DAY, res.BUDGET_PERIOD_MONTH: MONTH}
MODES: dict[int, str] = {res.BUDGET_MODE_ENFORCE: ENFORCE, res.BUDGET_MODE_ALERT_ONLY: ALERT_ONLY}
_PERIOD_ENUM = {v: k for k, v in PERIODS.items()}
_MODE_ENUM = {v: k for k, v in MODES.items()}
# Far beyond any real budget (USD 1 billion), far inside int64.
MAX_LIMIT_NANOS = 10**18
MAX_PER_MINUTE = 10**12


@dataclass(frozen=True)
class CreateBudget:
    workspace: str
    budget_id: str
    spec: BudgetSpec


@dataclass(frozen=True)
class UpdateBudget:
    workspace: str
    budget_id: str
    changes: dict[str, Any]
    etag: str | None


def parse_budget_name(name: str, field: str = "name") -> tuple[str, str]:
    """`workspaces/{workspace}/budgets/{budget}` -> (workspace, budget id)."""
    return _BUDGET_NAME.parse(name, field)


def _optional_count(
    budget: res.Budget, name: str, field: str, maximum: int, *, positive: bool
) -> tuple[int | None, list[FieldViolation]]:
    if not budget.HasField(name):  # type: ignore[arg-type]
        return None, []
    value = getattr(budget, name)
    low = 1 if positive else 0
    if not low <= value <= maximum:
        return None, [FieldViolation(field, f"must be between {low} and {maximum}")]
    return value, []


def _decoders(
    budget: res.Budget, prefix: str, *, creating: bool
) -> dict[str, Callable[[], tuple[Any, list[FieldViolation]]]]:
    def display_name() -> tuple[Any, list[FieldViolation]]:
        value = budget.display_name
        if len(value) > MAX_DISPLAY_NAME_CHARS or has_control_characters(value):
            return value, [
                FieldViolation(
                    f"{prefix}.display_name",
                    f"at most {MAX_DISPLAY_NAME_CHARS} characters, no control characters",
                )
            ]
        return value, []

    def agent_id() -> tuple[Any, list[FieldViolation]]:
        value = budget.agent_id
        return value, agent_id_violations(value, f"{prefix}.agent_id") if value else []

    def enum(name: str, values: dict[int, str], default: str) -> Callable[[], tuple[Any, Any]]:
        def decode() -> tuple[Any, list[FieldViolation]]:
            raw = getattr(budget, name)
            if raw == 0 and creating:
                return default, []
            if raw not in values:
                allowed = " or ".join(f"BUDGET_{name.upper()}_{v}" for v in values.values())
                return None, [FieldViolation(f"{prefix}.{name}", f"must be {allowed}")]
            return values[raw], []

        return decode

    def labels() -> tuple[Any, list[FieldViolation]]:
        value = dict(budget.labels)
        return value, [
            FieldViolation(f"{prefix}.{v.field}", v.description) for v in label_violations(value)
        ]

    return {
        "display_name": display_name,
        "agent_id": agent_id,
        "limit_nanos": lambda: _optional_count(
            budget, "limit_nanos", f"{prefix}.limit_nanos", MAX_LIMIT_NANOS, positive=False
        ),
        "period": enum("period", PERIODS, DAY),
        "mode": enum("mode", MODES, ENFORCE),
        "allow_unpriced_models": lambda: (budget.allow_unpriced_models, []),
        "requests_per_minute": lambda: _optional_count(
            budget,
            "requests_per_minute",
            f"{prefix}.requests_per_minute",
            MAX_PER_MINUTE,
            positive=True,
        ),
        "tokens_per_minute": lambda: _optional_count(
            budget,
            "tokens_per_minute",
            f"{prefix}.tokens_per_minute",
            MAX_PER_MINUTE,
            positive=True,
        ),
        "labels": labels,
    }


def _decode(
    budget: res.Budget, fields: Collection[str], *, creating: bool
) -> tuple[dict[str, Any], list[FieldViolation]]:
    return decode_fields(_decoders(budget, "budget", creating=creating), fields, UPDATABLE_FIELDS)


def create_budget(request: pb.CreateBudgetRequest) -> CreateBudget:
    violations: list[FieldViolation] = []
    workspace = ""
    try:
        workspace = workspace_of(request.parent)
    except InvalidArgument as exc:
        violations += exc.violations
    violations += agent_id_violations(request.budget_id, "budget_id")
    values, found = _decode(request.budget, UPDATABLE_FIELDS, creating=True)
    violations += found
    if violations:
        raise refused(violations)
    return CreateBudget(workspace, request.budget_id, BudgetSpec(**values))


def update_budget(request: pb.UpdateBudgetRequest) -> UpdateBudget:
    workspace, budget_id, violations = _BUDGET_NAME.violations(request.budget.name, "budget.name")
    try:
        fields = mask_fields(list(request.update_mask.paths), UPDATABLE_FIELDS)
    except InvalidArgument as exc:
        violations += exc.violations
        fields = frozenset()
    changes, found = _decode(request.budget, fields, creating=False)
    violations += found
    violations += _etag_violations(request.budget.etag, "budget.etag")
    if violations:
        raise refused(violations)
    return UpdateBudget(workspace, budget_id, changes, request.budget.etag or None)


def delete_budget(request: pb.DeleteBudgetRequest) -> tuple[str, str, str | None]:
    workspace, budget_id, violations = _BUDGET_NAME.violations(request.name, "name")
    violations += _etag_violations(request.etag, "etag")
    if violations:
        raise refused(violations)
    return workspace, budget_id, request.etag or None


def _etag_violations(etag: str, field: str) -> list[FieldViolation]:
    if len(etag) > MAX_ETAG_CHARS or has_control_characters(etag):
        return [FieldViolation(field, "is not an etag this service issued")]
    return []


def budget_message(budget: Budget) -> res.Budget:
    spec, current = budget.spec, budget.current
    return res.Budget(
        name=budget.name,
        display_name=spec.display_name,
        agent_id=spec.agent_id,
        limit_nanos=spec.limit_nanos,
        period=_PERIOD_ENUM[spec.period],  # type: ignore[arg-type]
        mode=_MODE_ENUM[spec.mode],  # type: ignore[arg-type]
        allow_unpriced_models=spec.allow_unpriced_models,
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        labels=spec.labels,
        current_period=res.BudgetPeriodUsage(
            start_time=wellknown.timestamp(current.start),
            end_time=wellknown.timestamp(current.end),
            spent_nanos=current.spent_nanos,
            reserved_nanos=current.reserved_nanos,
            remaining_nanos=budget.remaining_nanos,
        ),
        create_time=wellknown.timestamp(budget.create_time),
        update_time=wellknown.timestamp(budget.update_time),
        etag=budget.etag,
    )
