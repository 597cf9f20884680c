"""Budgets: limits on a workspace's executions, or on one agent's. A budget holds a spend limit
per period (UTC day or calendar month, in nano-dollars) and/or request and token rates per
minute; ENFORCE refuses what does not fit, ALERT_ONLY only counts it.

This module is the domain (values, update masks); `budget_store` applies it over the SQL in
`budget_repository`; admission itself is `admission` plus migration 007's `budget_admit`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

DAY, MONTH = "DAY", "MONTH"
ENFORCE, ALERT_ONLY = "ENFORCE", "ALERT_ONLY"

# The fields UpdateBudget may change, in the order of the Budget message.
UPDATABLE_FIELDS = (
    "display_name",
    "agent_id",
    "limit_nanos",
    "period",
    "mode",
    "allow_unpriced_models",
    "requests_per_minute",
    "tokens_per_minute",
    "labels",
)
# Every budget of an execution's scope is locked and checked on its admission path: a bound
# keeps that path short.
MAX_BUDGETS_PER_WORKSPACE = 20


@dataclass(frozen=True)
class BudgetSpec:
    """What a caller sets on a budget (every updatable field)."""

    display_name: str = ""
    agent_id: str = ""  # empty: the whole workspace
    limit_nanos: int | None = None
    period: str = DAY
    mode: str = ENFORCE
    allow_unpriced_models: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PeriodUsage:
    start: dt.datetime
    end: dt.datetime
    spent_nanos: int
    reserved_nanos: int


@dataclass(frozen=True)
class Budget:
    workspace: str
    budget_id: str
    spec: BudgetSpec
    current: PeriodUsage
    create_time: dt.datetime
    update_time: dt.datetime
    etag: str

    @property
    def name(self) -> str:
        return budget_name(self.workspace, self.budget_id)

    @property
    def remaining_nanos(self) -> int | None:
        """What is left of the limit in the current period (never below 0); None without a
        spend limit."""
        if self.spec.limit_nanos is None:
            return None
        used = self.current.spent_nanos + self.current.reserved_nanos
        return max(self.spec.limit_nanos - used, 0)


def budget_name(workspace: str, budget_id: str) -> str:
    return f"workspaces/{workspace}/budgets/{budget_id}"
