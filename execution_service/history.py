"""Reading executions back: one, a filtered page, an agent's statistics."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from execution_service import repository as repo
from execution_service.errors import ExecutionNotFound
from execution_service.model import AgentStats, Execution
from service_kit.pagination import Cursor, PageRequest, Timestamp, Uuid

DEFAULT_STATS_WINDOW = dt.timedelta(hours=24)
# A page token carries the last row's sort key: its creation time and id.
EXECUTION_CURSOR: Cursor = {"t": Timestamp(), "id": Uuid()}


class History:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, workspace: str, execution_id: str) -> Execution:
        found = await repo.get(self._pool, workspace, uuid.UUID(execution_id))
        if found is None:
            raise ExecutionNotFound(f"workspaces/{workspace}/executions/{execution_id}")
        return found

    async def page(
        self,
        workspace: str,
        page: PageRequest,
        *,
        agent_id: str | None,
        state: str | None,
        start_time: dt.datetime | None,
        end_time: dt.datetime | None,
    ) -> tuple[list[Execution], dict[str, Any] | None]:
        """One page, newest first, and the cursor of the next page when there may be one."""
        after = (page.cursor["t"], page.cursor["id"]) if page.cursor else None
        rows = await repo.list_page(
            self._pool,
            workspace,
            agent_id=agent_id,
            state=state,
            start_time=start_time,
            end_time=end_time,
            after=after,
            limit=page.size + 1,
        )
        if len(rows) <= page.size:
            return rows, None
        rows = rows[: page.size]
        return rows, {"t": rows[-1].create_time, "id": rows[-1].id}

    async def agent_stats(
        self,
        workspace: str,
        agent_id: str,
        start: dt.datetime | None,
        end: dt.datetime | None,
    ) -> AgentStats:
        end = end or dt.datetime.now(dt.UTC)
        if start is None:
            earliest = dt.datetime.min.replace(tzinfo=dt.UTC)
            start = max(end, earliest + DEFAULT_STATS_WINDOW) - DEFAULT_STATS_WINDOW
        return await repo.agent_stats(self._pool, workspace, agent_id, start, end)
