"""The key vault's domain errors. service_kit.interceptor maps them to gRPC status."""

from __future__ import annotations

from service_kit.errors import FailedPrecondition, Internal, NotFound, Unavailable

DOMAIN = "keyvault.agents.internal"


class KeyNotFound(NotFound):
    default_reason = "API_KEY_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} does not exist", metadata={"name": name})


class KeyUndecryptable(Internal):
    """A stored key failed authentication: tampering, a moved row or a missing master key.
    The caller did not cause it and the message says nothing about the secret."""

    default_reason = "STORED_KEY_UNDECRYPTABLE"

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} could not be decrypted", metadata={"name": name})


class AuditUnavailable(Unavailable):
    default_reason = "AUDIT_UNAVAILABLE"


class MasterKeyMissing(FailedPrecondition):
    default_reason = "MASTER_KEY_VERSION_MISSING"


class KeyChangesUnavailable(Unavailable):
    default_reason = "KEY_CHANGES_UNAVAILABLE"
