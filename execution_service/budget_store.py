"""Budgets over the database: create, read, page, update (update mask and etag), delete."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from execution_service import budget_repository as repo
from execution_service.agents import new_etag
from execution_service.budgets import MAX_BUDGETS_PER_WORKSPACE, Budget, BudgetSpec, budget_name
from execution_service.errors import (
    BudgetAlreadyExists,
    BudgetConcurrentlyModified,
    BudgetNotFound,
    EtagMismatch,
)
from service_kit.errors import FailedPrecondition
from service_kit.pagination import PageRequest

MAX_UPDATE_ATTEMPTS = 5


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BudgetStore:
    """Budgets of every workspace, over the service's pool. `now` decides which period is
    current (a test's clock may move it)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        now: Callable[[], dt.datetime] = utc_now,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        on_created: Callable[[str], None] = lambda workspace: None,
    ) -> None:
        """`on_created` hears the workspace of every budget created here."""
        self._pool = pool
        self._on_created = on_created
        self._now = now
        self._random_bytes = random_bytes

    async def create(self, workspace: str, budget_id: str, spec: BudgetSpec) -> Budget:
        created, room = await repo.insert(
            self._pool,
            workspace,
            budget_id,
            spec,
            new_etag(self._random_bytes),
            now=self._now(),
            max_per_workspace=MAX_BUDGETS_PER_WORKSPACE,
        )
        if not room:
            raise FailedPrecondition(
                f"workspaces/{workspace} already has {MAX_BUDGETS_PER_WORKSPACE} budgets, "
                "the most it may have; delete one first",
                reason="TOO_MANY_BUDGETS",
            )
        if created is None:
            raise BudgetAlreadyExists(budget_name(workspace, budget_id))
        self._on_created(workspace)
        return created

    async def get(self, workspace: str, budget_id: str) -> Budget:
        found = await repo.get(self._pool, workspace, budget_id, now=self._now())
        if found is None:
            raise BudgetNotFound(budget_name(workspace, budget_id))
        return found

    async def page(self, workspace: str, page: PageRequest) -> tuple[list[Budget], str | None]:
        after = page.cursor["id"] if page.cursor else None
        rows, more = await repo.list_page(
            self._pool, workspace, after=after, size=page.size, now=self._now()
        )
        return rows, rows[-1].budget_id if more else None

    async def update(
        self, workspace: str, budget_id: str, changes: Mapping[str, Any], *, etag: str | None
    ) -> Budget:
        """Apply `changes` (updatable field -> new value); with `etag`, only if the budget is
        still at that version. Without, re-read and retry when another writer wins."""
        name = budget_name(workspace, budget_id)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = await self.get(workspace, budget_id)
            if etag is not None and current.etag != etag:
                raise EtagMismatch(name, kind="budget")
            spec = dataclasses.replace(current.spec, **changes)
            if await repo.update_if_unchanged(
                self._pool, current, spec, new_etag=new_etag(self._random_bytes)
            ):
                return await self.get(workspace, budget_id)
            if etag is not None:
                await self.get(workspace, budget_id)  # NOT_FOUND when it is gone
                raise EtagMismatch(name, kind="budget")
        raise BudgetConcurrentlyModified(name)

    async def delete(self, workspace: str, budget_id: str, *, etag: str | None) -> None:
        name = budget_name(workspace, budget_id)
        if await repo.delete(self._pool, workspace, budget_id, etag=etag):
            return
        if (
            etag is not None
            and await repo.get(self._pool, workspace, budget_id, now=self._now()) is not None
        ):
            raise EtagMismatch(name, kind="budget")
        raise BudgetNotFound(name)
