"""Agents over the database: create, read, page, update (update mask and etag), delete.

`AgentStore.read` is what running an agent by name needs: the agent with its parsed schemas and
the etag its executions record, from memory when this process has read it before.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from execution_service import agent_repository as repo
from execution_service.agents import (
    Agent,
    AgentSpec,
    agent_name,
    new_etag,
    refused,
    structured_output_fit,
)
from execution_service.errors import (
    AgentAlreadyExists,
    AgentConcurrentlyModified,
    AgentNotFound,
    EtagMismatch,
)
from service_kit.db import Executor
from service_kit.pagination import PageRequest

# A page of agents stops early, before this many bytes of schemas, instructions and
# descriptions (at least one agent): a page of large agents must stay well inside a gRPC
# message (4 MB by default for receivers).
MAX_PAGE_BYTES = 1_000_000
# An update without the caller's etag re-reads and retries this often when other writers
# keep winning the race, then gives up with ABORTED.
MAX_UPDATE_ATTEMPTS = 5
# Agents kept in memory for running them by name: a few hundred typical agents.
MAX_CACHE_BYTES = 8_000_000


class AgentCache:
    """Agents as last read, for planning executions without a database read. A copy may be
    stale: an execution planned from it is recorded only if the agent is still at that
    version (`repository.insert_running` checks the etag in the same statement), else it is
    planned again from a fresh read. Bounded by the bytes of the agents' texts and schemas;
    least recently used go first."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple[str, str], tuple[Agent, int]] = OrderedDict()

    def get(self, workspace: str, agent_id: str) -> Agent | None:
        found = self._items.get((workspace, agent_id))
        if found is None:
            return None
        self._items.move_to_end((workspace, agent_id))
        return found[0]

    def put(self, agent: Agent) -> None:
        self.drop(agent.workspace, agent.agent_id)
        size = _size(agent)
        if size > self._max_bytes:
            return
        self._items[(agent.workspace, agent.agent_id)] = (agent, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped

    def drop(self, workspace: str, agent_id: str) -> None:
        found = self._items.pop((workspace, agent_id), None)
        if found is not None:
            self._bytes -= found[1]

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


def _size(agent: Agent) -> int:
    spec = agent.spec
    schemas = [s.text for s in (spec.input_schema, spec.output_schema) if s is not None]
    return 1024 + len(spec.instructions) + len(spec.description) + sum(map(len, schemas))


async def get_agent(db: Executor, workspace: str, agent_id: str) -> Agent | None:
    """The agent to run by name, with its parsed schemas and current etag; None when the
    workspace has no such agent. `schemas.compiled(schema)` gives its cached validators."""
    return await repo.get(db, workspace, agent_id)


class AgentStore:
    """Agents of every workspace, over the service's pool."""

    def __init__(
        self, pool: asyncpg.Pool, *, random_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        self._pool = pool
        self._random_bytes = random_bytes
        self._cache = AgentCache()

    async def create(self, workspace: str, agent_id: str, spec: AgentSpec) -> Agent:
        """`spec` as `agent_requests.create_agent` checked it (its output schema fits its
        routes' providers)."""
        created = await repo.insert(
            self._pool, workspace, agent_id, spec, new_etag(self._random_bytes)
        )
        if created is None:
            raise AgentAlreadyExists(agent_name(workspace, agent_id))
        return created

    def forget(self, workspace: str, agent_id: str) -> None:
        """The agent changed (possibly through another replica): drop its cached copy."""
        self._cache.drop(workspace, agent_id)

    def forget_all(self) -> None:
        self._cache.clear()

    def cached(self, workspace: str, agent_id: str) -> bool:
        return self._cache.get(workspace, agent_id) is not None

    async def read(self, workspace: str, agent_id: str) -> Agent | None:
        """The agent to run, possibly as this process last read it (see AgentCache); None
        when there is none."""
        cached = self._cache.get(workspace, agent_id)
        return cached if cached is not None else await self.read_fresh(workspace, agent_id)

    async def read_fresh(self, workspace: str, agent_id: str) -> Agent | None:
        """The agent to run, as it is now in the database (None when there is none)."""
        agent = await get_agent(self._pool, workspace, agent_id)
        if agent is None:
            self._cache.drop(workspace, agent_id)
        else:
            self._cache.put(agent)
        return agent

    async def get(self, workspace: str, agent_id: str) -> Agent:
        found = await repo.get(self._pool, workspace, agent_id)
        if found is None:
            raise AgentNotFound(agent_name(workspace, agent_id))
        return found

    async def page(self, workspace: str, page: PageRequest) -> tuple[list[Agent], str | None]:
        """One page by agent id (fewer than asked when the agents are large), and the last id
        when more follow."""
        after = page.cursor["id"] if page.cursor else None
        rows, more = await repo.list_page(
            self._pool, workspace, after=after, size=page.size, max_bytes=MAX_PAGE_BYTES
        )
        return rows, rows[-1].agent_id if more else None

    async def update(
        self,
        workspace: str,
        agent_id: str,
        changes: Mapping[str, Any],
        *,
        etag: str | None,
    ) -> Agent:
        """Apply `changes` (updatable field -> new value). With `etag`, only if the agent is
        still at that version: exactly one of several writers holding the same etag wins.
        Without, the change applies to the latest version (re-read when another writer wins
        the race, so the merged agent is always checked before it is written)."""
        name = agent_name(workspace, agent_id)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = await repo.get(self._pool, workspace, agent_id)
            if current is None:
                raise AgentNotFound(name)
            if etag is not None and current.etag != etag:
                raise EtagMismatch(name)
            spec = dataclasses.replace(current.spec, **changes)
            if changes.keys() & {"routes", "output_schema"}:
                violations = structured_output_fit(spec)
                if violations:
                    raise refused(violations)
            updated = await repo.update_if_unchanged(
                self._pool, current, spec, new_etag=new_etag(self._random_bytes)
            )
            if updated is not None:
                self._cache.put(updated)
                return updated
            if etag is not None:
                # The one conditional UPDATE lost to another writer with the same etag.
                if await repo.get(self._pool, workspace, agent_id) is None:
                    raise AgentNotFound(name)
                raise EtagMismatch(name)
        raise AgentConcurrentlyModified(name)

    async def delete(self, workspace: str, agent_id: str, *, etag: str | None) -> None:
        name = agent_name(workspace, agent_id)
        self._cache.drop(workspace, agent_id)
        if await repo.delete(self._pool, workspace, agent_id, etag=etag):
            return
        if etag is not None and await repo.get(self._pool, workspace, agent_id) is not None:
            raise EtagMismatch(name)
        raise AgentNotFound(name)
