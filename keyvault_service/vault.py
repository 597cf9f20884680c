"""The key vault's domain logic: validation, encryption and audit around the repository."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator

import asyncpg

from keyvault_service import repository as repo
from keyvault_service.crypto import DecryptionError, fingerprint, mask_key
from keyvault_service.errors import AuditUnavailable, KeyNotFound, KeyUndecryptable
from keyvault_service.fingerprints import rewrap_fingerprint_key
from keyvault_service.keyring import Keyring
from keyvault_service.names import PROVIDERS, KeyRef
from keyvault_service.repository import AuditRecord, AuditRow, StoredKey
from service_kit import db, metrics
from service_kit.batching import GroupWriter
from service_kit.call_context import CallInfo
from service_kit.errors import Internal, PermissionDenied, ServiceError, Unauthenticated
from service_kit.pagination import BIGINT_ID, Choice, Cursor, PageRequest
from service_kit.secret import Secret

log = logging.getLogger(__name__)

DEFAULT_REWRAP_BATCH = 100
# At most this many reveals per statement: more than a busy execution fleet keeps in flight.
REVEAL_BATCH = 64
# What the page tokens of the two listings carry: the last row's sort key.
KEY_CURSOR: Cursor = {"provider": Choice(PROVIDERS)}
AUDIT_CURSOR: Cursor = {"id": BIGINT_ID}
_NOTHING_CHANGED = "the audit log is unavailable; nothing was changed"
# Why an audit record could not be written: refused, or no database to write it to.
_AUDIT_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    repo.AuditNotWritten,
    *db.UNAVAILABLE_ERRORS,
)


@dataclasses.dataclass(frozen=True)
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


def _reason_of(exc: BaseException) -> str:
    """The reason the caller is given for `exc` (anything unexpected is INTERNAL)."""
    return exc.reason if isinstance(exc, ServiceError) else Internal.default_reason


class KeyVault:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, fingerprint_key: bytes) -> None:
        self._pool = pool
        self._keyring = keyring
        self._fingerprint_key = fingerprint_key  # see keyvault_service.fingerprints
        # Concurrent reveals share one statement: one round trip and one commit for all of
        # their reads and audit records.
        self.reveals: GroupWriter[AuditRecord, repo.RevealRead] = GroupWriter(
            self._reveal_one,
            functools.partial(repo.reveal_with_audit, pool),
            max_batch=REVEAL_BATCH,
            observe=metrics.REVEAL_BATCH_SIZE.observe,
        )

    async def set_key(
        self, ref: KeyRef, plaintext: Secret, base_url: str, call: CallInfo
    ) -> tuple[StoredKey, bool]:
        async with self._failure_audited(call, "SET", ref, _NOTHING_CHANGED):
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
                await repo.insert_audit(conn, _audit(call, "SET", "ALLOWED", ref))
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
        async with (
            self._failure_audited(call, "DELETE", ref, _NOTHING_CHANGED),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            deleted = await repo.delete_key(conn, ref)
            outcome, reason = ("ALLOWED", "") if deleted else ("FAILED", "API_KEY_NOT_FOUND")
            await repo.insert_audit(conn, _audit(call, "DELETE", outcome, ref, reason))
        if not deleted:  # recorded above, with the deletion's transaction
            raise KeyNotFound(ref.name)

    async def reveal_key(self, ref: KeyRef, call: CallInfo) -> tuple[StoredKey, Secret]:
        try:
            stored, plaintext = await self._reveal_key(ref, call)
        except BaseException as exc:
            metrics.KEY_REVEALS.labels(_reveal_outcome(exc)).inc()
            raise
        metrics.child(metrics.KEY_REVEALS, "revealed").inc()
        log.info("key revealed", extra={"key": ref.name, "key_version": stored.key_version})
        return stored, plaintext

    async def _reveal_key(self, ref: KeyRef, call: CallInfo) -> tuple[StoredKey, Secret]:
        # The key is read and its ALLOWED record committed by one statement, so no key can
        # leave without its record, at one round trip. A key that then fails to decrypt is
        # not handed out, and its record is corrected to FAILED.
        try:
            read = await self.reveals.write(_audit(call, "REVEAL", "ALLOWED", ref))
        except repo.AuditNotWritten as exc:
            # Fail closed: without its audit record, a key does not leave the vault. (An
            # unreachable database is raised as itself: DATABASE_UNAVAILABLE.)
            log.error("reveal refused: audit record not written", extra={"error": exc.error})
            raise AuditUnavailable(
                "the audit log is unavailable; the key was not revealed"
            ) from None
        if read.key is None:
            raise KeyNotFound(ref.name)
        try:
            plaintext = self._keyring.decrypt(
                read.ciphertext, workspace=ref.workspace, provider=ref.provider
            )
        except DecryptionError:
            log.error("stored key failed to decrypt", extra={"key": ref.name})
            await self._mark_reveal_failed(read.audit_id, KeyUndecryptable.default_reason)
            raise KeyUndecryptable(ref.name) from None
        return read.key, plaintext

    async def _reveal_one(self, audit: AuditRecord) -> repo.RevealRead:
        return (await repo.reveal_with_audit(self._pool, [audit]))[0]

    async def _mark_reveal_failed(self, audit_id: int, reason: str) -> None:
        try:
            await repo.mark_reveal_failed(self._pool, audit_id, reason)
        except _AUDIT_WRITE_ERRORS as exc:
            # Nothing was revealed either way; the record overstates, and says so here.
            log.error(
                "audit record of a failed reveal still says ALLOWED",
                extra={"audit_id": audit_id, "error": type(exc).__name__},
            )

    async def rewrap_all(self, batch_size: int, call: CallInfo) -> RewrapResult:
        """Re-encrypt every key not under the primary version, one batch per transaction.
        Interrupted runs resume by running again: finished rows are already on the primary."""
        # Batches already committed stay rewrapped when a later step fails: rewrapping
        # changes no key, and running again finishes the job.
        refused = "the audit log is unavailable; the rewrap ran but was not recorded"
        async with self._failure_audited(call, "REWRAP", None, refused):
            result = await self._rewrap_all(batch_size)
            await repo.insert_audit(self._pool, _audit(call, "REWRAP", "ALLOWED", None))
        return result

    async def _rewrap_all(self, batch_size: int) -> RewrapResult:
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
        return RewrapResult(primary, rewrapped, remaining)

    async def list_audit(
        self, workspace: str | None, page: PageRequest
    ) -> tuple[list[AuditRow], int | None]:
        before = page.cursor["id"] if page.cursor else None
        rows = await repo.list_audit(self._pool, workspace, before_id=before, limit=page.size + 1)
        more = len(rows) > page.size
        rows = rows[: page.size]
        return rows, (rows[-1].id if more else None)

    async def record_denied(
        self, action: str, call: CallInfo, *, workspace: str = "", provider: str = ""
    ) -> None:
        """Record a call the interceptor refused, with the answer it was given: no identity
        is UNAUTHENTICATED (and an empty caller), an identity not allowed PERMISSION_DENIED."""
        if action == "REVEAL":
            metrics.KEY_REVEALS.labels("denied").inc()
        denial = Unauthenticated if call.caller is None else PermissionDenied
        reason = denial.default_reason
        record = _audit(call, action, "DENIED", None, reason)
        await repo.insert_audit(
            self._pool, dataclasses.replace(record, workspace=workspace, provider=provider)
        )

    async def record_invalid(self, action: str, ref: KeyRef | None, call: CallInfo) -> None:
        """Record a refused request. Nothing was changed or revealed, so when the record
        cannot be written the caller is still told what was wrong with its request."""
        try:
            await repo.insert_audit(
                self._pool, _audit(call, action, "FAILED", ref, "INVALID_ARGUMENT")
            )
        except _AUDIT_WRITE_ERRORS as exc:
            log.error(
                "invalid request not recorded",
                extra={"action": action, "error": type(exc).__name__},
            )

    @contextlib.asynccontextmanager
    async def _failure_audited(
        self, call: CallInfo, action: str, ref: KeyRef | None, refused: str
    ) -> AsyncIterator[None]:
        """Around a change that records its own success: a failure leaves a FAILED record
        with the reason the caller is given. Two failures leave none. An audit log that
        refuses records: the change was rolled back and the caller hears AUDIT_UNAVAILABLE
        (`refused`). An unreachable database: no record can be written anywhere, and the
        caller hears DATABASE_UNAVAILABLE, so it knows to retry."""
        try:
            yield
        except repo.AuditNotWritten as exc:
            log.error("change refused: audit record not written", extra={"error": exc.error})
            raise AuditUnavailable(refused) from None
        except db.UNAVAILABLE_ERRORS:
            raise
        except Exception as exc:
            failed = _audit(call, action, "FAILED", ref, _reason_of(exc))
            try:
                await repo.insert_audit(self._pool, failed)
            except _AUDIT_WRITE_ERRORS as audit_exc:
                log.error(
                    "failed change not recorded",
                    extra={"action": action, "error": type(audit_exc).__name__},
                )
            raise


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
