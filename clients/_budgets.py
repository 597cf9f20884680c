"""Budget methods of the execution clients (a mixin each for the asyncio and blocking one).

A budget limits a workspace's executions, or one agent's: `limit_usd` (or `limit_nanos`) per
`period` (`day` or `month`, UTC), `requests_per_minute`, `tokens_per_minute`; `mode` is
`enforce` or `alert_only`. Managing budgets is for the admin identity; the app identity may
read them. Budgets come back as the `Budget` message (`current_period` has spent, reserved
and remaining).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from decimal import Decimal
from typing import Any

from google.protobuf import field_mask_pb2

from ._types import Page, walk_pages, walk_pages_sync, workspace_name
from .gen.execution.v1 import execution_service_pb2 as ex
from .gen.execution.v1 import resources_pb2 as ex_res

PERIODS = {"day": ex_res.BUDGET_PERIOD_DAY, "month": ex_res.BUDGET_PERIOD_MONTH}
MODES = {"enforce": ex_res.BUDGET_MODE_ENFORCE, "alert_only": ex_res.BUDGET_MODE_ALERT_ONLY}
# Keyword -> Budget field, for the update mask.
_FIELDS = {
    "display_name": "display_name",
    "agent_id": "agent_id",
    "limit_nanos": "limit_nanos",
    "limit_usd": "limit_nanos",
    "period": "period",
    "mode": "mode",
    "allow_unpriced_models": "allow_unpriced_models",
    "requests_per_minute": "requests_per_minute",
    "tokens_per_minute": "tokens_per_minute",
    "labels": "labels",
}


def budget_name(workspace: str, budget_id: str) -> str:
    """`workspaces/{workspace}/budgets/{budget}`."""
    return f"{workspace_name(workspace)}/budgets/{budget_id}"


def usd_to_nanos(usd: Decimal | str | int) -> int:
    """Exact: `Decimal("2.50")` -> 2_500_000_000. A float is refused (money is decimal)."""
    if isinstance(usd, float):
        raise TypeError("give USD as a Decimal, str or int, not a float")
    nanos = Decimal(usd) * 1_000_000_000
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{usd} USD is not a whole number of nano-dollars")
    return int(nanos)


def budget_message(name: str = "", **fields: Any) -> ex_res.Budget:
    """A Budget from keywords (see the module docstring); unknown keywords are a TypeError."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown budget fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {"name": name}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "limit_usd":
            values["limit_nanos"] = usd_to_nanos(value)
        elif key == "period":
            values["period"] = PERIODS[value] if isinstance(value, str) else value
        elif key == "mode":
            values["mode"] = MODES[value] if isinstance(value, str) else value
        elif key == "labels":
            values["labels"] = dict(value)
        else:
            values[key] = value
    return ex_res.Budget(**values)


def create_budget_request(workspace: str, budget_id: str, **fields: Any) -> ex.CreateBudgetRequest:
    return ex.CreateBudgetRequest(
        parent=workspace_name(workspace), budget_id=budget_id, budget=budget_message(**fields)
    )


def update_budget_request(
    workspace: str, budget_id: str, *, etag: str = "", clear: Iterable[str] = (), **changes: Any
) -> ex.UpdateBudgetRequest:
    """Changes only the fields given (and those named in `clear`, which become unset)."""
    budget = budget_message(budget_name(workspace, budget_id), **changes)
    budget.etag = etag
    paths = sorted({_FIELDS[k] for k, v in changes.items() if v is not None} | set(clear))
    if not paths:
        raise ValueError("nothing to update: give the fields to change (or clear)")
    return ex.UpdateBudgetRequest(budget=budget, update_mask=field_mask_pb2.FieldMask(paths=paths))


class AsyncBudgetMethods:
    """Mixed into ExecutionClient (which provides `_stub` and `_unary`)."""

    _stub: Any
    _unary: Any

    async def create_budget(
        self, workspace: str, budget_id: str, *, timeout: float | None = None, **fields: Any
    ) -> ex_res.Budget:
        """Create a budget: `limit_usd` or `limit_nanos`, `period`, `mode`, `agent_id`,
        `allow_unpriced_models`, `requests_per_minute`, `tokens_per_minute`, `labels`."""
        request = create_budget_request(workspace, budget_id, **fields)
        return (await self._unary(self._stub.CreateBudget, request, timeout)).budget  # type: ignore[no-any-return]

    async def get_budget(
        self, workspace: str, budget_id: str, *, timeout: float | None = None
    ) -> ex_res.Budget:
        request = ex.GetBudgetRequest(name=budget_name(workspace, budget_id))
        return (await self._unary(self._stub.GetBudget, request, timeout)).budget  # type: ignore[no-any-return]

    async def list_budgets(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[ex_res.Budget]:
        request = ex.ListBudgetsRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = await self._unary(self._stub.ListBudgets, request, timeout)
        return Page(list(reply.budgets), reply.next_page_token)

    def iter_budgets(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[ex_res.Budget]:
        return walk_pages(
            lambda token: self.list_budgets(workspace, page_size=page_size, page_token=token),
            limit,
        )

    async def update_budget(
        self,
        workspace: str,
        budget_id: str,
        *,
        etag: str = "",
        clear: Iterable[str] = (),
        timeout: float | None = None,
        **changes: Any,
    ) -> ex_res.Budget:
        """Change the fields given as keywords; with `etag`, only if unchanged since."""
        request = update_budget_request(workspace, budget_id, etag=etag, clear=clear, **changes)
        return (await self._unary(self._stub.UpdateBudget, request, timeout)).budget  # type: ignore[no-any-return]

    async def delete_budget(
        self, workspace: str, budget_id: str, *, etag: str = "", timeout: float | None = None
    ) -> None:
        request = ex.DeleteBudgetRequest(name=budget_name(workspace, budget_id), etag=etag)
        await self._unary(self._stub.DeleteBudget, request, timeout)


class SyncBudgetMethods:
    """Mixed into ExecutionClientSync (which provides `_stub` and `_unary`)."""

    _stub: Any
    _unary: Any

    def create_budget(
        self, workspace: str, budget_id: str, *, timeout: float | None = None, **fields: Any
    ) -> ex_res.Budget:
        request = create_budget_request(workspace, budget_id, **fields)
        return self._unary(self._stub.CreateBudget, request, timeout).budget  # type: ignore[no-any-return]

    def get_budget(
        self, workspace: str, budget_id: str, *, timeout: float | None = None
    ) -> ex_res.Budget:
        request = ex.GetBudgetRequest(name=budget_name(workspace, budget_id))
        return self._unary(self._stub.GetBudget, request, timeout).budget  # type: ignore[no-any-return]

    def list_budgets(
        self,
        workspace: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[ex_res.Budget]:
        request = ex.ListBudgetsRequest(
            parent=workspace_name(workspace), page_size=page_size, page_token=page_token
        )
        reply = self._unary(self._stub.ListBudgets, request, timeout)
        return Page(list(reply.budgets), reply.next_page_token)

    def iter_budgets(
        self, workspace: str, *, page_size: int = 0, limit: int | None = None
    ) -> Iterator[ex_res.Budget]:
        return walk_pages_sync(
            lambda token: self.list_budgets(workspace, page_size=page_size, page_token=token),
            limit,
        )

    def update_budget(
        self,
        workspace: str,
        budget_id: str,
        *,
        etag: str = "",
        clear: Iterable[str] = (),
        timeout: float | None = None,
        **changes: Any,
    ) -> ex_res.Budget:
        request = update_budget_request(workspace, budget_id, etag=etag, clear=clear, **changes)
        return self._unary(self._stub.UpdateBudget, request, timeout).budget  # type: ignore[no-any-return]

    def delete_budget(
        self, workspace: str, budget_id: str, *, etag: str = "", timeout: float | None = None
    ) -> None:
        request = ex.DeleteBudgetRequest(name=budget_name(workspace, budget_id), etag=etag)
        self._unary(self._stub.DeleteBudget, request, timeout)


__all__ = [
    "MODES",
    "PERIODS",
    "AsyncBudgetMethods",
    "SyncBudgetMethods",
    "budget_message",
    "budget_name",
    "usd_to_nanos",
]
