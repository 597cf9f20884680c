"""SQL for the vault's own database. Every query is here; nothing else writes SQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from keyvault_service.names import KeyRef
from service_kit.db import UNAVAILABLE_ERRORS, Connection, Executor


class AuditNotWritten(Exception):
    """The database refused an audit record (a constraint, a permission, a full disk). What
    the record was for must not happen: a change rolls back, a key is not revealed.

    An unreachable database is not this error: it surfaces as itself, so the caller hears
    that it may retry."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error  # safe to log: an error class name, never a value


_KEY_COLUMNS = (
    "workspace, provider, key_hint, fingerprint, base_url, key_version, create_time, update_time"
)


@dataclass(frozen=True)
class StoredKey:
    """A stored key's metadata. The ciphertext travels separately, only where needed."""

    ref: KeyRef
    key_hint: str
    fingerprint: str
    base_url: str
    key_version: int
    create_time: dt.datetime
    update_time: dt.datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredKey:
        return cls(
            ref=KeyRef(row["workspace"], row["provider"]),
            key_hint=row["key_hint"],
            fingerprint=row["fingerprint"],
            base_url=row["base_url"],
            key_version=row["key_version"],
            create_time=row["create_time"],
            update_time=row["update_time"],
        )


@dataclass(frozen=True)
class AuditRecord:
    action: str  # SET, DELETE, REVEAL, REWRAP
    outcome: str  # ALLOWED, DENIED, FAILED
    caller: str
    workspace: str
    provider: str
    request_id: str
    reason: str = ""


@dataclass(frozen=True)
class AuditRow:
    id: int
    record: AuditRecord
    create_time: dt.datetime


_INSERT_AUDIT = """
    INSERT INTO audit_events (action, outcome, caller, workspace, provider, request_id, reason)
    VALUES ($1, $2, $3, $4, $5, $6, $7)"""


def _audit_args(a: AuditRecord) -> tuple[str, ...]:
    return (a.action, a.outcome, a.caller, a.workspace, a.provider, a.request_id, a.reason)


@contextlib.contextmanager
def _writing_audit() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        if isinstance(exc, UNAVAILABLE_ERRORS):
            raise
        raise AuditNotWritten(type(exc).__name__) from exc


async def insert_audit(conn: Executor, audit: AuditRecord) -> None:
    """Raises AuditNotWritten when the database refuses the record."""
    with _writing_audit():
        await conn.execute(_INSERT_AUDIT, *_audit_args(audit))


async def upsert_key(
    conn: Connection,
    ref: KeyRef,
    *,
    ciphertext: bytes,
    key_version: int,
    key_hint: str,
    fingerprint: str,
    base_url: str,
) -> tuple[StoredKey, bool]:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys AS k (workspace, provider, ciphertext, key_version, key_hint,
                                   fingerprint, base_url)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (workspace, provider) DO UPDATE
            SET ciphertext = EXCLUDED.ciphertext, key_version = EXCLUDED.key_version,
                key_hint = EXCLUDED.key_hint, fingerprint = EXCLUDED.fingerprint,
                base_url = EXCLUDED.base_url, update_time = now()
        RETURNING {_KEY_COLUMNS}, (xmax = 0) AS created""",
        ref.workspace,
        ref.provider,
        ciphertext,
        key_version,
        key_hint,
        fingerprint,
        base_url,
    )
    assert row is not None
    return StoredKey.from_row(row), row["created"]


async def get_key(conn: Executor, ref: KeyRef) -> StoredKey | None:
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace = $1 AND provider = $2",
        ref.workspace,
        ref.provider,
    )
    return StoredKey.from_row(row) if row else None


async def list_keys(
    pool: asyncpg.Pool, workspace: str, *, after_provider: str | None, limit: int
) -> list[StoredKey]:
    rows = await pool.fetch(
        f"""SELECT {_KEY_COLUMNS} FROM api_keys
            WHERE workspace = $1 AND ($2::text IS NULL OR provider > $2)
            ORDER BY provider LIMIT $3""",
        workspace,
        after_provider,
        limit,
    )
    return [StoredKey.from_row(r) for r in rows]


async def delete_key(conn: Connection, ref: KeyRef) -> bool:
    status = await conn.execute(
        "DELETE FROM api_keys WHERE workspace = $1 AND provider = $2", ref.workspace, ref.provider
    )
    return status == "DELETE 1"


@dataclass(frozen=True)
class RevealRead:
    """What reveal_with_audit read, and the id of the audit record it committed."""

    audit_id: int
    key: StoredKey | None  # None: no such key, and the record says FAILED/API_KEY_NOT_FOUND
    ciphertext: bytes


async def reveal_with_audit(pool: asyncpg.Pool, audits: Sequence[AuditRecord]) -> list[RevealRead]:
    """Read the key each REVEAL record names (its workspace and provider) and write the
    record, all in one atomic statement (one round trip and one commit, however many): if any
    audit insert fails, nothing is returned (AuditNotWritten), so a reveal can never go
    unrecorded. A missing key is recorded FAILED/API_KEY_NOT_FOUND by the same statement.
    One result per record, in order."""
    columns = [list(column) for column in zip(*map(_audit_args, audits), strict=True)]
    with _writing_audit():
        rows = await pool.fetch(
            f"""
            WITH r AS MATERIALIZED (
                SELECT nextval('audit_events_id_seq') AS audit_id, *
                FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                            $6::text[], $7::text[]) WITH ORDINALITY
                    AS r(action, outcome, caller, workspace, provider, request_id, reason, n)
            ), k AS (
                SELECT r.audit_id AS revealed_by, {_KEY_COLUMNS}, ciphertext
                FROM r JOIN api_keys USING (workspace, provider)
            ), a AS (
                INSERT INTO audit_events
                    (id, action, outcome, caller, workspace, provider, request_id, reason)
                SELECT r.audit_id, r.action,
                       CASE WHEN k.revealed_by IS NULL THEN 'FAILED' ELSE r.outcome END,
                       r.caller, r.workspace, r.provider, r.request_id,
                       CASE WHEN k.revealed_by IS NULL THEN 'API_KEY_NOT_FOUND' ELSE r.reason END
                FROM r LEFT JOIN k ON k.revealed_by = r.audit_id
                ORDER BY r.n
            )
            SELECT r.audit_id, k.* FROM r LEFT JOIN k ON k.revealed_by = r.audit_id
            ORDER BY r.n""",
            *columns,
        )
    if len(rows) != len(audits):  # not expected: one row per reveal
        raise AuditNotWritten("AuditRecordsMissing")
    return [
        RevealRead(row["audit_id"], StoredKey.from_row(row), bytes(row["ciphertext"]))
        if row["revealed_by"] is not None
        else RevealRead(row["audit_id"], None, b"")
        for row in rows
    ]


async def mark_reveal_failed(db: Executor, audit_id: int, reason: str) -> None:
    """Turn a reveal's ALLOWED record into FAILED when the key could not be handed out
    after all (it failed to decrypt): one record per reveal, with its final outcome."""
    with _writing_audit():
        await db.execute(
            """UPDATE audit_events SET outcome = 'FAILED', reason = $2
               WHERE id = $1 AND action = 'REVEAL'""",
            audit_id,
            reason,
        )


async def key_versions_in_use(pool: asyncpg.Pool) -> dict[int, int]:
    rows = await pool.fetch("SELECT key_version, count(*) AS n FROM api_keys GROUP BY key_version")
    return {r["key_version"]: r["n"] for r in rows}


async def get_vault_secret(db: Executor, name: str) -> tuple[bytes, int] | None:
    row = await db.fetchrow(
        "SELECT ciphertext, key_version FROM vault_secrets WHERE name = $1", name
    )
    return (bytes(row["ciphertext"]), row["key_version"]) if row else None


async def add_vault_secret_while_no_keys(
    db: Executor, name: str, ciphertext: bytes, key_version: int
) -> bool:
    """Store a new vault secret, only while no API key is stored (one statement, so no key
    can be written in between); first writer wins: replicas starting together keep one.
    True when this call stored it."""
    status = await db.execute(
        """INSERT INTO vault_secrets (name, ciphertext, key_version)
           SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM api_keys)
           ON CONFLICT (name) DO NOTHING""",
        name,
        ciphertext,
        key_version,
    )
    return status == "INSERT 0 1"


async def count_keys(db: Executor) -> int:
    return await db.fetchval("SELECT count(*) FROM api_keys")


async def replace_vault_secret(
    db: Executor, name: str, ciphertext: bytes, key_version: int
) -> None:
    await db.execute(
        """UPDATE vault_secrets SET ciphertext = $2, key_version = $3, update_time = now()
           WHERE name = $1""",
        name,
        ciphertext,
        key_version,
    )


async def master_key_checks(pool: asyncpg.Pool) -> dict[int, str]:
    rows = await pool.fetch("SELECT version, check_value FROM master_key_checks")
    return {r["version"]: r["check_value"] for r in rows}


async def record_master_key_check(pool: asyncpg.Pool, version: int, check_value: str) -> None:
    await pool.execute(
        """INSERT INTO master_key_checks (version, check_value) VALUES ($1, $2)
           ON CONFLICT (version) DO NOTHING""",
        version,
        check_value,
    )


async def lock_rewrap_batch(
    conn: Connection, *, primary: int, after: KeyRef | None, limit: int
) -> list[asyncpg.Record]:
    """The next keys not under `primary`, in key order after `after`, locked for update.
    Rows a concurrent SetApiKey holds are skipped: it writes them under the primary anyway."""
    return await conn.fetch(
        """SELECT workspace, provider, ciphertext FROM api_keys
           WHERE key_version <> $1
             AND ($2::text IS NULL OR (workspace, provider) > ($2, $3))
           ORDER BY workspace, provider LIMIT $4
           FOR UPDATE SKIP LOCKED""",
        primary,
        after.workspace if after else None,
        after.provider if after else None,
        limit,
    )


async def store_rewrapped(conn: Connection, rows: list[tuple[str, str, bytes, int]]) -> None:
    await conn.executemany(
        """UPDATE api_keys SET ciphertext = $3, key_version = $4, rewrap_time = now()
           WHERE workspace = $1 AND provider = $2""",
        rows,
    )


async def count_not_under(pool: asyncpg.Pool, primary: int) -> int:
    return await pool.fetchval("SELECT count(*) FROM api_keys WHERE key_version <> $1", primary)


async def list_audit(
    pool: asyncpg.Pool, workspace: str | None, *, before_id: int | None, limit: int
) -> list[AuditRow]:
    rows = await pool.fetch(
        """SELECT id, action, outcome, caller, workspace, provider, request_id, reason, create_time
           FROM audit_events
           WHERE ($1::text IS NULL OR workspace = $1) AND ($2::bigint IS NULL OR id < $2)
           ORDER BY id DESC LIMIT $3""",
        workspace,
        before_id,
        limit,
    )
    return [
        AuditRow(
            id=r["id"],
            record=AuditRecord(
                r["action"],
                r["outcome"],
                r["caller"],
                r["workspace"],
                r["provider"],
                r["request_id"],
                r["reason"],
            ),
            create_time=r["create_time"],
        )
        for r in rows
    ]


# --- key change watchers (see keyvault_service.key_changes) -------------------------------


async def last_committed_change(conn: Connection) -> int:
    """The number of the last committed key change (0: none yet). Announcing changes hold
    the lock taken here until they commit, so none is half-done while we read."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('api_key_changes'))")
        value = await conn.fetchval(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM api_key_change_seq"
        )
    return int(value)


async def latest_change(pool: asyncpg.Pool) -> int:
    """At least the number of every change committed before the call (a change still in
    flight may already have taken a later one)."""
    value = await pool.fetchval(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM api_key_change_seq"
    )
    return int(value)


async def add_watcher(
    pool: asyncpg.Pool, watcher: uuid.UUID, replica: uuid.UUID, acked: int, ttl: float
) -> None:
    await pool.execute(
        """WITH gone AS (
               DELETE FROM key_change_watchers WHERE expires_at < now() - interval '1 minute')
           INSERT INTO key_change_watchers (id, replica, acked_sequence, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))""",
        watcher,
        replica,
        acked,
        ttl,
    )


async def ack_watcher(pool: asyncpg.Pool, watcher: uuid.UUID, acked: int, ttl: float) -> None:
    """Record an acknowledgement (0: none, just alive) and extend the watcher's life."""
    await pool.execute(
        """UPDATE key_change_watchers
           SET acked_sequence = greatest(acked_sequence, $2),
               expires_at = now() + make_interval(secs => $3)
           WHERE id = $1""",
        watcher,
        acked,
        ttl,
    )


async def remove_watcher(pool: asyncpg.Pool, watcher: uuid.UUID) -> None:
    await pool.execute("DELETE FROM key_change_watchers WHERE id = $1", watcher)


async def remove_replica_watchers(conn: Connection, replica: uuid.UUID) -> None:
    await conn.execute("DELETE FROM key_change_watchers WHERE replica = $1", replica)


async def watchers_behind(pool: asyncpg.Pool, sequence: int) -> int:
    """Live watchers that have not yet acknowledged change `sequence`."""
    value = await pool.fetchval(
        """SELECT count(*) FROM key_change_watchers
           WHERE acked_sequence < $1 AND expires_at > now()""",
        sequence,
    )
    return int(value)
