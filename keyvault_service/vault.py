"""The key vault's domain logic: validation, encryption and audit around the repository."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from keyvault_service import repository as repo
from keyvault_service.crypto import DecryptionError, fingerprint, mask_key
from keyvault_service.errors import AuditUnavailable, KeyNotFound, KeyUndecryptable
from keyvault_service.fingerprints import rewrap_fingerprint_key
from keyvault_service.keyring import Keyring
from keyvault_service.names import PROVIDERS, KeyRef
from keyvault_service.repository import AuditRecord, AuditRow, StoredKey
from service_kit import db, metrics
from service_kit.call_context import CallInfo
from service_kit.pagination import BIGINT_ID, Choice, Cursor, PageRequest
from service_kit.secret import Secret

log = logging.getLogger(__name__)

DEFAULT_REWRAP_BATCH = 100
# What the page tokens of the two listings carry: the last row's sort key.
KEY_CURSOR: Cursor = {"provider": Choice(PROVIDERS)}
AUDIT_CURSOR: Cursor = {"id": BIGINT_ID}


@dataclass(frozen=True)
class RewrapResult:
    primary_version: int
    rewrapped: int
    remaining: int


def _audit(
    call: CallInfo, action: str, outcome: str, ref: KeyRef | None, reason: str = ""
) -> AuditRecord:
    return AuditRecord(
        action=action,
        outcome=outcome,
        caller=call.caller or "",
        workspace=ref.workspace if ref else "",
        provider=ref.provider if ref else "",
        request_id=call.request_id,
        reason=reason,
    )


async def _audit_in(conn: db.Connection, record: AuditRecord) -> None:
    """Write an audit record inside the change's transaction: when it cannot be written,
    the change is rolled back and the caller hears AUDIT_UNAVAILABLE, as for a reveal."""
    try:
        await repo.insert_audit(conn, record)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, db.UNAVAILABLE_ERRORS):
            raise
        log.error("change refused: audit record not written", extra={"error": type(exc).__name__})
        raise AuditUnavailable("the audit log is unavailable; nothing was changed") from None


class KeyVault:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, fingerprint_key: bytes) -> None:
        self._pool = pool
        self._keyring = keyring
        self._fingerprint_key = fingerprint_key  # see keyvault_service.fingerprints

    async def set_key(
        self, ref: KeyRef, plaintext: Secret, base_url: str, call: CallInfo
    ) -> tuple[StoredKey, bool]:
        ciphertext = self._keyring.encrypt(
            plaintext, workspace=ref.workspace, provider=ref.provider
        )
        async with self._pool.acquire() as conn, conn.transaction():
            stored, created = await repo.upsert_key(
                conn,
                ref,
                ciphertext=ciphertext,
                key_version=self._keyring.primary_version,
                key_hint=mask_key(plaintext),
                fingerprint=fingerprint(plaintext, self._fingerprint_key),
                base_url=base_url,
            )
            await _audit_in(conn, _audit(call, "SET", "ALLOWED", ref))
        return stored, created

    async def get_key(self, ref: KeyRef) -> StoredKey:
        stored = await repo.get_key(self._pool, ref)
        if stored is None:
            raise KeyNotFound(ref.name)
        return stored

    async def list_keys(
        self, workspace: str, page: PageRequest
    ) -> tuple[list[StoredKey], str | None]:
        """Returns one page and the last provider on it when another page may follow."""
        after = page.cursor["provider"] if page.cursor else None
        keys = await repo.list_keys(
            self._pool, workspace, after_provider=after, limit=page.size + 1
        )
        more = len(keys) > page.size
        keys = keys[: page.size]
        return keys, (keys[-1].ref.provider if more else None)

    async def delete_key(self, ref: KeyRef, call: CallInfo) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await repo.delete_key(conn, ref)
            outcome, reason = ("ALLOWED", "") if deleted else ("FAILED", "API_KEY_NOT_FOUND")
            await _audit_in(conn, _audit(call, "DELETE", outcome, ref, reason))
        if not deleted:
            raise KeyNotFound(ref.name)

    async def reveal_key(self, ref: KeyRef, call: CallInfo) -> tuple[StoredKey, Secret]:
        try:
            stored, plaintext = await self._reveal_key(ref, call)
        except BaseException as exc:
            metrics.KEY_REVEALS.labels(_reveal_outcome(exc)).inc()
            raise
        metrics.KEY_REVEALS.labels("revealed").inc()
        log.info("key revealed", extra={"key": ref.name, "key_version": stored.key_version})
        return stored, plaintext

    async def _reveal_key(self, ref: KeyRef, call: CallInfo) -> tuple[StoredKey, Secret]:
        try:
            found = await repo.reveal_with_audit(
                self._pool, ref, _audit(call, "REVEAL", "ALLOWED", ref)
            )
        except (asyncpg.PostgresError, RuntimeError) as exc:
            if isinstance(exc, db.UNAVAILABLE_ERRORS):
                raise  # the database is unreachable: DATABASE_UNAVAILABLE, nothing revealed
            # Fail closed: without its audit record, a key does not leave the vault.
            log.error(
                "reveal refused: audit record not written", extra={"error": type(exc).__name__}
            )
            raise AuditUnavailable(
                "the audit log is unavailable; the key was not revealed"
            ) from None
        if found is None:
            raise KeyNotFound(ref.name)
        stored, ciphertext = found
        try:
            plaintext = self._keyring.decrypt(
                ciphertext, workspace=ref.workspace, provider=ref.provider
            )
        except DecryptionError:
            log.error("stored key failed to decrypt", extra={"key": ref.name})
            await repo.insert_audit(
                self._pool, _audit(call, "REVEAL", "FAILED", ref, "UNDECRYPTABLE")
            )
            raise KeyUndecryptable(ref.name) from None
        return stored, plaintext

    async def rewrap_all(self, batch_size: int, call: CallInfo) -> RewrapResult:
        """Re-encrypt every key not under the primary version, one batch per transaction.
        Interrupted runs resume by running again: finished rows are already on the primary."""
        primary = self._keyring.primary_version
        rewrapped = 0
        after: KeyRef | None = None
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await repo.lock_rewrap_batch(
                    conn, primary=primary, after=after, limit=batch_size
                )
                if not rows:
                    break
                updates = []
                for row in rows:
                    ref = KeyRef(row["workspace"], row["provider"])
                    try:
                        blob = self._keyring.rewrap(
                            bytes(row["ciphertext"]), workspace=ref.workspace, provider=ref.provider
                        )
                    except DecryptionError:
                        log.error("key skipped by rewrap: undecryptable", extra={"key": ref.name})
                        continue
                    updates.append((ref.workspace, ref.provider, blob, primary))
                await repo.store_rewrapped(conn, updates)
                rewrapped += len(updates)
                after = KeyRef(rows[-1]["workspace"], rows[-1]["provider"])
        await rewrap_fingerprint_key(self._pool, self._keyring)
        remaining = await repo.count_not_under(self._pool, primary)
        await repo.insert_audit(self._pool, _audit(call, "REWRAP", "ALLOWED", None))
        return RewrapResult(primary, rewrapped, remaining)

    async def list_audit(
        self, workspace: str | None, page: PageRequest
    ) -> tuple[list[AuditRow], int | None]:
        before = page.cursor["id"] if page.cursor else None
        rows = await repo.list_audit(self._pool, workspace, before_id=before, limit=page.size + 1)
        more = len(rows) > page.size
        rows = rows[: page.size]
        return rows, (rows[-1].id if more else None)

    async def record_denied(self, action: str, ref: KeyRef | None, call: CallInfo) -> None:
        if action == "REVEAL":
            metrics.KEY_REVEALS.labels("denied").inc()
        await repo.insert_audit(
            self._pool, _audit(call, action, "DENIED", ref, "PERMISSION_DENIED")
        )

    async def record_invalid(self, action: str, ref: KeyRef | None, call: CallInfo) -> None:
        await repo.insert_audit(self._pool, _audit(call, action, "FAILED", ref, "INVALID_ARGUMENT"))


def _reveal_outcome(exc: BaseException) -> str:
    if isinstance(exc, KeyNotFound):
        return "not_found"
    if isinstance(exc, KeyUndecryptable):
        return "undecryptable"
    if isinstance(exc, AuditUnavailable):
        return "audit_unavailable"
    if isinstance(exc, db.UNAVAILABLE_ERRORS):
        return "unavailable"
    return "error"
