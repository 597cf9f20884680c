"""SQL for agents. Every agents query is here; the rules are in `execution_service.agents`."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from execution_service.agents import Agent, AgentSpec, GenerationSettings, Route
from execution_service.routing import Trigger
from execution_service.schemas import JsonSchema
from service_kit.db import Executor

_COLUMNS = """workspace, agent_id, display_name, description, instructions, routes, input_schema,
    output_schema, labels, create_time, update_time, etag, fallback_triggers"""


def _json(value: Any) -> Any:
    # No jsonb codec is registered on the pool: jsonb arrives as text.
    return json.loads(value) if isinstance(value, str) else value


def _schema(value: str | None) -> JsonSchema | None:
    return None if value is None else JsonSchema.parse(value)


def _routes_json(spec: AgentSpec) -> str:
    return json.dumps(
        [
            {
                "provider": r.provider,
                "model": r.model,
                "generation_config": {
                    "max_tokens": r.generation.max_tokens,
                    "temperature": r.generation.temperature,
                    "top_p": r.generation.top_p,
                    "stop_sequences": list(r.generation.stop_sequences),
                },
            }
            for r in spec.routes
        ]
    )


def _from_row(row: asyncpg.Record) -> Agent:
    routes = tuple(
        Route(
            provider=r["provider"],
            model=r["model"],
            generation=GenerationSettings(
                max_tokens=r["generation_config"]["max_tokens"],
                temperature=r["generation_config"]["temperature"],
                top_p=r["generation_config"]["top_p"],
                stop_sequences=tuple(r["generation_config"]["stop_sequences"]),
            ),
        )
        for r in _json(row["routes"])
    )
    return Agent(
        workspace=row["workspace"],
        agent_id=row["agent_id"],
        spec=AgentSpec(
            display_name=row["display_name"],
            description=row["description"],
            instructions=row["instructions"],
            routes=routes,
            input_schema=_schema(row["input_schema"]),
            output_schema=_schema(row["output_schema"]),
            labels=_json(row["labels"]),
            fallback=_fallback(row["fallback_triggers"]),
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _fallback(triggers: list[str] | None) -> frozenset[Trigger] | None:
    return None if triggers is None else frozenset(Trigger(t) for t in triggers)


def _fallback_value(spec: AgentSpec) -> list[str] | None:
    return None if spec.fallback is None else sorted(spec.fallback)


def _spec_values(spec: AgentSpec) -> tuple[object, ...]:
    """$3..$9 of the writes below, in column order."""
    return (
        spec.display_name,
        spec.description,
        spec.instructions,
        _routes_json(spec),
        spec.input_schema.text if spec.input_schema else None,
        spec.output_schema.text if spec.output_schema else None,
        json.dumps(dict(spec.labels)),
    )


async def insert(
    db: Executor, workspace: str, agent_id: str, spec: AgentSpec, etag: str
) -> Agent | None:
    """A new agent; None when the id is taken in the workspace."""
    row = await db.fetchrow(
        f"""
        INSERT INTO agents ({_COLUMNS})
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9::jsonb, now(), now(), $10,
                $11::text[])
        ON CONFLICT (workspace, agent_id) DO NOTHING
        RETURNING {_COLUMNS}""",
        workspace,
        agent_id,
        *_spec_values(spec),
        etag,
        _fallback_value(spec),
    )
    return _from_row(row) if row else None


async def get(db: Executor, workspace: str, agent_id: str) -> Agent | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM agents WHERE workspace = $1 AND agent_id = $2",
        workspace,
        agent_id,
    )
    return _from_row(row) if row else None


async def list_page(
    db: Executor, workspace: str, *, after: str | None, size: int, max_bytes: int
) -> tuple[list[Agent], bool]:
    """Up to `size` agents by id after `after`, fewer when their schemas and texts would pass
    `max_bytes` (but always one), and whether more follow. Keyset on the id (the primary key's
    order), so pages never shift; the byte budget is applied in the database so that large
    agents past it are never sent."""
    rows = await db.fetch(
        f"""
        WITH page AS (
            SELECT {_COLUMNS},
                   octet_length(instructions) + octet_length(description)
                   + coalesce(octet_length(input_schema::text), 0)
                   + coalesce(octet_length(output_schema::text), 0) AS bytes
            FROM agents
            WHERE workspace = $1 AND ($2::text IS NULL OR agent_id > $2)
            ORDER BY agent_id
            LIMIT $3 + 1),
        sized AS (
            SELECT *, row_number() OVER w AS n, sum(bytes) OVER w AS running,
                   count(*) OVER () AS fetched
            FROM page WINDOW w AS (ORDER BY agent_id))
        SELECT * FROM sized WHERE n <= $3 AND (n = 1 OR running <= $4) ORDER BY agent_id""",
        workspace,
        after,
        size,
        max_bytes,
    )
    fetched = rows[0]["fetched"] if rows else 0
    return [_from_row(r) for r in rows], fetched > len(rows)


async def update_if_unchanged(
    db: Executor, current: Agent, spec: AgentSpec, *, new_etag: str
) -> Agent | None:
    """Write `spec` only if the agent still has `current`'s etag: one statement, so of
    several writers holding the same etag exactly one matches (the others find the new etag
    once the winner commits). None when the etag no longer matches or the agent is gone."""
    row = await db.fetchrow(
        f"""
        UPDATE agents SET display_name = $3, description = $4, instructions = $5,
            routes = $6::jsonb, input_schema = $7::jsonb, output_schema = $8::jsonb,
            labels = $9::jsonb, update_time = greatest(now(), create_time), etag = $10,
            fallback_triggers = $12::text[]
        WHERE workspace = $1 AND agent_id = $2 AND etag = $11
        RETURNING {_COLUMNS}""",
        current.workspace,
        current.agent_id,
        *_spec_values(spec),
        new_etag,
        current.etag,
        _fallback_value(spec),
    )
    return _from_row(row) if row else None


async def delete(db: Executor, workspace: str, agent_id: str, *, etag: str | None) -> bool:
    """Whether an agent was deleted (with `etag`: only if it still has that etag)."""
    deleted = await db.fetchval(
        """
        DELETE FROM agents
        WHERE workspace = $1 AND agent_id = $2 AND ($3::text IS NULL OR etag = $3)
        RETURNING true""",
        workspace,
        agent_id,
        etag,
    )
    return bool(deleted)
